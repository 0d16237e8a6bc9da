"""Predicted H100 cost of sparseticket's fused ops against a plain-PyTorch per-layer loop (no GPU).

``python benchmarks/gpu_on_paper.py [--out benchmarks/GPU_ON_PAPER.md]`` counts the bytes each
op must move and the device operations it issues, for ResNet-18, ResNet-50 and BERT-base, turns
them into predicted times with a bandwidth + launch-latency model, and appends PTX evidence from
an ahead-of-time compile for sm_90. Run it without ``TRITON_INTERPRET`` (the compile needs it off).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import bert_base_shapes, resnet18_shapes, resnet50_shapes  # noqa: E402

Shape = tuple[int, ...]
EagerOps = tuple[tuple[str, int], ...]

BANDWIDTH = 3.0e12  # B/s, H100 SXM HBM3, achievable streaming
LAUNCH_SECONDS = 5e-6  # per kernel launch, fill or host-to-device copy
F32 = 4
BOOL = 1
RADIX_PASSES = 4  # 32-bit keys, 8-bit digits
HISTORY_ROWS = 4  # K: EarlyBird's mask history rows compared by mask_distances
SORT_LAUNCHES = 1 + RADIX_PASSES  # CUB onesweep: one histogram kernel + one kernel per digit pass

# Plain-PyTorch loops a peer would write: (statement, bytes read + written per element), one kernel each.
GEMMINER_STEP_EAGER: EagerOps = (
    ("d = g.add(p, alpha=2 * l2)", 3 * F32),
    ("v_new = v.mul(momentum)", 2 * F32),
    ("v_new.add_(d)", 3 * F32),
    ("p_new = p.add(v_new, alpha=-lr)", 3 * F32),
    ("p_new.clamp_(0, 1)", 2 * F32),
    ("w = torch.where(f, v_new, v)", BOOL + 3 * F32),
    ("v.copy_(w)", 2 * F32),
    ("w = torch.where(f, p_new, p)", BOOL + 3 * F32),
    ("p.copy_(w)", 2 * F32),
    ("above = p > 0.5", F32 + BOOL),
    ("above &= f", 3 * BOOL),
    ("n = above.sum()", BOOL),
    ("kept += n", 0),
)
GEMMINER_MASK_FORWARD_EAGER: EagerOps = (
    ("above = s > 0.5", F32 + BOOL),
    ("keep = above & f", 3 * BOOL),
    ("out = w * keep", 2 * F32 + BOOL),
)
GEMMINER_MASK_BACKWARD_EAGER: EagerOps = (  # straight-through; the weights are frozen while mining
    ("t = grad * w", 3 * F32),
    ("grad_s = t * f", 2 * F32 + BOOL),
)
IMP_TRUNCATE_EAGER: EagerOps = (("g.mul_(mask)", 2 * F32 + BOOL),)

# What a competent PyTorch user writes instead ("peer"): foreach ops over the lists, SGD with
# weight_decay on Gem-Miner's one flat score buffer; (statement, bytes read + written per element).
GEMMINER_STEP_PEER: EagerOps = (  # SGD(momentum, weight_decay=2*l2, foreach=True), clamp_, count
    ("d = torch._foreach_add(grads, params, alpha=2 * l2)", 3 * F32),
    ("torch._foreach_mul_(bufs, momentum)", 2 * F32),
    ("torch._foreach_add_(bufs, d)", 3 * F32),
    ("torch._foreach_add_(params, bufs, alpha=-lr)", 3 * F32),
    ("p.clamp_(0, 1)", 2 * F32),
    ("above = p > 0.5", F32 + BOOL),
    ("torch.count_nonzero(above)", BOOL),
)
IMP_TRUNCATE_PEER: EagerOps = (("torch._foreach_mul_(grads, float_masks)", 3 * F32),)
EARLYBIRD_L1_PEER: EagerOps = (("s = torch._foreach_sign(gammas)", 2 * F32),
                               ("torch._foreach_add_(grads, s, alpha=l1)", 3 * F32))
WORM_SCALE_PEER: EagerOps = (("torch._foreach_mul_(grads, float_factors)", 3 * F32),)
FOREACH_MAX_TENSORS = 110  # tensors per multi_tensor_apply launch (lists of depth 2-3, CUDA)
FOREACH_MAX_BLOCKS = 320  # chunks per launch
FOREACH_CHUNK = 65536  # elements per chunk
# IMP's step without the fused masked optimizer: torch's fastest dense step (fused=True, one
# multi-tensor kernel) plus the two masking passes (pruned gradients, then pruned weights).
SGD_FUSED_DENSE = 5 * F32  # read weight, grad, momentum; write weight, momentum
ADAMW_FUSED_DENSE = 7 * F32  # read weight, grad, two moments; write weight, two moments
MASK_PASSES_PEER: EagerOps = (("torch._foreach_mul_(grads, float_masks)", 3 * F32),
                              ("torch._foreach_mul_(params, float_masks)", 3 * F32))
SGD_LOOP_EAGER: EagerOps = (  # torch.optim.SGD's for-loop, then the two masks, per layer
    ("d = g.add(p, alpha=wd)", 3 * F32), ("buf.mul_(momentum)", 2 * F32), ("buf.add_(d)", 3 * F32),
    ("p.add_(buf, alpha=-lr)", 3 * F32), ("g.mul_(mask)", 2 * F32 + BOOL), ("p.mul_(mask)", 2 * F32 + BOOL))
MASK_DISTANCE_NEW_EAGER: EagerOps = (("new = importance > threshold", F32 + BOOL),)
MASK_DISTANCE_ROW_EAGER: EagerOps = (("x = new ^ history[r]", 3 * BOOL), ("d[r] = x.sum()", BOOL))
MASK_DISTANCE_RUNS_EAGER: EagerOps = (
    ("same = new == history[-1]", 3 * BOOL),
    ("r1 = runs + 1", 2 * F32),
    ("runs = torch.where(same, r1, 0)", BOOL + 2 * F32),
)


@dataclass(frozen=True)
class Cost:
    """Bytes read + written and device operations of one call: kernels plus fills/host copies."""

    bytes: int
    launches: int
    aux: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.bytes + other.bytes, self.launches + other.launches, self.aux + other.aux)


@dataclass(frozen=True)
class Row:
    """One op of one network: when it runs, the fused cost, the peer's cost (what a competent user
    writes: foreach ops, SGD's weight_decay) and the per-layer loop's (the original repositories')."""

    op: str
    when: str
    fused: Cost
    eager: Cost
    loop: Cost | None = None


def numel(shape: Shape) -> int:
    """Elements of a tensor of this shape."""
    return math.prod(shape)


def total(shapes: Sequence[Shape]) -> int:
    """Elements of all tensors of these shapes."""
    return sum(numel(shape) for shape in shapes)


def predicted_seconds(cost: Cost) -> float:
    """Predicted H100 time: bytes / 3.0e12 B/s + (launches + aux) x 5 us."""
    return cost.bytes / BANDWIDTH + (cost.launches + cost.aux) * LAUNCH_SECONDS


def eager_loop(shapes: Sequence[Shape], ops: EagerOps) -> Cost:
    """A Python loop running these elementwise statements on every tensor: one kernel each."""
    per_element = sum(nbytes for _, nbytes in ops)
    return Cost(total(shapes) * per_element, len(ops) * len(shapes))


def foreach_launches(shapes: Sequence[Shape]) -> int:
    """Kernels one ``torch._foreach_*`` op launches over tensors of these shapes (multi_tensor_apply:
    at most FOREACH_MAX_TENSORS tensors and FOREACH_MAX_BLOCKS chunks of FOREACH_CHUNK per launch)."""
    chunks = sum(math.ceil(numel(shape) / FOREACH_CHUNK) for shape in shapes)
    return max(math.ceil(len(shapes) / FOREACH_MAX_TENSORS), math.ceil(chunks / FOREACH_MAX_BLOCKS), 1)


def foreach_ops(shapes: Sequence[Shape], ops: EagerOps) -> Cost:
    """Each statement a foreach op over the whole list: its bytes per element, its launches."""
    per_element = sum(nbytes for _, nbytes in ops)
    return Cost(total(shapes) * per_element, len(ops) * foreach_launches(shapes))


def truncate_bytes(shapes: Sequence[Shape], per_channel: bool, l1: bool) -> int:
    """truncate_grads_kernel: read g, keep (1 B per channel or element), p if l1; write g."""
    data = total(shapes) * ((3 if l1 else 2) * F32)
    keep = sum(shape[0] if per_channel else numel(shape) for shape in shapes) * BOOL
    return data + keep


def truncate_fused(shapes: Sequence[Shape], per_channel: bool, l1: bool) -> Cost:
    """One multi-tensor launch; its block table is cached on the device while the gradients'
    addresses stay (a steady loop copies none)."""
    return Cost(truncate_bytes(shapes, per_channel, l1), 1, 0)


def truncate_eager(shapes: Sequence[Shape], per_channel: bool, l1: bool, factor_bytes: int) -> Cost:
    """Per tensor: ``s = p.sign(); g.add_(s, alpha=l1)`` if l1, then ``g.mul_(factor)``.

    ``factor`` is the bool mask (``factor_bytes`` 1, scale 0) or a precomputed fp32 per-channel
    or per-element factor (4), broadcast and read once.
    """
    cost = Cost(0, 0)
    for shape in shapes:
        count = numel(shape)
        factors = shape[0] if per_channel else count
        if l1:
            cost += Cost(2 * F32 * count + 3 * F32 * count, 2)
        cost += Cost(2 * F32 * count + factor_bytes * factors, 1)
    return cost


def gemminer_step_bytes(count: int) -> int:
    """gemminer_step_kernel per element, as GemMiner calls it: read scores, momentum, grads, frozen weights
    (fp32), flags (bool); write scores, momentum and the next forward's masked weight."""
    return count * (7 * F32 + BOOL)


def gemminer_step_fused(shapes: Sequence[Shape]) -> Cost:
    """One launch over the flat score buffer, after a zero fill of the kept counter."""
    return Cost(gemminer_step_bytes(total(shapes)), 1, 1)


def gemminer_deferred_fused(shapes: Sequence[Shape]) -> Cost:
    """gemminer_step_from_masked_grads_ (GemMiner's deferred backward): the score step's traffic, reading
    each layer's masked-weight gradient where gemminer_step_ reads the scores' gradient, one launch per
    layer on its slice; the backward then makes no pass of its own."""
    return Cost(gemminer_step_bytes(total(shapes)), len(shapes), 1)


def gemminer_mask_bytes(shapes: Sequence[Shape]) -> int:
    """The backward with frozen weights (read grad, f, w; write grad_s); the forward returns the masked
    weight the score step wrote (no kernel)."""
    return total(shapes) * (3 * F32 + BOOL)


def gemminer_mask_fused(shapes: Sequence[Shape]) -> Cost:
    """One backward launch per layer (a single-tensor kernel)."""
    return Cost(gemminer_mask_bytes(shapes), len(shapes))


def kth_bytes(count: int) -> int:
    """Radix select: each of the 4 histogram passes reads every fp32 value once; nothing is written per element."""
    return RADIX_PASSES * F32 * count


def kth_fused(shapes: Sequence[Shape]) -> Cost:
    """4 histogram + 4 select launches; a histogram zero fill and the state copy (the block table
    is cached while the weights stay where they are)."""
    return Cost(kth_bytes(total(shapes)), 2 * RADIX_PASSES, 2)


def kth_eager(shapes: Sequence[Shape]) -> Cost:
    """``torch.cat`` + ``torch.sort`` + index: cat read+write, iota of int64 indices, 4 radix passes
    reading and writing fp32 keys and int64 indices, then one scalar copy."""
    count = total(shapes)
    cat = Cost(2 * F32 * count, 1)
    iota = Cost(8 * count, 1)
    sort = Cost(RADIX_PASSES * 2 * (F32 + 8) * count, SORT_LAUNCHES)
    return cat + iota + sort + Cost(0, 1)


def mask_distances_bytes(channels: int, rows: int) -> int:
    """mask_distances_kernel: read importance, read+write int32 runs, write packed, read rows packed history rows."""
    packed = (channels + 7) // 8
    return channels * 3 * F32 + packed * (1 + rows)


def mask_distances_fused(shapes: Sequence[Shape], rows: int = HISTORY_ROWS) -> Cost:
    """One launch over the concatenated channel vector; a zero fill of the counts, a threshold copy."""
    return Cost(mask_distances_bytes(total(shapes), rows), 1, 2)


def mask_distances_eager(shapes: Sequence[Shape], rows: int = HISTORY_ROWS) -> Cost:
    """Bool masks on the concatenated channel vector: compare, per row XOR + sum, run update."""
    flat = [(total(shapes),)]
    cost = eager_loop(flat, MASK_DISTANCE_NEW_EAGER) + eager_loop(flat, MASK_DISTANCE_RUNS_EAGER)
    for _ in range(rows):
        cost += eager_loop(flat, MASK_DISTANCE_ROW_EAGER)
    return cost


def packed_mask_bytes(shapes: Sequence[Shape]) -> int:
    """Bytes of one packed mask per tensor (1 bit per element, ceil(numel / 8) bytes each)."""
    return sum((numel(shape) + 7) // 8 for shape in shapes)


def masked_step_fused(shapes: Sequence[Shape], dense_bytes: int) -> Cost:
    """masked_sgd_/masked_adam_ as the masked optimizer calls them: the dense step's traffic plus the
    packed mask (1/8 B per weight), one launch."""
    return Cost(total(shapes) * dense_bytes + packed_mask_bytes(shapes), 1)


def masked_step_peer(shapes: Sequence[Shape], dense_bytes: int) -> Cost:
    """torch's fused dense step (one multi-tensor kernel per launch group) and two foreach mask passes."""
    return Cost(total(shapes) * dense_bytes, foreach_launches(shapes)) + foreach_ops(shapes, MASK_PASSES_PEER)


def network_parts(shapes: dict[str, list[Shape]]) -> tuple[list[Shape], list[Shape]]:
    """(prunable Conv/Linear weights, BN or LayerNorm vectors) of a network's shape dict."""
    prunable = shapes.get("conv", []) + shapes["linear"]
    norms = shapes["bn"] if "bn" in shapes else shapes["norm"]
    return prunable, norms


def network_rows(prunable: Sequence[Shape], norms: Sequence[Shape]) -> list[Row]:
    """The modelled ops of one network."""
    affine = list(norms) + list(norms)  # gamma then beta; beta's params are zeros in the fused call
    bn_loop = truncate_eager(norms, True, True, F32) + truncate_eager(norms, True, False, F32)
    bn_peer = foreach_ops(norms, EARLYBIRD_L1_PEER) + foreach_ops(affine, WORM_SCALE_PEER)
    flat = [(total(prunable),)]  # Gem-Miner's scores live in one flat buffer
    forward_mask = eager_loop(prunable, GEMMINER_MASK_FORWARD_EAGER)  # the peers compute it in the forward
    backward_mask = eager_loop(prunable, GEMMINER_MASK_BACKWARD_EAGER)
    return [
        Row("truncate_grads_ EarlyBird/WORM (norm gamma+beta, per-channel, l1)", "step",
            truncate_fused(affine, True, True), bn_peer, bn_loop),
        Row("truncate_grads_ IMP (weights, per-element, scale 0)", "step",
            truncate_fused(prunable, False, False), foreach_ops(prunable, IMP_TRUNCATE_PEER),
            eager_loop(prunable, IMP_TRUNCATE_EAGER)),
        Row("masked_sgd_ IMP/ticket step (SGD momentum + wd)", "step", masked_step_fused(prunable, SGD_FUSED_DENSE),
            masked_step_peer(prunable, SGD_FUSED_DENSE), eager_loop(prunable, SGD_LOOP_EAGER)),
        Row("masked_adam_ IMP/ticket step (AdamW)", "step", masked_step_fused(prunable, ADAMW_FUSED_DENSE),
            masked_step_peer(prunable, ADAMW_FUSED_DENSE)),
        Row("gemminer_step_ (flat scores) + next masked weights / forward mask", "step",
            gemminer_step_fused(prunable), eager_loop(flat, GEMMINER_STEP_PEER) + forward_mask,
            eager_loop(prunable, GEMMINER_STEP_EAGER) + forward_mask),
        Row("gemminer_mask backward", "step", gemminer_mask_fused(prunable), backward_mask, backward_mask),
        Row("gemminer_step_from_masked_grads_ (deferred: step + backward) / gemminer_step_ + mask backward",
            "step", gemminer_deferred_fused(prunable), gemminer_step_fused(prunable) + gemminer_mask_fused(prunable)),
        Row("kth_value over all prunable abs(w)", "round/epoch", kth_fused(prunable), kth_eager(prunable)),
        Row(f"mask_distances (norm channels, K={HISTORY_ROWS})", "epoch",
            mask_distances_fused(norms), mask_distances_eager(norms)),
    ]


def networks() -> dict[str, dict[str, list[Shape]]]:
    """The three benchmarked networks' shape dicts."""
    return {"ResNet-18": resnet18_shapes(), "ResNet-50": resnet50_shapes(), "BERT-base": bert_base_shapes()}


def speedup(row: Row) -> float:
    """Predicted eager time / fused time."""
    return predicted_seconds(row.eager) / predicted_seconds(row.fused)


def network_table(name: str, shapes: dict[str, list[Shape]]) -> str:
    """Markdown table of one network's rows."""
    prunable, norms = network_parts(shapes)
    norm_kind = "BN" if "bn" in shapes else "LayerNorm"
    lines = [
        f"### {name}",
        "",
        f"{len(prunable)} prunable weight tensors ({total(prunable) / 1e6:.2f}M elements), "
        f"{len(norms)} {norm_kind} layers ({total(norms)} channels), "
        f"{sum(total(part) for part in shapes.values()) / 1e6:.2f}M parameters in the shape list.",
        "",
        "| op | runs per | fused MB | fused launches (+aux) | fused us | peer MB | peer launches | peer us | "
        "speed-up over peer | per-layer loop us (its speed-up) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in network_rows(prunable, norms):
        loop = "—" if row.loop is None else (f"{predicted_seconds(row.loop) * 1e6:.1f} "
                                             f"({predicted_seconds(row.loop) / predicted_seconds(row.fused):.1f}x)")
        lines.append(
            f"| {row.op} | {row.when} | {row.fused.bytes / 1e6:.3f} | {row.fused.launches} (+{row.fused.aux}) | "
            f"{predicted_seconds(row.fused) * 1e6:.1f} | {row.eager.bytes / 1e6:.3f} | {row.eager.launches} | "
            f"{predicted_seconds(row.eager) * 1e6:.1f} | {speedup(row):.1f}x | {loop} |")
    if norm_kind == "LayerNorm":
        lines += ["", "BERT has no BN: the EarlyBird/WORM and mask_distances rows use the 25 LayerNorm "
                  "weight/bias vectors as the analogue (as the transformer slimming path does)."]
    return "\n".join(lines)


def vector_width(operations: Sequence[str], prefix: str) -> str:
    """Widest vector form among the PTX global ops with this prefix ('v4', 'v2' or 'scalar')."""
    chosen = [op for op in operations if op.startswith(prefix)]
    for width in ("v4", "v2"):
        if any(f".{width}." in op for op in chosen):
            return width
    return "scalar" if chosen else "none"


def ptx_table(arch: int = 90) -> str:
    """Markdown table of every kernel's AOT compile for ``sm_<arch>``."""
    if os.environ.get("TRITON_INTERPRET"):
        return "PTX evidence skipped: TRITON_INTERPRET is set (the AOT compile needs it unset)."
    from sparseticket.triton_kernels.aot import all_specs, compile_kernel

    lines = [
        "| kernel | streaming | global loads | global stores | widest load | widest store | registers | shared B |",
        "|---|---|---|---|---|---|---:|---:|",
    ]
    for spec in all_specs():
        result = compile_kernel(spec, arch)
        operations = result["global_memory_ops"]
        loads = ", ".join(op for op in operations if op.startswith("ld"))
        stores = ", ".join(op for op in operations if op.startswith("st"))
        lines.append(
            f"| {result['kernel']} | {'yes' if result['streaming'] else 'no'} | {loads} | {stores} | "
            f"{vector_width(operations, 'ld')} | {vector_width(operations, 'st')} | "
            f"{result['registers']} | {result['shared_bytes']} |")
    return "\n".join(lines)


HEADER = f"""## GPU on paper — PREDICTED — no GPU measured these figures

Every figure below is a model, not a measurement: no GPU was available. Assumptions:

- Predicted time = bytes / {BANDWIDTH:.1e} B/s + (launches + aux) x {LAUNCH_SECONDS * 1e6:.0f} us (H100 SXM,
  streaming bandwidth; launch latency per kernel, fill or host-to-device copy). Caches, overlap of
  launches with the GPU's work and host-side Python time are ignored.
- Fused bytes are counted per element from the Triton kernels: fp32 = 4 B, bool = 1 B, int32
  runs = 4 B; keep masks count 1 B per channel or per element, the masked optimizer steps' packed
  masks 1/8 B per element. Metadata (block-table entries, scalars, counters) is left out (about 1%
  of the small BN rows, far less elsewhere), and so are kth_value's per-block atomics on its
  256-bin histograms, which resolve in L2.
- "aux" counts what the launchers issue besides their kernels in a steady loop: zero fills (kth
  histograms, gemminer kept counter, mask_distances counts), kth_value's state copy and
  mask_distances' threshold copy. The multi-tensor kernels' block tables (truncate_grads_,
  kth_value) are cached on the device while the tensors' addresses stay, so they cost no copy.
- Peer = what a competent PyTorch user writes: ``torch._foreach_*`` over the lists (one launch per
  op per 110 tensors or 320 chunks of 64K elements, as multi_tensor_apply splits them; float masks
  and factors, 4 B per element), and for Gem-Miner's one flat score buffer
  ``SGD(momentum, weight_decay=2*l2, foreach=True)`` + ``clamp_`` + ``torch.count_nonzero`` (58 B
  per score, 7 kernels). Statements and byte counts are listed in this script. The last column is
  the per-layer Python loop of the original repositories (one kernel per call per layer; l1:
  ``s = p.sign()`` 8 B + ``g.add_(s, alpha=l1)`` 12 B; truncation ``g.mul_(factor)`` 8 B + the
  factor), where it differs.
- The eager threshold is ``torch.cat`` (read + write N fp32) then ``torch.sort`` modelled as CUB's
  radix sort: an int64 index iota (write 8N) and {RADIX_PASSES} passes each reading and writing fp32 keys and
  int64 indices (24 B per element per pass), {SORT_LAUNCHES} kernels; then one scalar copy. The fused radix
  select reads the data {RADIX_PASSES} times (4 histogram + 4 select launches), writing nothing per element.
- Gem-Miner mining freezes the weights: the mask backward writes only the score gradient.
- kth_value runs once per pruning round / epoch and mask_distances once per epoch, not every step.
- The ~110M BERT-base shape list includes the embedding LayerNorm; its prunable weights are the 73
  Linear weights (Q, K, V, O, two FFN per layer, pooler), not the embeddings.
"""


def report() -> str:
    """The whole markdown section: header, one table per network, PTX evidence."""
    tables = [network_table(name, shapes) for name, shapes in networks().items()]
    return "\n\n".join([HEADER.rstrip(), *tables, "### PTX evidence (AOT compile for sm_90)", ptx_table(90)]) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """Write the predicted-cost markdown section to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/GPU_ON_PAPER.md"), help="markdown file to write")
    arguments = parser.parse_args(argv)
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(report())
    print(f"wrote {arguments.out}")


if __name__ == "__main__":
    main()
