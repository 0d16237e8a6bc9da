"""Run the benchmark suite and write ``benchmarks/RESULTS.md`` and ``benchmarks/speedups.png``.

``python benchmarks/run.py [--networks resnet18 resnet50 bert_base] [--keyword EXPR]``

Per group: every way's median time as a ratio to the fused op (>1: the fused op is faster), and
the fused op's achieved bandwidth (the bytes it must move / its median) over the copy bandwidth
measured in the same run. CPU figures only: GPU figures are predictions (gpu_on_paper.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def run_suite(networks: list[str], keyword: str | None, report: Path) -> dict:
    """pytest-benchmark over benchmarks/, keeping its JSON report at ``report``."""
    selection = " or ".join(networks + ["bandwidth", "training_step", "step_by_depth"])
    if keyword:
        selection = f"({selection}) and ({keyword})"
    command = [sys.executable, "-m", "pytest", str(HERE), "--benchmark-only", "-q", "-p", "no:cacheprovider",
               "-k", selection, f"--benchmark-json={report}"]
    subprocess.run(command, check=True, cwd=HERE.parent)
    return json.loads(report.read_text())


WAY = re.compile(r"^(fused|fused_plan|compiled|two_pass|peer_\w+|official_\w+|cat_\w+)$")


def way_of(name: str) -> str:
    """'test_x[resnet18-fused]' -> 'fused', 'test_y[resnet18-two_pass-sgd]' -> 'two_pass': the id part
    that names a way (else the last part)."""
    inside = name.partition("[")[2].rstrip("]")
    if not inside:
        return name
    parts = inside.split("-")
    return next((part for part in parts if WAY.match(part)), parts[-1])


def tables(report: dict) -> tuple[str, dict[str, dict[str, float]]]:
    """Markdown tables of ratios to the fused op, and the ratios for the plot."""
    groups: dict[str, dict[str, dict]] = {}
    for bench in report["benchmarks"]:
        groups.setdefault(bench["group"], {})[way_of(bench["name"])] = bench
    references = groups.pop("copy bandwidth", {})
    speeds = {name: bench["extra_info"]["bytes"] / bench["stats"]["median"] for name, bench in references.items()}
    peak = max(speeds.values(), default=float("nan"))
    lines = [f"Memory bandwidth measured in this run: copy {speeds.get('test_copy_bandwidth', float('nan')) / 1e9:.1f}"
             f" GB/s, in-place update {speeds.get('test_inplace_bandwidth', float('nan')) / 1e9:.1f} GB/s (read + "
             f"write of 256 MB; a copy also pays write-allocate reads). Achieved/peak below uses the larger, "
             f"**{peak / 1e9:.1f} GB/s**.", ""]
    ratios: dict[str, dict[str, float]] = {}
    steps = {group: ways for group, ways in groups.items() if group.startswith("training step")}
    if steps:
        lines += _step_tables(steps)
    for group, ways in sorted(groups.items()):
        if group in steps:
            continue
        if "fused" not in ways:
            continue
        fused = ways["fused"]["stats"]["median"]
        lines += [f"### {group}", "", "| way | median | time / fused |", "|---|---|---|"]
        for way, bench in sorted(ways.items(), key=lambda item: item[1]["stats"]["median"]):
            median = bench["stats"]["median"]
            lines.append(f"| {way} | {median * 1e3:.3f} ms | {median / fused:.2f}x |")
            if way != "fused":
                ratios.setdefault(group, {})[way] = median / fused
        paired = ways["fused"].get("extra_info", {}).get("paired")
        if paired:
            lines.append(f"\nfused vs {paired['against']}, interleaved ({paired['rounds']} rounds, each timing both): "
                         f"{paired['against']} time / fused time, median **{paired['median']:.2f}x** (95% interval "
                         f"{paired['ci_low']:.2f}x-{paired['ci_high']:.2f}x; >1: fused is faster)")
        moved = ways["fused"].get("extra_info", {}).get("bytes")
        if moved:
            achieved = moved / fused
            lines.append(f"\nfused: {moved / 1e6:.1f} MB moved, {achieved / 1e9:.1f} GB/s = "
                         f"{achieved / peak:.0%} of the measured peak")
        lines.append("")
    return "\n".join(lines), ratios


STEP_TARGETS = {"earlybird": "< 0.5%", "worm_truncating": "< 0.5%", "imp": "<= 0.5%", "imp_two_pass": "(before)",
                "gemminer": "<= 15%"}
STEP_ORDER = ("resnet50", "resnet50_channels_last", "bert_base", "resnet20", "vgg_small", "mlp2", "mlp8", "mlp32")


def _step_tables(steps: dict[str, dict[str, dict]]) -> list[str]:
    """The whole training step with each method against the dense step of the same rounds."""
    lines = ["## Whole training step with each method (test_step.py)", "",
             "Overhead: median over rounds of (method step / dense step of the same round) - 1, with "
             "its quartiles across rounds in brackets. Hooks alone: the median time of the method's "
             "per-step hooks, timed inside its own steps where they run, over the dense step's median "
             "(the overhead without whole-step noise). 95% interval: a distribution-free confidence interval of "
             "the median overhead (IMP's fused swap runs more rounds so that it is about as narrow as its "
             "target). Optimizer step: the method's optimizer step over the dense one's, both timed inside "
             "their whole steps (IMP: the fused masked SGD step against torch's `SGD(fused=True)`). "
             "Differing parts: per round, (the method's optimizer step + its hooks - the dense optimizer step) "
             "over that round's dense step, median and 95% interval: the overhead of the only code that differs "
             "(the forward and backward run the same code), without their step-to-step noise. "
             "Gem-Miner's mining step replaces the optimizer step with its fused score step and has no separate "
             "hook.", "",
             "| model | method | rounds | dense step | method step | overhead [q1, q3] | 95% interval | "
             "hooks alone / dense | optimizer step / dense's | differing parts / dense [95%] | target |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {name: index for index, name in enumerate(STEP_ORDER)}
    rows = [bench["extra_info"] for ways in steps.values() for bench in ways.values()]
    rows.sort(key=lambda info: (order.get(info["model"], len(order)), list(STEP_TARGETS).index(info["method"])))
    for info in rows:
        hooks = "—" if info["hook_share"] is None else f"{info['hook_share']:.3%}"
        interval = info.get("overhead_ci")
        interval = "—" if interval is None else f"[{interval[0]:+.1%}, {interval[1]:+.1%}]"
        step_ratio = info.get("optimizer_step_ratio")
        step_ratio = "—" if step_ratio is None else f"{step_ratio:.2f}x"
        parts, parts_ci = info.get("parts_overhead"), info.get("parts_overhead_ci")
        parts = "—" if parts is None else f"{parts:+.2%} [{parts_ci[0]:+.2%}, {parts_ci[1]:+.2%}]"
        lines.append(f"| {info['model']} | {info['method']} | {info['rounds']} | {info['dense_median'] * 1e3:.2f} ms | "
                     f"{info['method_median'] * 1e3:.2f} ms | {info['overhead']:+.1%} "
                     f"[{info['overhead_q1']:+.1%}, {info['overhead_q3']:+.1%}] | {interval} | {hooks} | "
                     f"{step_ratio} | {parts} | {STEP_TARGETS[info['method']]} |")
    return lines + [""]


def plot(ratios: dict[str, dict[str, float]], path: Path) -> None:
    """Horizontal bars: how many times slower each alternative is than the fused op."""
    from matplotlib.figure import Figure

    labels, values = [], []
    for group, ways in ratios.items():
        for way, ratio in ways.items():
            labels.append(f"{group} — {way}")
            values.append(ratio)
    figure = Figure(figsize=(10, 0.28 * len(labels) + 1.5))
    axes = figure.add_subplot()
    axes.barh(range(len(values)), values, color=["tab:green" if v >= 1 else "tab:red" for v in values])
    axes.set_yticks(range(len(values)), labels, fontsize=7)
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_xscale("log")
    axes.set_xlabel("time of the alternative / time of the fused op (log; >1: fused is faster)")
    axes.invert_yaxis()
    figure.tight_layout()
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(handle)
    figure.savefig(temporary, dpi=110)
    os.replace(temporary, path)


KEPT_BLOCKS = ("inference",)  # sections other scripts own (benchmarks/inference.py): carried over as they are


def _kept_blocks(path: Path) -> str:
    """The ``<!-- name:start -->`` ... ``<!-- name:end -->`` blocks of ``path`` that other scripts write."""
    text = path.read_text() if path.exists() else ""
    kept = []
    for name in KEPT_BLOCKS:
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        if start in text and end in text:
            kept.append(text[text.index(start):text.index(end) + len(end)])
    return "".join(f"\n{block}\n" for block in kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["resnet18", "resnet50"],
                        help="layer shapes: resnet18 resnet50 bert_base")
    parser.add_argument("--keyword", default=None, help="extra pytest -k filter")
    parser.add_argument("--from-json", action="store_true", help="rewrite the tables from benchmarks/results.json")
    arguments = parser.parse_args()
    parser_json = HERE / "results.json"
    report = json.loads(parser_json.read_text()) if arguments.from_json else \
        run_suite(arguments.networks, arguments.keyword, parser_json)
    body, ratios = tables(report)
    header = (f"# Benchmark results (CPU)\n\nMachine: {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores, torch {torch.__version__}, 2 threads. Command: "
              f"`python benchmarks/run.py --networks {' '.join(arguments.networks)}`. "
              "Ratios are medians measured in the same run; GPU figures are in GPU_ON_PAPER.md "
              "(predicted, not measured).\n\n")
    (HERE / "RESULTS.md").write_text(header + body + _kept_blocks(HERE / "RESULTS.md"))
    plot(ratios, HERE / "speedups.png")
    print(header + body)


if __name__ == "__main__":
    main()
