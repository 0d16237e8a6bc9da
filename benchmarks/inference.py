"""What a ticket buys at inference, measured: ``sparseticket.deploy`` on VGG, ResNet-20, ResNet-50 and
BERT-base, dense vs ticket, at channel densities 0.5/0.3 (with and without ``round_to=8``) and weight
densities 0.2/0.05/0.014; params, MACs, memory, latency at batch 1 and 64 in eager mode, under
``torch.compile`` and in ONNX Runtime; outputs checked equal to the masked dense model to 1e-5. Then
real tickets: ``sparseticket search`` of EarlyBird, WORM, IMP and Gem-Miner on the built-in data with
the command line's defaults, each run folder deployed (channel tickets with round_to none, 8 and 16):
params, eager latency and the report's test accuracy as drawn and as deployed.

Tickets of the first table are synthetic: channel masks keep each layer's largest-|gamma| channels
(|coefficient| for BERT's heads and FFN neurons; the gammas are drawn uniform in [0.1, 1.1) from
seed 0, as a trained network's would differ), weight masks are global magnitude masks
(``magnitude_ticket``) at the density. Latency is the same for trained and synthetic weights of one
architecture and sparsity.

Latencies are paired: in each round the dense model and the ticket run once each, the dense one
first in even rounds and second in odd ones (after warm-up calls of both); a row reports the
medians of both times and, as its speed-up, the median over rounds of the per-round ratio
dense / ticket, so that load on a shared machine slows both sides of a ratio alike.

    python benchmarks/inference.py                  # every network, then the real tickets (25-30 min on 2 cores)
    python benchmarks/inference.py --quick          # VGG, ResNet-20 and the real tickets, 5 rounds (a few minutes)
    python benchmarks/inference.py --networks bert  # one network; the other rows and the real tickets are kept

Writes benchmarks/inference.json (rows of the networks run replace their old rows) and the block
between <!-- inference:start --> and <!-- inference:end --> of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import csv
import functools
import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparseticket.deploy import DeployResult, SparseLinear, deploy, export_onnx
from sparseticket.deploy.export import onnx_session, run_onnx
from sparseticket.deploy.inputs import Inputs, batch_of, call
from sparseticket.files import atomic_write_text
from sparseticket.methods import Ticket, attach_slimming, magnitude_ticket
from sparseticket.methods.transformer import slimming_coefficients

HERE = Path(__file__).resolve().parent
JSON = HERE / "inference.json"
RESULTS = HERE / "RESULTS.md"
START, END = "<!-- inference:start -->", "<!-- inference:end -->"
CHANNEL_DENSITIES = (0.5, 0.3)
WEIGHT_DENSITIES = (0.2, 0.05, 0.014)
BATCHES = (1, 64)
H100_BYTES_PER_S = 3.35e12  # HBM3 bandwidth of an H100 SXM: the bytes-moved prediction's denominator
PAIRING = ("in each round the dense model and the ticket run once each (alternating which runs first), after "
           "warm-up calls of both; the time is the median over rounds and the speed-up in brackets the **median "
           "over rounds of the per-round ratio dense / ticket**, so that load on the shared machine slows both "
           "sides of a ratio alike.")  # how the table's speed-ups are computed, in its header
SAME_SPEED = 0.05  # a model identical to the dense one within this of 1.00x reads as the same speed, not noise
# real tickets: method -> flags after `sparseticket search --method M` (none: the command line's defaults)
REAL_SEARCHES: dict[str, tuple[str, ...]] = {"earlybird": (), "worm": (), "imp": (), "gemminer": ()}
REAL_ROUND_TO = (8, 16)  # channel tickets: deployed as drawn, then with each of these
REAL_ROUNDS = 5  # the real tickets' models are tiny: this many times the rounds of the synthetic table

Forward = Callable[[], object]  # one forward pass at one batch size
Runner = Callable[[int], Forward]  # batch size -> its forward pass


def vgg() -> tuple[nn.Module, torch.Tensor, str]:
    from sparseticket.builtin.models import vgg_small

    return vgg_small(classes=10, width=64, in_channels=3), torch.rand(1, 3, 32, 32), "vgg_small width 64, 3x32x32"


def resnet20() -> tuple[nn.Module, torch.Tensor, str]:
    from sparseticket.builtin.models import resnet20 as build

    return build(classes=10, in_channels=3, width=16), torch.rand(1, 3, 32, 32), "ResNet-20 width 16, 3x32x32"


def resnet50() -> tuple[nn.Module, dict, str]:
    from transformers import ResNetConfig, ResNetForImageClassification

    model = ResNetForImageClassification(ResNetConfig(num_labels=1000))  # the default config is ResNet-50
    return model, {"pixel_values": torch.rand(1, 3, 64, 64)}, "ResNet-50 (Hugging Face config), 3x64x64"


def bert() -> tuple[nn.Module, dict, str]:
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(num_labels=2))  # BERT-base: 12 layers, 768 wide
    ids = torch.randint(0, 30522, (1, 16), generator=torch.Generator().manual_seed(0))
    return model, {"input_ids": ids}, "BERT-base (config, random init), 16 tokens"


NETWORKS = {"vgg": vgg, "resnet20": resnet20, "resnet50": resnet50, "bert": bert}
QUICK = ("vgg", "resnet20")


def _scales(model: nn.Module) -> dict[str, nn.Parameter]:
    """The per-channel scales a channel ticket ranks: BN gammas, or slimming coefficients (attached here)."""
    scales = {name: module.weight for name, module in model.named_modules()
              if isinstance(module, nn.modules.batchnorm._BatchNorm)}
    if not scales:
        attach_slimming(model)
        scales = {name: module.weight for name, module in slimming_coefficients(model).items()}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for scale in scales.values():
            scale.copy_(torch.rand(scale.shape, generator=generator) + 0.1)
    return scales


def channel_ticket(model: nn.Module, density: float) -> Ticket:
    """Each layer keeps its ceil(density x width) largest-|scale| channels."""
    masks = {}
    for name, scale in _scales(model).items():
        mask = torch.zeros(scale.numel(), dtype=torch.bool)
        mask[scale.detach().abs().topk(max(1, math.ceil(density * scale.numel()))).indices] = True
        masks[name] = mask
    return Ticket({}, "synthetic-channel", channel_masks=masks)


@dataclass
class Paired:
    """Two models timed in the same rounds at one batch size: the median of each one's times and the median
    over rounds of the per-round ratio dense time / ticket time (the speed-up the table shows)."""

    dense_ms: float
    ticket_ms: float
    speedup: float


def _timed(forward: Forward, clock: Callable[[], float]) -> float:
    """Milliseconds of one call of ``forward``."""
    start = clock()
    forward()
    return (clock() - start) * 1e3


def paired_ms(dense: Forward, ticket: Forward, rounds: int, *, warmup: int = 2,
              clock: Callable[[], float] = time.perf_counter) -> Paired:
    """Time ``dense`` and ``ticket`` interleaved: ``warmup`` untimed calls of each, then ``rounds`` rounds that
    run each once, the dense one first in even rounds and second in odd ones. Whatever load the machine is
    under during a round slows both, so the per-round ratio cancels it where two medians timed apart do not."""
    dense_times, ticket_times, ratios = [], [], []
    with torch.no_grad():
        for _ in range(warmup):
            dense()
            ticket()
        for index in range(max(rounds, 1)):
            if index % 2 == 0:
                dense_time = _timed(dense, clock)
                ticket_time = _timed(ticket, clock)
            else:
                ticket_time = _timed(ticket, clock)
                dense_time = _timed(dense, clock)
            dense_times.append(dense_time)
            ticket_times.append(ticket_time)
            ratios.append(dense_time / max(ticket_time, 1e-9))
    return Paired(statistics.median(dense_times), statistics.median(ticket_times), statistics.median(ratios))


def eager(model: nn.Module, inputs: Inputs) -> Runner:
    """One eager forward of ``model`` at a batch size (the first example repeated)."""
    model.eval()
    return lambda size: functools.partial(call, model, batch_of(inputs, size))


def onnx_runner(session: Any, inputs: Inputs) -> Runner:
    """One ONNX Runtime run of ``session`` at a batch size."""
    return lambda size: functools.partial(run_onnx, session, batch_of(inputs, size))


def paired_sizes(dense: Runner, ticket: Runner, rounds: int, warmup: int) -> dict[str, Paired | None]:
    """``paired_ms`` at every batch size of ``BATCHES`` (keys as strings, as the JSON stores them)."""
    return {str(size): paired_ms(dense(size), ticket(size), rounds, warmup=warmup) for size in BATCHES}


def paired_compiled(dense: nn.Module, ticket: nn.Module, inputs: Inputs, rounds: int) -> dict[str, Paired | None]:
    """``torch.compile`` of both models (of one, timed against itself, when ``ticket is dense``) after a reset
    of dynamo's caches, timed paired per batch size; None where compiling or running fails."""
    torch._dynamo.reset()
    compiled_dense = torch.compile(dense)
    compiled_ticket = compiled_dense if ticket is dense else torch.compile(ticket)
    times: dict[str, Paired | None] = {}
    for size in BATCHES:
        try:
            times[str(size)] = paired_ms(eager(compiled_dense, inputs)(size), eager(compiled_ticket, inputs)(size),
                                         rounds)
        except Exception as error:  # noqa: BLE001 - a backend failure is a table entry, not a crash
            print(f"    torch.compile failed at batch {size}: {type(error).__name__}: {str(error)[:120]}")
            times[str(size)] = None
    return times


