"""What a ticket buys at inference, measured: ``sparseticket.deploy`` on VGG, ResNet-20, ResNet-50 and
BERT-base, dense vs ticket, at channel densities 0.5/0.3 (with and without ``round_to=8``) and weight
densities 0.2/0.05/0.014; params, MACs, memory, latency at batch 1 and 64 in eager mode, under
``torch.compile`` and in ONNX Runtime; outputs checked equal to the masked dense model to 1e-5.

Tickets are synthetic: channel masks keep each layer's largest-|gamma| channels (|coefficient| for
BERT's heads and FFN neurons; the gammas are drawn uniform in [0.1, 1.1) from seed 0, as a trained
network's would differ), weight masks are global magnitude masks (``magnitude_ticket``) at the
density. Latency is the same for trained and synthetic weights of one architecture and sparsity.

    python benchmarks/inference.py                      # every network (about 20 minutes on 2 cores)
    python benchmarks/inference.py --quick              # VGG and ResNet-20 only, fewer repeats
    python benchmarks/inference.py --networks bert      # one network; the others' rows are kept

Writes benchmarks/inference.json (rows of the networks run replace their old rows) and the block
between <!-- inference:start --> and <!-- inference:end --> of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from sparseticket.deploy import SparseLinear, deploy, export_onnx
from sparseticket.deploy.export import onnx_session, run_onnx
from sparseticket.deploy.inputs import batch_of
from sparseticket.deploy.measure import latency_ms
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


def _compiled_ms(model: nn.Module, inputs, repeats: int) -> dict[int, float | None]:
    """torch.compile latency per batch size (None where compiling fails)."""
    torch._dynamo.reset()
    compiled = torch.compile(model)
    times: dict[int, float | None] = {}
    for size in BATCHES:
        try:
            times[size] = latency_ms(compiled, batch_of(inputs, size), repeats=repeats, warmup=2)
        except Exception as error:  # noqa: BLE001 - a backend failure is a table entry, not a crash
            print(f"    torch.compile failed at batch {size}: {type(error).__name__}: {str(error)[:120]}")
            times[size] = None
    return times


def _onnx_ms(model: nn.Module, reference: nn.Module, inputs, repeats: int, folder: Path) -> tuple[dict, list]:
    """ONNX Runtime latency per batch size (after an export checked to 1e-5) and the layers exported dense."""
    path = folder / "model.onnx"
    exported = export_onnx(model, inputs, path, reference)
    session = onnx_session(path, threads=torch.get_num_threads())
    times = {}
    for size in BATCHES:
        batch = batch_of(inputs, size)
        for _ in range(2):
            run_onnx(session, batch)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            run_onnx(session, batch)
            samples.append((time.perf_counter() - start) * 1e3)
        times[size] = sorted(samples)[len(samples) // 2]
    return times, exported.densified


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


def measure(network: str, repeats: int, folder: Path) -> list[dict]:
    """Every row of one network: dense, the channel tickets (plain and round_to 8), the weight tickets."""
    build = NETWORKS[network]
    torch.manual_seed(0)
    model, inputs, description = build()
    model.eval()
    configs = [("dense", None, None)]
    configs += [(f"channel {d}", d, r) for d in CHANNEL_DENSITIES for r in (None, 8)]
    configs += [(f"weight {d}", d, None) for d in WEIGHT_DENSITIES]
    rows = []
    dense_row = None
    for label, density, round_to in configs:
        start = time.perf_counter()
        base = copy.deepcopy(model)
        if label == "dense":
            ticket = Ticket({name: torch.ones_like(p, dtype=torch.bool) for name, p in base.named_parameters()
                             if p.dim() > 1 and "embeddings" not in name}, "dense")
            result = deploy(ticket, base, example_inputs=inputs, batch_sizes=BATCHES, repeats=repeats, formats=())
        elif label.startswith("channel"):
            ticket = channel_ticket(base, density)
            result = deploy(ticket, base, example_inputs=inputs, round_to=round_to, batch_sizes=BATCHES,
                            repeats=repeats)
        else:
            ticket = magnitude_ticket(base, density)
            result = deploy(ticket, base, example_inputs=inputs, batch_sizes=BATCHES, repeats=repeats)
        report = result.report
        sparse = sum(isinstance(m, SparseLinear) for m in result.model.modules())
        same_graph = label.startswith("weight") and sparse == 0  # every layer stayed dense: dense's graph
        if same_graph and dense_row is not None:
            compiled, ort, densified = dense_row["compile_ms"], dense_row["onnxruntime_ms"], []
        else:
            compiled = _compiled_ms(result.model, inputs, repeats)
            ort, densified = _onnx_ms(result.model, result.masked, inputs, repeats, folder)
        gpu, two_four = gpu_bytes(result.model)
        kept = [value[1] / value[2] for value in report.channels.values()] if report.channels else []
        row = {
            "network": network, "description": description, "ticket": label,
            "round_to": round_to, "density": density,
            "kept_channels": round(sum(kept) / len(kept), 3) if kept else None,
            "params": report.deployed.params, "macs": report.deployed.macs,
            "memory_bytes": report.deployed.memory_bytes,
            "eager_ms": {str(k): v for k, v in report.deployed.latency_ms.items()},
            "compile_ms": {str(k): v for k, v in compiled.items()},
            "onnxruntime_ms": {str(k): v for k, v in ort.items()},
            "error": report.error, "sparse_linears": sparse,
            "formats": sorted({layer.format for layer in report.layers if layer.kind == "linear"}),
            "onnx_dense_layers": len(densified), "same_graph_as_dense": same_graph,
            "gpu_bytes_b1": gpu, "gpu_two_four_linears": two_four,
            "gpu_predicted_ms_b1": gpu / H100_BYTES_PER_S * 1e3, "seconds": round(time.perf_counter() - start, 1),
        }
        if label == "dense":
            dense_row = row
        rows.append(row)
        print(f"  {network} {label}{' round_to 8' if round_to else ''}: eager {row['eager_ms']} compile "
              f"{row['compile_ms']} ort {row['onnxruntime_ms']} error {row['error']:.1g} ({row['seconds']} s)",
              flush=True)
    return rows


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _ratio(value: float | None, dense: float | None) -> str:
    if value is None or dense is None:
        return "n/a"
    return f"{_ms(value)} ({dense / value:.2f}x)"


def table(rows: list[dict], meta: dict) -> str:
    """The Markdown block for RESULTS.md."""
    lines = [START, "## Inference: what a ticket buys (`sparseticket deploy`, benchmarks/inference.py)", "",
             f"Measured {meta['date']} on {meta['machine']}, torch {meta['torch']}, {meta['threads']} threads, "
             f"median of {meta['repeats']} runs. **Tickets are synthetic**: channel masks keep each layer's "
             "largest-|gamma| channels (|coefficient| for BERT heads/FFN neurons; gammas drawn at random), "
             "weight masks are global magnitude masks at the density. Every deployed model's outputs equal the "
             "masked dense model's to 1e-5 (max |diff| / max(1, max |output|), column *err*). Latency in ms at "
             "batch 1 / 64, the speed-up over dense in brackets. *GPU b1* is **predicted, not measured**: "
             "fp16 weight bytes read at batch 1 over an H100's 3.35 TB/s (2:4 where the mask allows it, CSR "
             "where smaller).", ""]
    for network in dict.fromkeys(row["network"] for row in rows):
        group = [row for row in rows if row["network"] == network]
        dense = group[0]
        lines += [f"**{dense['description']}**", "",
                  "| ticket | params | MACs | memory | eager b1 | eager b64 | compile b1 | compile b64 | ORT b1 | "
                  "ORT b64 | Linear formats | GPU b1 (predicted) | err |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
        for row in group:
            name = row["ticket"] + (" round_to 8" if row["round_to"] else "")
            if row["kept_channels"] is not None:
                name += f" (kept {row['kept_channels']:.2f})"
            cells = [name, f"{row['params'] / 1e6:.3f}M", f"{row['macs'] / 1e6:.1f}M",
                     f"{row['memory_bytes'] / 2**20:.2f} MiB"]
            for key in ("eager_ms", "compile_ms", "onnxruntime_ms"):
                for size in ("1", "64"):
                    cells.append(_ratio(row[key].get(size), dense[key].get(size)))
            formats = ", ".join(row["formats"]) if row["formats"] else "-"
            if row["same_graph_as_dense"]:
                formats += " (all dense: compile/ORT = dense's)"
            cells += [formats, f"{row['gpu_predicted_ms_b1'] * 1e3:.1f} us "
                      f"({dense['gpu_bytes_b1'] / row['gpu_bytes_b1']:.2f}x)", f"{row['error']:.0e}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += verdicts(rows) + [END]
    return "\n".join(lines)


def verdicts(rows: list[dict]) -> list[str]:
    """Plain sentences: where sparsity pays on this CPU and where it does not, with the figures."""
    lines = ["**Where sparsity pays on this CPU, and where it does not** (eager, batch 64 unless said):", ""]
    for network in dict.fromkeys(row["network"] for row in rows):
        group = [row for row in rows if row["network"] == network]
        dense = group[0]
        for row in group[1:]:
            name = row["ticket"] + (" round_to 8" if row["round_to"] else "")
            speed = {size: dense["eager_ms"][size] / row["eager_ms"][size] for size in ("1", "64")}
            macs = dense["macs"] / max(row["macs"], 1)
            if row["ticket"].startswith("weight") and row["same_graph_as_dense"]:
                lines.append(f"- {network} {name}: **does not pay**: every Linear stayed dense (sparse formats lost "
                             f"the timing) and convolutions stay dense, so the model is the dense one "
                             f"({speed['64']:.2f}x at batch 64, {speed['1']:.2f}x at batch 1, noise).")
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


def replace_block(text: str, block: str) -> str:
    """``text`` with the inference block replaced (appended at the end if absent)."""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        return head + block + rest.split(END, 1)[1]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", choices=tuple(NETWORKS), default=None)
    parser.add_argument("--quick", action="store_true", help="VGG and ResNet-20 only, 3 repeats: a smoke check")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per latency (default 7, quick 3)")
    parser.add_argument("--no-write", action="store_true", help="print only; write neither file")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and ONNX Runtime threads (default 1: on a shared machine two spinning threads "
                             "turn any other job's load into 10-100x latency outliers)")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    networks = arguments.networks or (list(QUICK) if arguments.quick else list(NETWORKS))
    repeats = arguments.repeats or (3 if arguments.quick else 7)
    warnings.filterwarnings("ignore")
    old = json.loads(JSON.read_text()) if JSON.exists() else {"rows": []}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for network in networks:
            print(f"== {network}", flush=True)
            rows += measure(network, repeats, Path(folder))
    kept = [row for row in old["rows"] if row["network"] not in networks]
    order = list(NETWORKS)
    rows = sorted(kept + rows, key=lambda row: order.index(row["network"]))
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} CPU ({torch.get_num_threads()} "
            "threads; the machine was shared with other jobs)", "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "repeats": repeats, "python": sys.version.split()[0]}
    block = table(rows, meta)
    print(block)
    if not arguments.no_write:
        atomic_write_text(JSON, json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        atomic_write_text(RESULTS, replace_block(RESULTS.read_text(encoding="utf-8"), block))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
