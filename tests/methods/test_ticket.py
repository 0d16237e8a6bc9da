"""Ticket: safetensors round trip, apply to a fresh model, torch prune export, corrupt files, atomicity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseticket.builtin.models import vgg_small
from sparseticket.methods import Ticket


def _ticket(model: nn.Module, seed: int = 0) -> Ticket:
    generator = torch.Generator().manual_seed(seed)
    masks = {name: torch.rand(p.shape, generator=generator) > 0.7
             for name, p in model.named_parameters() if name.endswith("weight") and p.dim() > 1}
    scores = {name: torch.rand(mask.shape, generator=generator) for name, mask in masks.items()}
    return Ticket(masks, "test", {"density": 0.3, "note": "x"}, scores=scores,
                  channel_masks={"1": torch.rand(4, generator=generator) > 0.5})


def test_round_trip_apply_gives_identical_masks_and_outputs(tmp_path):
    torch.manual_seed(0)
    model = vgg_small(width=4)
    ticket = _ticket(model)
    path = tmp_path / "ticket.safetensors"
    ticket.save(path)
    loaded = Ticket.load(path)
    assert loaded.method == "test" and loaded.hyperparameters == {"density": 0.3, "note": "x"}
    for section in ("masks", "scores", "channel_masks"):
        assert list(getattr(loaded, section)) == list(getattr(ticket, section))  # layer order kept
        for name, tensor in getattr(ticket, section).items():
            assert torch.equal(getattr(loaded, section)[name], tensor)
    fresh_a, fresh_b = vgg_small(width=4), vgg_small(width=4)
    fresh_b.load_state_dict(fresh_a.state_dict())
    ticket.apply(fresh_a).eval()
    loaded.apply(fresh_b).eval()
    images = torch.rand(3, 1, 8, 8)
    assert torch.equal(fresh_a(images), fresh_b(images))
    parameters = dict(fresh_a.named_parameters())
    for name, mask in ticket.masks.items():
        assert (parameters[name][~mask] == 0).all()
    assert (fresh_a[1].weight[~ticket.channel_masks["1"]] == 0).all()
    assert ticket.density_per_layer().keys() == ticket.masks.keys()
    assert abs(ticket.density() - 0.3) < 0.05


def test_export_as_torch_prune_masks():
    model = vgg_small(width=4)
    ticket = _ticket(model)
    ticket.to_torch_prune(model)
    assert torch.equal(model[0].weight_mask, ticket.masks["0.weight"].float())
    assert (model[0].weight[~ticket.masks["0.weight"]] == 0).all()


@pytest.mark.parametrize("damage", ["truncate", "flip_header", "not_safetensors"])
def test_damaged_file_raises_clear_error(tmp_path, damage):
    path = tmp_path / "ticket.safetensors"
    _ticket(vgg_small(width=4)).save(path)
    data = path.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip_header":
        data = data[:8] + b"#" + data[9:]
    else:
        data = b"just some text"
    path.write_bytes(data)
    with pytest.raises(ValueError, match="not a valid ticket file|not a sparseticket ticket"):
        Ticket.load(path)


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ticket.safetensors"
    ticket = _ticket(vgg_small(width=4))
    ticket.save(path)
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("sparseticket.methods.ticket.save_file", explode)
    with pytest.raises(OSError, match="disk full"):
        _ticket(vgg_small(width=4), seed=1).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ticket.safetensors"]


def test_mismatched_model_and_bad_masks():
    ticket = _ticket(vgg_small(width=4))
    with pytest.raises(ValueError, match="does not match"):
        ticket.apply(vgg_small(width=8))
    with pytest.raises(ValueError, match="no such parameter"):
        ticket.apply(nn.Sequential(nn.Identity(), nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="must be a bool tensor"):
        Ticket({"w": torch.ones(3)}, "test")
    with pytest.raises(FileNotFoundError):
        Ticket.load("/nonexistent/ticket.safetensors")


def test_saved_files_get_the_usual_permissions(tmp_path):
    """Atomic writes go through mkstemp (0o600); the final file must have 0o666 less the umask."""
    import os
    import stat

    from sparseticket.cli.files import write_text

    previous = os.umask(0o022)
    try:
        Ticket({"w": torch.ones(3, dtype=torch.bool)}, "test").save(tmp_path / "t.safetensors")
        write_text(tmp_path / "config.json", "{}")
    finally:
        os.umask(previous)
    for name in ("t.safetensors", "config.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_a_channel_ticket_reports_the_fraction_of_channels_kept():
    """EarlyBird/WORM tickets hold channel masks only: density() and density_per_layer() count channels
    (issue 26: they returned 0.0 and {})."""
    channels = {"features.1": torch.tensor([True, False, False, True]),
                "features.4": torch.tensor([True, True, True, False, False, False])}
    ticket = Ticket({}, "earlybird", channel_masks=channels)
    assert ticket.density() == 5 / 10
    assert ticket.density_per_layer() == {"features.1": 0.5, "features.4": 0.5}
    weights = Ticket({"0.weight": torch.tensor([[True, False, False, False]])}, "imp",
                     channel_masks={"1": torch.tensor([True, True])})
    assert weights.density() == 0.25 and weights.density_per_layer() == {"0.weight": 0.25}  # weights win


def test_an_earlybird_ticket_density_is_its_kept_channels():
    from sparseticket.methods import EarlyBird

    torch.manual_seed(0)
    model = vgg_small(width=8)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.1, 1.0)
    method = EarlyBird(model, ratio=0.5)
    method.epoch_end()
    ticket = method.ticket()
    kept = sum(int(mask.sum()) for mask in ticket.channel_masks.values())
    total = sum(mask.numel() for mask in ticket.channel_masks.values())
    assert 0 < ticket.density() == kept / total < 1 and set(ticket.density_per_layer()) == set(ticket.channel_masks)


def test_equal_tickets_are_equal_bytes_across_processes(tmp_path):
    """Two processes saving the same ticket write the same bytes (safetensors writes several metadata
    entries in its hash map's per-process order: the ticket keeps one entry with sorted keys)."""
    import inspect
    import subprocess
    import sys

    script = ("from __future__ import annotations\n"
              "import sys, torch\n"
              "from torch import nn\n"
              "from sparseticket.builtin.models import vgg_small\n"
              "from sparseticket.methods import Ticket\n"
              + inspect.getsource(_ticket) +
              "torch.manual_seed(0)\n"
              "_ticket(vgg_small(width=4)).save(sys.argv[1])\n")
    paths = [tmp_path / f"ticket{index}.safetensors" for index in range(4)]
    for path in paths:  # from tmp_path: the installed package, not the source tree
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, cwd=tmp_path)
    contents = {path.read_bytes() for path in paths}
    assert len(contents) == 1