def onnx_model(model: nn.Module, reference: nn.Module, inputs: Inputs, path: Path) -> tuple[Any, list]:
    """An ONNX Runtime session of ``model`` (exported to ``path``, checked against ``reference`` to 1e-5)
    and the layers exported dense."""
    exported = export_onnx(model, inputs, path, reference)
    return onnx_session(path, threads=torch.get_num_threads()), exported.densified


def _two_four(weight: torch.Tensor) -> bool:
    """Whether the nonzeros fit 2:4 semi-structured sparsity (at most 2 of each 4 along the input)."""
    if weight.shape[-1] % 4:
        return False
    groups = (weight.reshape(weight.shape[0], -1) != 0).reshape(weight.shape[0], -1, 4)
    return bool((groups.sum(-1) <= 2).all())


def gpu_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes a GPU reads per batch-1 forward, Linear layers that 2:4 would take): fp16 weights; a Linear
    in 2:4 form where its mask allows (half the values + 2 bits of metadata each), or CSR where fewer
    bytes (fp16 values + int32 columns + row pointers); everything else dense."""
    total, two_four = 0, 0
    for module in model.modules():
        if isinstance(module, SparseLinear):
            weight = module.dense_weight()
        elif isinstance(module, nn.Linear):
            weight = module.weight.detach()
        else:
            total += sum(p.numel() * 2 for p in module.parameters(recurse=False))
            continue
        dense = weight.numel() * 2
        options = [dense, int((weight != 0).sum()) * 6 + (weight.shape[0] + 1) * 4]
        if _two_four(weight):
            options.append(weight.numel() + weight.numel() // 4)
            two_four += 1
        total += min(options) + (module.bias.numel() * 2 if module.bias is not None else 0)
    return total, two_four


@dataclass
class DenseReference:
    """One network's dense model, the reference every row of the network is timed against (paired)."""

    model: nn.Module
    inputs: Inputs
    session: Any  # its ONNX Runtime session


