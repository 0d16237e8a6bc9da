"""The thread choice (issue 26): never more threads than free cores; --threads and OMP_NUM_THREADS win."""

from __future__ import annotations

import pytest

from sparseticket.cli.main import main
from sparseticket.driver import threads
from sparseticket.studies.claims import main as reproduce


@pytest.mark.parametrize(("idle", "usable", "processes", "expected"), [
    (2.0, 2, 1, 2),   # an idle 2-core machine: both cores
    (1.1, 2, 1, 1),   # one core busy with other work: one thread, not two that take turns
    (0.2, 2, 1, 1),   # everything busy: still one
    (7.6, 8, 1, 8),
    (7.6, 8, 2, 4),   # torchrun's 2 processes on this machine share the free cores
    (3.0, 8, 4, 1),
    (9.0, 8, 1, 8),   # never more than the usable cores
])
def test_default_threads_are_the_free_cores_shared_by_this_machines_processes(idle, usable, processes, expected):
    assert threads.default_threads(idle, usable, processes) == expected


def test_idle_cores_reads_proc_stat(monkeypatch, tmp_path):
    """Two samples of a fake /proc/stat: cpu0 idle all along, cpu1 busy all along -> one idle core."""
    samples = iter([
        "cpu  10 0 10 100 0 0 0 0\ncpu0 0 0 0 100 0 0 0 0 0 0\ncpu1 100 0 0 0 0 0 0 0 0 0\n",
        "cpu  10 0 10 100 0 0 0 0\ncpu0 0 0 0 200 0 0 0 0 0 0\ncpu1 200 0 0 0 0 0 0 0 0 0\n",
    ])
    fake = tmp_path / "stat"

    def next_sample(_self=None):
        fake.write_text(next(samples))
        return fake.read_text()

    monkeypatch.setattr(threads, "STAT", type("FakeStat", (), {"read_text": next_sample})())
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda _pid: {0, 1})
    assert threads.idle_cores(sample_s=0.0) == pytest.approx(1.0)


@pytest.fixture
def torch_threads():
    """Put torch's thread count back: main() sets it for the whole process."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_choice_order_and_what_info_says(monkeypatch, capsys, torch_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(threads, "idle_cores", lambda sample_s=0.2: 1.0)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    assert threads.choose_threads(3) == (3, "--threads")
    assert threads.choose_threads(None) == (1, "1.0 of 2 usable cores idle when measured")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose_threads(None) == (2, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        threads.choose_threads(0)
    assert main(["info"]) == 0
    assert "threads: 1 (1.0 of 2 usable cores idle when measured; --threads overrides)" in capsys.readouterr().out


def test_reproduce_refuses_more_threads_than_cores(monkeypatch, capsys):
    monkeypatch.setattr("sparseticket.studies.claims.usable_cores", lambda: 2)
    with pytest.raises(SystemExit) as exit_info:
        reproduce(["--small", "--workers", "2", "--threads", "2", "--out", "/nonexistent/never-written"])
    assert exit_info.value.code == 2
    assert "--workers 2 x --threads 2 = 4 threads, more than the 2 usable cores" in capsys.readouterr().err