def _rewrite(path, tensors=None, metadata=None):
    """Rewrite a saved ticket file with some tensors or metadata replaced."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as handle:
        current = {key: handle.get_tensor(key) for key in handle.keys()}
        current_metadata = handle.metadata()
    save_file({**current, **(tensors or {})}, str(path), metadata=metadata or current_metadata)


@pytest.mark.parametrize("entry", ["mask/0.weight", "score/0.weight", "channel/1"])
def test_a_tensor_of_another_shape_than_recorded_is_refused(tmp_path, entry):
    path = tmp_path / "ticket.safetensors"
    ticket = _ticket(vgg_small(width=4))
    ticket.save(path)
    section = {"mask": ticket.masks, "score": ticket.scores, "channel": ticket.channel_masks}[entry.split("/")[0]]
    original = section[entry.split("/", 1)[1]]
    _rewrite(path, {entry: original.flatten()[:-1].clone()})
    with pytest.raises(ValueError, match=f"{entry} has shape"):
        Ticket.load(path)


def test_entries_and_dtypes_must_be_what_the_ticket_recorded(tmp_path):
    path = tmp_path / "ticket.safetensors"
    ticket = _ticket(vgg_small(width=4))
    ticket.save(path)
    _rewrite(path, {"score/0.weight": ticket.scores["0.weight"].double()})
    with pytest.raises(ValueError, match="score/0.weight is torch.float64 but the ticket recorded float32"):
        Ticket.load(path)
    ticket.save(path)
    _rewrite(path, {"mask/extra": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="the ticket recorded"):
        Ticket.load(path)
    ticket.save(path)
    _rewrite(path, {"mask/0.weight": ticket.masks["0.weight"].float()})
    with pytest.raises(ValueError, match="mask/0.weight must be torch.bool"):
        Ticket.load(path)


def test_files_from_before_the_single_metadata_entry_still_load_and_are_checked(tmp_path):
    """Files written with separate metadata entries load as before; their scores must still fit their masks."""
    import json

    path = tmp_path / "ticket.safetensors"
    ticket = _ticket(vgg_small(width=4))
    ticket.save(path)
    keys = [f"mask/{name}" for name in ticket.masks] + [f"score/{name}" for name in ticket.scores] + ["channel/1"]
    old = {"format": "sparseticket-ticket/1", "method": "test", "order": json.dumps(keys),
           "hyperparameters": json.dumps(ticket.hyperparameters)}
    _rewrite(path, metadata=old)
    loaded = Ticket.load(path)
    assert loaded.hyperparameters == ticket.hyperparameters and list(loaded.masks) == list(ticket.masks)
    for name, mask in ticket.masks.items():
        assert torch.equal(loaded.masks[name], mask)
    _rewrite(path, {"score/0.weight": ticket.scores["0.weight"][:1].clone()}, metadata=old)
    with pytest.raises(ValueError, match="score/0.weight has shape .* but mask/0.weight"):
        Ticket.load(path)