def configs() -> list[tuple[str, float | None, int | None]]:
    """(label, density, round_to) of every row of a network: dense, channel tickets, weight tickets."""
    rows: list[tuple[str, float | None, int | None]] = [("dense", None, None)]
    rows += [(f"channel {d}", d, r) for d in CHANNEL_DENSITIES for r in (None, 8)]
    return rows + [(f"weight {d}", d, None) for d in WEIGHT_DENSITIES]


def deploy_synthetic(label: str, density: float | None, round_to: int | None, model: nn.Module,
                     inputs: Inputs) -> DeployResult:
    """``deploy`` of one row's synthetic ticket on ``model`` (changed: a channel ticket draws its gammas),
    without deploy's own latencies (the rows are timed paired with the dense model instead)."""
    if label == "dense":
        ticket = Ticket({name: torch.ones_like(p, dtype=torch.bool) for name, p in model.named_parameters()
                         if p.dim() > 1 and "embeddings" not in name}, "dense")
        return deploy(ticket, model, example_inputs=inputs, batch_sizes=BATCHES, formats=(), measure=False)
    if label.startswith("channel"):
        return deploy(channel_ticket(model, density), model, example_inputs=inputs, round_to=round_to,
                      batch_sizes=BATCHES, measure=False)
    return deploy(magnitude_ticket(model, density), model, example_inputs=inputs, batch_sizes=BATCHES,
                  measure=False)


