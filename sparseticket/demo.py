"""A short tour of the fused ops on a toy CNN: what each computes, on which backend, how fast.

Run with ``python -m sparseticket.demo``. It trains a tiny
conv-BN network for a few steps on synthetic data and applies each op the way the methods do:
EarlyBird's L1 on BN gamma plus WORM's truncation, the global channel threshold, the mask queue,
Gem-Miner's masked weights and fused score step.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

import sparseticket.ops as ops


def toy_cnn(width: int = 16, classes: int = 10) -> nn.Sequential:
    """Three conv-BN-ReLU blocks and a linear classifier, for 8x8 single-channel images."""
    layers: list[nn.Module] = []
    channels = 1
    for multiplier in (1, 2, 2):
        layers += [nn.Conv2d(channels, width * multiplier, 3, padding=1, bias=False),
                   nn.BatchNorm2d(width * multiplier), nn.ReLU()]
        channels = width * multiplier
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


def _timed(function: Callable[[], object], repeats: int = 20) -> tuple[object, float]:
    result = function()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return result, (time.perf_counter() - start) / repeats * 1e6


def run_demo(steps: int = 5, seed: int = 0) -> list[tuple[str, str, float]]:
    """Run every op on the toy model; return (op, what it did, microseconds per call) rows."""
    torch.manual_seed(seed)
    model = toy_cnn()
    batch, labels = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    norms = [module for module in model if isinstance(module, nn.BatchNorm2d)]
    gammas = [norm.weight for norm in norms]
    history = torch.empty(0, (sum(g.numel() for g in gammas) + 7) // 8, dtype=torch.uint8)
    rows: list[tuple[str, str, float]] = []
    for step in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(batch), labels).backward()
        everything = [torch.ones_like(g, dtype=torch.bool) for g in gammas]
        ops.truncate_grads_([g.grad for g in gammas], everything, params=gammas, l1=1e-4)  # EB's L1
        optimizer.step()
        importance = torch.cat([g.detach().abs() for g in gammas])
        threshold = ops.kth_value(importance, int(0.5 * importance.numel()))
        packed, distances = ops.mask_distances(importance, threshold, history)
        history = torch.cat([history, packed[None]])[-5:]
        print(f"step {step + 1}/{steps}: |gamma| median {threshold.item():.5f}, "
              f"distances to older masks {[round(d, 3) for d in distances.tolist()]}")

    grads = [g.grad for g in gammas]
    keep = [g.detach().abs() > threshold for g in gammas]
    _, micros = _timed(lambda: ops.truncate_grads_(grads, keep, scale=0.003, params=gammas, l1=1e-4))
    rows.append(("truncate_grads_", f"L1 + WORM scaling on {len(grads)} BN layers, one launch", micros))
    kth, micros = _timed(lambda: ops.kth_value([g.abs() for g in gammas], importance.numel() // 2))
    rows.append(("kth_value", f"global |gamma| median = {kth.item():.5f}", micros))
    (packed, distances), micros = _timed(lambda: ops.mask_distances(importance, threshold, history))
    rows.append(("mask_distances", f"{importance.numel()} channels vs {history.shape[0]} masks: "
                 f"max distance {distances.max().item():.3f}", micros))
    mask = importance > threshold
    packed_mask, micros = _timed(lambda: ops.pack_mask(mask))
    rows.append(("pack_mask", f"{mask.numel()} bits -> {packed_mask.numel()} bytes", micros))
    unpacked, micros = _timed(lambda: ops.unpack_mask(packed_mask, mask.numel()))
    rows.append(("unpack_mask", f"round trip exact: {bool(torch.equal(unpacked, mask))}", micros))

    conv = model[3]
    scores = torch.rand_like(conv.weight, requires_grad=True)
    flags = torch.ones_like(conv.weight, dtype=torch.bool)
    masked, micros = _timed(lambda: ops.gemminer_mask(conv.weight.detach(), scores, flags))
    masked.sum().backward()
    rows.append(("gemminer_mask", f"density {(masked != 0).float().mean().item():.2f}, "
                 "score gradient reached", micros))
    buffer = torch.zeros_like(scores)
    kept, micros = _timed(lambda: ops.gemminer_step_(scores.detach(), scores.grad, buffer, flags, lr=0.1))
    rows.append(("gemminer_step_", f"{kept} of {scores.numel()} scores above 0.5", micros))
    return rows


def main() -> None:
    """Print the active backends, run the demo, print a table."""
    info = ops.backends()
    print(f"sparseticket backends: C++ {'on' if info['cpp'] else 'off'}, Triton "
          f"{'on' if info['triton'] else 'off'}, CUDA {'on' if info['cuda'] else 'off'}; "
          f"CPU ops run on: {info['cpu_backend']}")
    rows = run_demo()
    print(f"\n{'op':<16} {'us/call':>8}  result")
    for name, what, micros in rows:
        print(f"{name:<16} {micros:>8.1f}  {what}")


if __name__ == "__main__":
    main()