def _copied(timings: dict[str, Paired | None]) -> dict[str, Paired | None]:
    """The dense row's timings as a row whose model is the dense one: its times, speed-up 1."""
    return {size: None if paired is None else Paired(paired.ticket_ms, paired.ticket_ms, 1.0)
            for size, paired in timings.items()}


def time_row(dense: DenseReference, model: nn.Module, masked: nn.Module, rounds: int, path: Path,
             dense_timings: dict[str, dict] | None) -> tuple[dict[str, dict[str, Paired | None]], list]:
    """Eager, ``torch.compile`` and ONNX Runtime timings of ``model`` paired with the dense model, and the
    layers ONNX exported dense. ``model is dense.model`` (the dense row) is timed against itself: its ratio
    is the timing noise. ``dense_timings`` given: the model computes what the dense one does (every layer
    stayed dense), so compile and ORT are the dense row's, not timed again."""
    itself = model is dense.model
    timings = {"eager_ms": paired_sizes(eager(dense.model, dense.inputs), eager(model, dense.inputs), rounds, 3)}
    if dense_timings is not None:
        return {**timings, "compile_ms": _copied(dense_timings["compile_ms"]),
                "onnxruntime_ms": _copied(dense_timings["onnxruntime_ms"])}, []
    timings["compile_ms"] = paired_compiled(dense.model, model, dense.inputs, rounds)
    session, densified = (dense.session, []) if itself else onnx_model(model, masked, dense.inputs, path)
    timings["onnxruntime_ms"] = paired_sizes(onnx_runner(dense.session, dense.inputs),
                                             onnx_runner(session, dense.inputs), rounds, 2)
    return timings, densified


def _columns(timings: dict[str, dict[str, Paired | None]]) -> dict[str, dict]:
    """The row's latency fields: the ticket's median ms per backend and batch size, the speed-up (median of
    the per-round ratios) and the dense model's median ms in the same rounds."""
    fields: dict[str, dict] = {key: {} for key in timings}
    fields |= {"speedup": {key: {} for key in timings}, "paired_dense_ms": {key: {} for key in timings}}
    for key, sizes in timings.items():
        for size, paired in sizes.items():
            fields[key][size] = None if paired is None else paired.ticket_ms
            fields["speedup"][key][size] = None if paired is None else paired.speedup
            fields["paired_dense_ms"][key][size] = None if paired is None else paired.dense_ms
    return fields


def measure(network: str, repeats: int, folder: Path) -> list[dict]:
    """Every row of one network: dense, the channel tickets (plain and round_to 8), the weight tickets, each
    timed in ``repeats`` rounds paired with the dense model."""
    torch.manual_seed(0)
    model, inputs, description = NETWORKS[network]()
    model.eval()
    rows: list[dict] = []
    dense: DenseReference | None = None
    dense_timings: dict[str, dict] = {}
    for label, density, round_to in configs():
        start = time.perf_counter()
        result = deploy_synthetic(label, density, round_to, copy.deepcopy(model), inputs)
        report = result.report
        if dense is None:  # the first row: the dense model every row is paired with
            dense = DenseReference(result.model, inputs,
                                   onnx_model(result.model, result.masked, inputs, folder / "dense.onnx")[0])
        sparse = sum(isinstance(m, SparseLinear) for m in result.model.modules())
        same_graph = label.startswith("weight") and sparse == 0  # every layer stayed dense: dense's graph
        path = folder / f"{label.replace(' ', '-')}-{round_to}.onnx"
        timings, densified = time_row(dense, result.model, result.masked, repeats, path,
                                      dense_timings if same_graph else None)
        if label == "dense":
            dense_timings = timings
        gpu, two_four = gpu_bytes(result.model)
        kept = [value[1] / value[2] for value in report.channels.values()] if report.channels else []
        row = {
            "network": network, "description": description, "ticket": label,
            "round_to": round_to, "density": density,
            "kept_channels": round(sum(kept) / len(kept), 3) if kept else None,
            "params": report.deployed.params, "macs": report.deployed.macs,
            "memory_bytes": report.deployed.memory_bytes, **_columns(timings), "paired": True,
            "error": report.error, "sparse_linears": sparse,
            "formats": sorted({layer.format for layer in report.layers if layer.kind == "linear"}),
            "onnx_dense_layers": len(densified), "same_graph_as_dense": same_graph,
            "gpu_bytes_b1": gpu, "gpu_two_four_linears": two_four,
            "gpu_predicted_ms_b1": gpu / H100_BYTES_PER_S * 1e3, "seconds": round(time.perf_counter() - start, 1),
        }
        rows.append(row)
        print(f"  {network} {_name(row)}: eager {_brief(row, 'eager_ms')} compile {_brief(row, 'compile_ms')} "
              f"ort {_brief(row, 'onnxruntime_ms')} error {row['error']:.1g} ({row['seconds']} s)", flush=True)
    return rows


def _name(row: dict) -> str:
    return row["ticket"] + (f" round_to {row['round_to']}" if row["round_to"] else "")


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def speedup(row: dict, dense: dict, key: str, size: str) -> float | None:
    """The row's speed-up over dense: the median of the paired per-round ratios; for a row measured before
    paired timing (no ``speedup`` field), the ratio of the two medians timed apart."""
    if "speedup" in row:
        return row["speedup"][key].get(size)
    value, reference = row[key].get(size), dense[key].get(size)
    return None if value is None or reference is None else reference / value


def _brief(row: dict, key: str) -> str:
    return ", ".join(f"b{size} {_ms(row[key][size])} ({row['speedup'][key][size] or 0:.2f}x)" for size in row[key])


def _cell(row: dict, dense: dict, key: str, size: str) -> str:
    """'ms (speed-up x)' of one backend at one batch size."""
    value, ratio = row[key].get(size), speedup(row, dense, key, size)
    return "n/a" if value is None or ratio is None else f"{_ms(value)} ({ratio:.2f}x)"


def table(rows: list[dict], meta: dict, real: dict | None = None) -> str:
    """The Markdown block for RESULTS.md: the synthetic tickets' tables, where sparsity pays, then the real
    tickets' table (``real``: ``{"meta": {"date", "rounds", ...}, "rows": real_ticket_rows(...)}``; None:
    no such table)."""
    lines = [START, "## Inference: what a ticket buys (`sparseticket deploy`, benchmarks/inference.py)", "",
             f"Measured {meta['date']} on {meta['machine']}, torch {meta['torch']}, {meta['threads']} threads, "
             f"{meta['repeats']} rounds per latency. **Tickets are synthetic**: channel masks keep each layer's "
             "largest-|gamma| channels (|coefficient| for BERT heads/FFN neurons; gammas drawn at random), "
             "weight masks are global magnitude masks at the density. Every deployed model's outputs equal the "
             "masked dense model's to 1e-5 (max |diff| / max(1, max |output|), column *err*). Latency in ms at "
             f"batch 1 / 64: {PAIRING} The *dense* row is the dense model timed against itself: its ratio is "
             "the timing noise. *GPU b1* is **predicted, not measured**: "
             "fp16 weight bytes read at batch 1 over an H100's 3.35 TB/s (2:4 where the mask allows it, CSR "
             "where smaller).", ""]
    for network in dict.fromkeys(row["network"] for row in rows):
        group = [row for row in rows if row["network"] == network]
        lines += network_table(group)
    lines += verdicts(rows)
    if real and real["rows"]:
        lines += real_table(real["rows"], real["meta"])
    return "\n".join([*lines, END])


def network_table(group: list[dict]) -> list[str]:
    """One network's table (its dense row first)."""
    dense = group[0]
    lines = [f"**{dense['description']}**", ""]
    if not all(row.get("paired") for row in group):
        lines += [f"*Timed before paired timing: each model's median at its own moment, the speed-up their ratio; "
                  f"`--networks {dense['network']}` times it paired.*", ""]
    lines += ["| ticket | params | MACs | memory | eager b1 | eager b64 | compile b1 | compile b64 | ORT b1 | "
              "ORT b64 | Linear formats | GPU b1 (predicted) | err |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for row in group:
        name = _name(row)
        if row["kept_channels"] is not None:
            name += f" (kept {row['kept_channels']:.2f})"
        cells = [name, f"{row['params'] / 1e6:.3f}M", f"{row['macs'] / 1e6:.1f}M",
                 f"{row['memory_bytes'] / 2**20:.2f} MiB"]
        cells += [_cell(row, dense, key, size) for key in ("eager_ms", "compile_ms", "onnxruntime_ms")
                  for size in ("1", "64")]
        formats = ", ".join(row["formats"]) if row["formats"] else "-"
        if row["same_graph_as_dense"]:
            formats += " (all dense: compile/ORT = dense's)"
        cells += [formats, f"{row['gpu_predicted_ms_b1'] * 1e3:.1f} us "
                  f"({dense['gpu_bytes_b1'] / row['gpu_bytes_b1']:.2f}x)", f"{row['error']:.0e}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def verdicts(rows: list[dict]) -> list[str]:
    """Plain sentences: where sparsity pays on this CPU and where it does not, with the figures."""
    lines = ["**Where sparsity pays on this CPU, and where it does not** (eager, batch 64 unless said):", ""]
    for network in dict.fromkeys(row["network"] for row in rows):
        group = [row for row in rows if row["network"] == network]
        dense = group[0]
        for row in group[1:]:
            name = _name(row)
            speed = {size: speedup(row, dense, "eager_ms", size) for size in ("1", "64")}
            macs = dense["macs"] / max(row["macs"], 1)
            figures = f"{speed['64']:.2f}x at batch 64, {speed['1']:.2f}x at batch 1"
            if row["ticket"].startswith("weight") and row["same_graph_as_dense"]:
                noise = "" if all(abs(value - 1) <= SAME_SPEED for value in speed.values()) else ", timing noise"
                lines.append(f"- {network} {name}: **does not pay**: every Linear stayed dense (sparse formats lost "
                             f"the timing) and convolutions stay dense, so the model is the dense one "
                             f"({figures}{noise}).")
            elif speed["64"] < 1.1 and speed["1"] < 1.1:
                lines.append(f"- {network} {name}: **does not pay**: {speed['1']:.2f}x at batch 1, {speed['64']:.2f}x "
                             f"at batch 64 for {macs:.1f}x fewer MACs.")
            elif speed["64"] < 1.1 or speed["1"] < 1.1:
                lines.append(f"- {network} {name}: pays at one batch size only: {speed['1']:.2f}x at batch 1, "
                             f"{speed['64']:.2f}x at batch 64 ({macs:.1f}x fewer MACs).")
            else:
                lines.append(f"- {network} {name}: pays: {speed['1']:.2f}x at batch 1, {speed['64']:.2f}x at "
                             f"batch 64 ({macs:.1f}x fewer MACs).")
    return lines + [""]


def search_run(method: str, out: Path, threads: int, flags: Sequence[str] = ()) -> tuple[Path, float]:
    """A finished run folder of ``sparseticket search --method method`` (the command line's defaults, then
    ``flags``) under ``out``, made by the command line in a subprocess, and its wall seconds."""
    command = [sys.executable, "-m", "sparseticket", "search", "--method", method, "--out", str(out),
               "--no-progress", "--threads", str(threads), *flags]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        last = (done.stderr.strip().splitlines() or [""])[-1]
        raise RuntimeError(f"`sparseticket search --method {method}` exited with {done.returncode}: {last[:300]}")
    folders = [path for path in out.iterdir() if path.is_dir()]
    if len(folders) != 1:
        raise RuntimeError(f"{' '.join(command[1:])}: expected one run folder in {out}, found {len(folders)}")
    return folders[0], time.perf_counter() - start


def finetuned_accuracy(run: Path) -> float | None:
    """The run's test accuracy after its fine-tuning (the last ``finetune`` row of metrics.csv), or None."""
    with (run / "metrics.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["phase"] == "finetune"]
    return float(rows[-1]["test_accuracy"]) if rows else None


def measured_on(kind: str, config: dict) -> str:
    """The weights ``deploy`` scores a run folder's ticket on (docs/deploy.md, *The API*)."""
    if kind == "channel":
        return "searched network, before fine-tuning"
    return "fine-tuned network" if config.get("finetune_epochs", 0) > 0 else "searched network (no fine-tuning)"


def deployed_rounds(run: Path) -> Iterator[DeployResult]:
    """``deploy`` of a run folder as drawn, then, for a channel ticket, with each round_to of ``REAL_ROUND_TO``
    (no latencies of its own: the rows are timed paired)."""
    drawn = deploy(run, batch_sizes=BATCHES, measure=False)
    yield drawn
    if drawn.report.kind == "channel":
        for round_to in REAL_ROUND_TO:
            yield deploy(run, round_to=round_to, batch_sizes=BATCHES, measure=False)


def real_ticket_rows(folder: Path, rounds: int, threads: int,
                     searches: Mapping[str, Sequence[str]] = REAL_SEARCHES) -> list[dict]:
    """For each method of ``searches`` (method -> extra search flags): a run of ``sparseticket search``, its
    deployments (``deployed_rounds``), each one's eager latency paired with its masked dense model in
    ``rounds`` rounds, and the report's test accuracies. A search that fails is a row with ``failed``."""
    rows = []
    for method, flags in searches.items():
        try:
            run, seconds = search_run(method, folder / method, threads, flags)
        except RuntimeError as error:  # one method's failure is a line under the table, not a lost benchmark
            print(f"  {method}: not measured: {error}", flush=True)
            rows.append({"method": method, "flags": list(flags), "failed": str(error)})
            continue
        config = json.loads((run / "config.json").read_text())
        finetuned = finetuned_accuracy(run)
        print(f"  {method}: searched in {seconds:.0f} s ({run.name}); after fine-tuning {finetuned}", flush=True)
        for result in deployed_rounds(run):
            report = result.report
            timings = {"eager_ms": paired_sizes(eager(result.masked, result.example_inputs),
                                                eager(result.model, result.example_inputs), rounds, 3)}
            rows.append({"method": method, "flags": list(flags), "kind": report.kind, "round_to": report.round_to,
                         "model": config["model"], "data": config["data"], "width": config["width"],
                         "seed": config["seed"], "density": config["density"], "ratio": config["ratio"],
                         "params": report.deployed.params, "dense_params": report.dense.params,
                         **_columns(timings), "accuracy_drawn": report.accuracy_drawn,
                         "accuracy_deployed": report.accuracy_deployed,
                         "measured_on": measured_on(report.kind, config), "finetuned_accuracy": finetuned,
                         "search_seconds": round(seconds, 1), "error": report.error})
            print(f"    round_to {report.round_to}: params {report.deployed.params}/{report.dense.params}, eager "
                  f"{_brief(rows[-1], 'eager_ms')}, accuracy drawn {_accuracy(report.accuracy_drawn)} deployed "
                  f"{_accuracy(report.accuracy_deployed)}", flush=True)
    return rows


def _accuracy(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def real_table(rows: list[dict], meta: dict) -> list[str]:
    """The real tickets' table: what ``round_to`` changes in params, latency and accuracy (``meta``: the
    date and the rounds per latency)."""
    failed = [row for row in rows if "failed" in row]
    rows = [row for row in rows if "failed" not in row]
    notes = [f"- {row['method']}: not measured: {row['failed']}" for row in failed]
    if not rows:
        return ["### Real tickets on the built-in data", "", *notes, ""]
    first = rows[0]
    searched = sum(row["search_seconds"] for row in rows if row["round_to"] is None)
    lines = ["### Real tickets on the built-in data", "",
             f"Measured {meta['date']}. `sparseticket search --method M` with the command line's defaults "
             f"({first['model']} width {first['width']} on {first['data']}, seed {first['seed']}; the searches took "
             f"{searched:.0f} s in all), then `deploy(run_folder, round_to=...)`: channel tickets as drawn and with "
             f"round_to {' and '.join(map(str, REAL_ROUND_TO))}. Latency in ms against the masked dense model (the "
             f"run's network with the deployed masks applied), paired as above ({meta['rounds']} rounds). "
             f"**The accuracy is test accuracy on the {first['data']} test split: for channel tickets (EarlyBird, "
             "WORM) it is taken at pruning, on the searched network before any fine-tuning; for weight tickets "
             "(IMP, Gem-Miner) on the fine-tuned network.** *drawn*: that network masked with the ticket as drawn; "
             "*deployed*: the deployed network (the masks kept after coupling and round_to).", "",
             "| method | round_to | params (deployed / dense) | eager b1 | eager b64 | accuracy drawn | "
             "accuracy deployed | measured on |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        ticket = f"ratio {row['ratio']:g}" if row["kind"] == "channel" else f"density {row['density']:g}"
        cells = [f"{row['method']} ({ticket})", str(row["round_to"] or "none"),
                 f"{row['params']:,} / {row['dense_params']:,} ({row['params'] / row['dense_params']:.2f})",
                 *(_cell(row, row, "eager_ms", size) for size in ("1", "64")),
                 _accuracy(row["accuracy_drawn"]), _accuracy(row["accuracy_deployed"]), row["measured_on"]]
        lines.append("| " + " | ".join(cells) + " |")
    finetuned = ", ".join(f"{row['method']} {_accuracy(row['finetuned_accuracy'])}" for row in rows
                          if row["round_to"] is None)
    return lines + ["", f"After the runs' own fine-tuning (the ticket as drawn, round_to none) the test accuracy "
                        f"is {finetuned}.", "", *notes, *([""] if notes else [])]


def replace_block(text: str, block: str) -> str:
    """``text`` with the inference block replaced (appended at the end if absent)."""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        return head + block + rest.split(END, 1)[1]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line's flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", choices=tuple(NETWORKS), default=None)
    parser.add_argument("--quick", action="store_true",
                        help="VGG and ResNet-20 (and the real tickets) only, 5 rounds: a smoke check")
    parser.add_argument("--repeats", type=int, default=None,
                        help="paired rounds per latency (default 7, quick 5; the real tickets: "
                             f"{REAL_ROUNDS} times as many)")
    parser.add_argument("--real-tickets", action=argparse.BooleanOptionalAction, default=None,
                        help="search, deploy and time the real tickets (default: yes unless --networks is given; "
                             "not measured, the stored ones are kept)")
    parser.add_argument("--no-write", action="store_true", help="print only; write neither file")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch, ONNX Runtime and search threads (default 1: on a shared machine two spinning "
                             "threads turn any other job's load into 10-100x latency outliers)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    torch.set_num_threads(arguments.threads)
    networks = arguments.networks or (list(QUICK) if arguments.quick else list(NETWORKS))
    repeats = arguments.repeats or (5 if arguments.quick else 7)
    with_real = arguments.networks is None if arguments.real_tickets is None else arguments.real_tickets
    warnings.filterwarnings("ignore")
    old = json.loads(JSON.read_text()) if JSON.exists() else {"rows": []}
    rows = []
    real = old.get("real_tickets")
    with tempfile.TemporaryDirectory() as folder:
        for network in networks:
            print(f"== {network}", flush=True)
            rows += measure(network, repeats, Path(folder))
        if with_real:
            print("== real tickets", flush=True)
            start = time.perf_counter()
            real_rows = real_ticket_rows(Path(folder), repeats * REAL_ROUNDS, arguments.threads)
            real = {"meta": {"date": time.strftime("%Y-%m-%d"), "rounds": repeats * REAL_ROUNDS,
                             "seconds": round(time.perf_counter() - start, 1)}, "rows": real_rows}
    kept = [row for row in old["rows"] if row["network"] not in networks]
    order = list(NETWORKS)
    rows = sorted(kept + rows, key=lambda row: order.index(row["network"]))
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} CPU ({torch.get_num_threads()} "
            "threads; the machine was shared with other jobs)", "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "repeats": repeats, "python": sys.version.split()[0]}
    block = table(rows, meta, real)
    print(block)
    if not arguments.no_write:
        data = {"meta": meta, "rows": rows, **({"real_tickets": real} if real else {})}
        atomic_write_text(JSON, json.dumps(data, indent=1) + "\n")
        atomic_write_text(RESULTS, replace_block(RESULTS.read_text(encoding="utf-8"), block))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
