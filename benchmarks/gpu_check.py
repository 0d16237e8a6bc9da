"""One command that checks and measures everything a GPU can tell about sparseticket.

``python benchmarks/gpu_check.py [--out DIR]`` on a machine with a CUDA GPU (fresh copy of the
repository; torch and triton installed), ``--dry-run`` on any machine (CPU, Triton's interpreter,
tiny sizes: what CI runs so that the script cannot rot). In order, each part time-boxed and
recorded even when it fails:

1. build: an editable install of this repository when ``sparseticket`` is not importable;
2. correctness: every op on the device (Triton kernels) against the plain-PyTorch reference, for
   float32/float16/bfloat16, odd sizes and lists of tensors (scale_columns: forward, both gradients,
   a bitwise-repeatable backward, and the public op's autograd on the device);
3. no host sync: each method's per-step hooks after a real step, under
   ``torch.cuda.set_sync_debug_mode("error")`` (any synchronising call raises);
4. speed: the device's copy bandwidth, then each fused op against a per-layer loop,
   ``torch._foreach_*`` and ``torch.compile`` of the reference (at ResNet-50 shapes only, to bound
   compile time) at ResNet-18/50 and BERT-base shapes (CUDA events, medians), with achieved/peak
   bandwidth;
5. the whole training step of the small VGG with and without each method;
6. CUDA graphs (last: a failure there can poison the CUDA context): one training step of each
   method captured and replayed, its result compared with the same step run eagerly.

It writes ``RESULTS_GPU.md`` and ``gpu_check.json`` under ``--out`` (default ``benchmarks/``) and
prints one summary line last. The exit status is 1 if a correctness, sync or graph check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPEED_BUDGET_S = 150  # after this many seconds of the speed part, no more torch.compile columns


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, Triton's interpreter, tiny sizes (CI)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for RESULTS_GPU.md and gpu_check.json")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per way (default 50; 2 dry)")
    return parser.parse_args()


ARGUMENTS = parse_arguments()
if ARGUMENTS.dry_run:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
sys.path.insert(0, str(HERE))  # shapes.py, test_step.py

import torch  # noqa: E402
from torch import nn  # noqa: E402


class Report:
    """Results by part, with failures kept (a failing part does not stop the others)."""

    def __init__(self) -> None:
        self.parts: dict[str, dict] = {}
        self.failed: list[str] = []

    def run(self, name: str, part: Callable[[], dict]) -> None:
        start = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            result = part()
            status = "failed" if result.get("failures") else "skipped" if result.get("skipped") else "ok"
        except Exception as error:  # noqa: BLE001 - recorded, then the next part runs
            result, status = {"error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()}, "error"
        if status in ("failed", "error") and name in ("build", "correctness", "no_host_sync", "cuda_graphs"):
            self.failed.append(name)
        result.update(status=status, seconds=round(time.perf_counter() - start, 1))
        self.parts[name] = result
        print(f"[gpu_check] {name}: {status} ({result['seconds']} s)", flush=True)


# ------------------------------------------------------------------------------------------ 1
def build() -> dict:
    """Installs the package from this repository (editable, C++ extension built in place) when
    ``sparseticket`` is not importable; an installed one is used as it is."""
    try:
        import sparseticket
        return {"installed": False, "using": str(Path(sparseticket.__file__).parent)}
    except ImportError:
        pass
    command = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", str(ROOT)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    sys.path.insert(0, str(ROOT))  # the editable install's path hook is not loaded in this process
    result = {"installed": done.returncode == 0, "command": " ".join(command), "tail": done.stdout[-500:]}
    if done.returncode != 0:
        result["failures"] = [done.stderr[-500:]]
    return result


# ------------------------------------------------------------------------------------------ 2
def correctness(device: torch.device, dry: bool) -> dict:
    """Every op's Triton kernel on ``device`` against the reference (on the CPU, float64-free)."""
    import sparseticket.ops as ops
    from sparseticket import reference
    from sparseticket._kernels.triton import triton_kernels

    kernels = triton_kernels()
    if kernels is None:
        return {"failures": ["triton is not importable"]}
    generator = torch.Generator().manual_seed(0)
    sizes = [1, 7, 1000, 4097] if dry else [1, 7, 1000, 4097, 1 << 20, (1 << 22) + 3]
    failures: list[str] = []
    checked = 0

    def same(name: str, got, want, exact: bool = True) -> None:
        nonlocal checked
        checked += 1
        got_list = got if isinstance(got, (list, tuple)) else [got]
        want_list = want if isinstance(want, (list, tuple)) else [want]
        for g, w in zip(got_list, want_list):
            g = g.detach().cpu()
            w = w.detach().cpu()
            ok = torch.equal(g, w) if exact else torch.allclose(g.float(), w.float(), rtol=2e-2, atol=1e-3,
                                                                   equal_nan=True)
            if not ok:
                failures.append(name)
                return

    def near_sum(name: str, got: torch.Tensor, terms: torch.Tensor) -> None:
        """``got`` is the fp32 sum of each row of ``terms`` (float64) rounded to its dtype: within
        that rounding plus 2·n·eps·Σ|term| of the exact sum."""
        nonlocal checked
        checked += 1
        exact, magnitude = terms.sum(1), terms.abs().sum(1)
        info, fp32 = torch.finfo(got.dtype), torch.finfo(torch.float32)
        bound = info.eps * exact.abs() + 2 * terms.shape[1] * fp32.eps * magnitude + 1e-30
        if not bool(((got.detach().cpu().double() - exact).abs() <= bound).all()):
            failures.append(name)

    def scale_columns_checks(tag: str, rows: int, groups: int, width: int, weight_dtype, coefficients_dtype) -> None:
        """scale_columns: forward and weight gradient exact, coefficients' gradient a deterministic
        sum (two runs bitwise equal), on the kernels and through the public op's autograd."""
        weight = torch.randn(rows, groups * width, generator=generator).to(weight_dtype)
        coefficients = (torch.rand(groups, generator=generator) + 0.5).to(coefficients_dtype)
        out_dtype = torch.promote_types(weight_dtype, coefficients_dtype)
        grad = torch.randn(rows, groups * width, generator=generator).to(out_dtype)
        on = [weight.to(device), coefficients.to(device)]
        same(f"scale_columns ({tag})", kernels.scale_columns(*on, width),
             reference.scale_columns(weight, coefficients, width))
        got = kernels.scale_columns_backward(grad.to(device), *on, width, True, True)
        again = kernels.scale_columns_backward(grad.to(device), *on, width, True, True)
        same(f"scale_columns_backward weight ({tag})", got[0],
             (grad * coefficients.repeat_interleave(width)).to(weight_dtype))
        terms = (grad.double() * weight.double()).reshape(rows, groups, width).transpose(0, 1).reshape(groups, -1)
        near_sum(f"scale_columns_backward coefficients ({tag})", got[1], terms)
        same(f"scale_columns_backward deterministic ({tag})", list(got), list(again))
        leaves = [tensor.clone().requires_grad_() for tensor in on]
        ops.scale_columns(*leaves, width).backward(grad.to(device))
        same(f"scale_columns autograd ({tag})", [leaves[0].grad, leaves[1].grad], list(got))

    column_shapes = [(1, 1, 1), (7, 5, 3), (33, 12, 64), (70, 12, 8)]
    if not dry:
        column_shapes += [(768, 3072, 1), (3072, 12, 64), (4097, 3, 5)]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for size in sizes:
            tag = f"{str(dtype).removeprefix('torch.')}, {size}"
            weight = torch.randn(size, generator=generator).to(dtype)
            scores = torch.rand(size, generator=generator)
            flags = torch.rand(size, generator=generator) > 0.2
            on = [t.to(device) for t in (weight, scores, flags)]
            same(f"gemminer_mask ({tag})", kernels.gemminer_mask(*on), reference.gemminer_mask(weight, scores, flags))
            grad = torch.randn(size, generator=generator).to(dtype)
            same(f"gemminer_mask_backward ({tag})",
                 kernels.gemminer_mask_backward(grad.to(device), *on, True, True),
                 reference.gemminer_mask_backward(grad, weight, scores, flags, True, True))
            grads = [torch.randn(n, generator=generator).to(dtype) for n in (size, 3, size + 5)]
            keep = [torch.rand(n, generator=generator) > 0.5 for n in (size, 3, size + 5)]
            params = [torch.randn(n, generator=generator).to(dtype) for n in (size, 3, size + 5)]
            want = [g.clone() for g in grads]
            reference.truncate_grads_(want, keep, params, 0.003, 1e-4)
            got = [g.to(device) for g in grads]
            kernels.truncate_grads_(got, [k.to(device) for k in keep], [p.to(device) for p in params], 0.003, 1e-4)
            same(f"truncate_grads_ list ({tag})", got, want, exact=False)
        # per-channel keep masks over 4-D gradients (inner > 1), as for conv filters
        grads = [torch.randn(6, 3, 3, 3, generator=generator).to(dtype),
                 torch.randn(5, 7, generator=generator).to(dtype)]
        keep = [torch.rand(6, generator=generator) > 0.5, torch.rand(5, generator=generator) > 0.5]
        want = [g.clone() for g in grads]
        reference.truncate_grads_(want, keep, [], 0.25, 0.0)
        got = [g.to(device) for g in grads]
        kernels.truncate_grads_(got, [k.to(device) for k in keep], [], 0.25, 0.0)
        same(f"truncate_grads_ per channel ({dtype})", got, want)
        values = [torch.randn(n, generator=generator).to(dtype).abs() for n in (sizes[-1], 5, sizes[1])]
        k = sum(v.numel() for v in values) // 3
        same(f"kth_value ({dtype})", kernels.kth_value([v.to(device) for v in values], k),
             reference.kth_value(values, k))
        for shift, prefix in ((24, 0), (16, 0x3F), (0, 0x3F80)):
            same(f"digit_histogram ({dtype}, shift {shift})",
                 kernels.digit_histogram([v.to(device) for v in values], shift, prefix),
                 reference.digit_histogram(values, shift, prefix))
        scores = torch.rand(sizes[-1], generator=generator).to(dtype)
        grads, buffer = (torch.randn(sizes[-1], generator=generator) * 1e-2).to(dtype), torch.zeros_like(scores)
        flags = torch.rand(sizes[-1], generator=generator) > 0.1
        want = [scores.clone(), buffer.clone()]
        reference.gemminer_step_(want[0], grads, want[1], flags, 0.1, 0.9, 1e-4)
        got = [scores.to(device), buffer.to(device)]
        kernels.gemminer_step_(got[0], grads.to(device), got[1], flags.to(device), 0.1, 0.9, 1e-4)
        same(f"gemminer_step_ ({dtype})", got, want, exact=False)
        weights = torch.randn(sizes[-1], generator=generator).to(dtype)  # GemMiner's call: + next masked weights
        want = [scores.clone(), buffer.clone(), torch.empty_like(weights)]
        reference.gemminer_step_(want[0], grads, want[1], flags, 0.1, 0.9, 1e-4, weights, want[2])
        got = [scores.to(device), buffer.to(device), torch.empty_like(weights, device=device)]
        kernels.gemminer_step_(got[0], grads.to(device), got[1], flags.to(device), 0.1, 0.9, 1e-4,
                               weights.to(device), got[2])
        same(f"gemminer_step_ with masked weights ({dtype})", got, want, exact=False)
        layer_grads = list(torch.randn(sizes[-1], generator=generator).to(dtype).split([sizes[-1] // 3,
                                                                                       sizes[-1] - sizes[-1] // 3]))
        want = [scores.clone(), buffer.clone(), torch.empty_like(weights)]  # GemMiner's deferred backward
        reference.gemminer_step_from_masked_grads_(want[0], layer_grads, want[1], flags, 0.1, 0.9, 1e-4, weights,
                                                   want[2])
        got = [scores.to(device), buffer.to(device), torch.empty_like(weights, device=device)]
        kernels.gemminer_step_from_masked_grads_(got[0], [g.to(device) for g in layer_grads], got[1],
                                                 flags.to(device), 0.1, 0.9, 1e-4, weights.to(device), got[2])
        same(f"gemminer_step_from_masked_grads_ ({dtype})", got, want, exact=False)
        # the masked optimizer steps compute in float32 and round once: the float32 reference, rounded
        params = [torch.randn(n, generator=generator).to(dtype) for n in sizes[:3]]
        step_grads = [torch.randn_like(p) for p in params]
        masks = [torch.rand(p.shape, generator=generator) > 0.3 for p in params]
        grads32 = [g.float() for g in step_grads]
        for first in (True, False):
            want = [[p.float() for p in params], [torch.ones_like(p, dtype=torch.float32) for p in params]]
            reference.masked_sgd_(want[0], grads32, want[1], masks, 0.1, 1e-4, 0.9, 0.0, True, False, first)
            got = [[p.to(device) for p in params], [torch.ones_like(p).to(device) for p in params]]
            kernels.masked_sgd_(got[0], [g.to(device) for g in step_grads], got[1], [m.to(device) for m in masks],
                                0.1, 1e-4, 0.9, 0.0, True, False, first)
            same(f"masked_sgd_ ({dtype}, first={first})", got[0] + got[1],
                 [t.to(dtype) for t in want[0] + want[1]], exact=False)
        for decoupled in (True, False):
            state = [[torch.rand_like(p) * 0.1 for p in params] for _ in range(3)]
            want = [[t.float() for t in ts] for ts in ([*params], *state)]
            reference.masked_adam_(want[0], grads32, want[1], want[2], want[3], masks, 1e-2, 0.9, 0.999, 1e-8,
                                   1e-2, 3.0, decoupled, False)
            want = [[t.to(dtype) for t in ts] for ts in want]
            got = [[t.to(device) for t in ts] for ts in ([*params], *state)]
            kernels.masked_adam_(got[0], [g.to(device) for g in step_grads], got[1], got[2], got[3],
                                 [m.to(device) for m in masks], 1e-2, 0.9, 0.999, 1e-8, 1e-2, 3.0, decoupled, False)
            same(f"masked_adam_ ({dtype}, amsgrad, decoupled={decoupled})", sum(got, []), sum(want, []), exact=False)
        for rows, groups, width in column_shapes:
            scale_columns_checks(f"{str(dtype).removeprefix('torch.')}, {rows}x{groups * width}/{width}",
                                 rows, groups, width, dtype, dtype)
    scale_columns_checks("float16 weight, bfloat16 coefficients", 37, 12, 8, torch.float16, torch.bfloat16)
    scale_columns_checks("bfloat16 weight, float32 coefficients", 37, 12, 8, torch.bfloat16, torch.float32)
    for count in sizes:
        mask = torch.rand(count, generator=generator) > 0.5
        packed = reference.pack_mask(mask)
        same(f"pack_mask ({count})", kernels.pack_mask(mask.to(device)), packed)
        same(f"unpack_mask ({count})", kernels.unpack_mask(packed.to(device), count),
             reference.unpack_mask(packed, count))
        importance = torch.rand(count, generator=generator)
        threshold = torch.tensor(0.5)
        history = torch.stack([reference.pack_mask(torch.rand(count, generator=generator) > 0.5) for _ in range(3)])
        for with_runs in (True, False):
            runs = torch.randint(0, 5, (count,), generator=generator, dtype=torch.int32) if with_runs else None
            want_runs = runs.clone() if with_runs else None
            got_runs = runs.to(device) if with_runs else None
            want = reference.mask_distances(importance, threshold, history, want_runs)
            got = kernels.mask_distances(importance.to(device), threshold.to(device), history.to(device), got_runs)
            same(f"mask_distances ({count}, runs={with_runs})",
                 [*got, *([got_runs] if with_runs else [])], [*want, *([want_runs] if with_runs else [])])
    return {"checked": checked, "failures": failures}


# ------------------------------------------------------------------------------------------ 3/4
def _method_steps(device: torch.device, dry: bool) -> dict[str, tuple[nn.Module, Callable, Callable | None]]:
    """(model, whole step, per-step hooks) of each method on the small VGG, on ``device``."""
    import test_step as steps

    case = steps.CASES["vgg_small"]()
    case.inputs, case.labels = case.inputs[: 8 if dry else 64].to(device), case.labels[: 8 if dry else 64].to(device)
    built = {}
    for method in ("dense", *steps.METHODS):
        torch.manual_seed(0)
        model = case.build().to(device)
        if method == "dense":
            built[method] = (model, steps._training_step(model, case), None)
            continue
        step = steps._method_step(method, model, case).step
        built[method] = (model, step, None)
    return built


def no_host_sync(device: torch.device, dry: bool) -> dict:
    """Each method's step, the hooks included, with CUDA's sync debug mode set to raise (on the
    CPU the steps only run: tests/methods/test_no_host_sync.py checks the hooks there)."""
    failures = []
    for method, (_, step, _) in _method_steps(device, dry).items():
        step()  # first call: plans built, lazily allocated state
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            step()
        except RuntimeError as error:
            failures.append(f"{method}: {error}")
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    note = {} if device.type == "cuda" else {"note": "steps ran; the sync check needs CUDA"}
    return {"failures": failures, **note}


def cuda_graphs(device: torch.device, dry: bool) -> dict:
    """One step of each method captured in a CUDA graph, replayed, compared with an eager twin."""
    if device.type != "cuda":
        return {"skipped": "no CUDA device (dry run)"}
    failures, results = [], {}
    twins = _method_steps(device, dry)  # the same models, stepped eagerly
    for method, (model, step, _) in _method_steps(device, dry).items():
        twin_model, twin_step, _ = twins[method]
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    step()
                    twin_step()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            graph.replay()
            twin_step()
            torch.cuda.synchronize()
            same = all(torch.allclose(a, b, rtol=1e-4, atol=1e-5)
                       for a, b in zip(model.state_dict().values(), twin_model.state_dict().values())
                       if a.is_floating_point())
            results[method] = "replayed, matches eager" if same else "replayed, differs from eager"
            if not same:
                failures.append(method)
        except Exception as error:  # noqa: BLE001
            results[method] = f"{type(error).__name__}: {str(error)[:200]}"
            failures.append(method)
    return {"methods": results, "failures": failures}


# ------------------------------------------------------------------------------------------ 5
def _timer(device: torch.device, repeats: int) -> Callable[[Callable[[], object]], float]:
    def median_seconds(function: Callable[[], object]) -> float:
        function()
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                function()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                begin = time.perf_counter()
                function()
                times.append(time.perf_counter() - begin)
        return statistics.median(times)
    return median_seconds


def speed(device: torch.device, dry: bool, repeats: int) -> dict:
    """Copy bandwidth, then each fused op against its peers at real layer shapes."""
    import shapes as real

    import sparseticket.ops as ops
    from sparseticket.methods.masked_optimizer import masked_optimizer

    timed = _timer(device, repeats)
    deadline = time.perf_counter() + SPEED_BUDGET_S  # torch.compile columns stop here
    count = (1 << 16) if dry else (1 << 28)
    source, target = torch.ones(count, device=device), torch.empty(count, device=device)
    peak = 2 * count * 4 / timed(lambda: target.copy_(source))
    networks = {"tiny": lambda: {"conv": [(4, 3, 3, 3), (5, 4, 1, 1)], "bn": [(4,), (5,)], "linear": [(3, 5)]}} if dry \
        else {"resnet18": real.resnet18_shapes, "resnet50": real.resnet50_shapes, "bert_base": real.bert_base_shapes}
    compile_ok = not dry
    rows = []
    for network, make in networks.items():
        layers = make()
        weights = [torch.randn(s, device=device) for s in layers["conv"] + layers["linear"]]
        numel = sum(w.numel() for w in weights)
        gammas = [torch.randn(s, device=device) for s in layers["bn"]]
        gamma_grads = [torch.randn_like(g) for g in gammas]
        keep_bn = [g.abs() > 0.5 for g in gammas]
        factors_bn = [k.float() + 0.003 * (~k).float() for k in keep_bn]
        grads = [torch.randn_like(w) for w in weights]
        keep = [torch.rand_like(w) > 0.8 for w in weights]
        factors = [k.float() for k in keep]

        def eb_loop():
            for g, p, f in zip(gamma_grads, gammas, factors_bn):
                g.add_(torch.sign(p), alpha=1e-4).mul_(f)

        def eb_foreach():
            torch._foreach_add_(gamma_grads, torch._foreach_sign(gammas), alpha=1e-4)
            torch._foreach_mul_(gamma_grads, factors_bn)

        def imp_loop():
            for g, f in zip(grads, factors):
                g.mul_(f)

        scores = torch.rand(numel, device=device)
        score_grads = torch.randn(numel, device=device) * 1e-3
        flags = torch.ones(numel, dtype=torch.bool, device=device)
        buffer = torch.zeros(numel, device=device)
        parameter = nn.Parameter(scores.clone())
        parameter.grad = score_grads
        sgd = torch.optim.SGD([parameter], lr=0.1, momentum=0.9, weight_decay=2e-4, foreach=True)

        def peer_sgd():
            sgd.step()
            with torch.no_grad():
                parameter.clamp_(0, 1)
            return torch.count_nonzero(parameter > 0.5)

        flat = torch.cat([w.reshape(-1) for w in weights]).abs()
        k = numel // 5
        importance = torch.cat(gammas).abs()
        threshold = importance.median()
        older = [torch.rand_like(importance) > 0.5 for _ in range(4)]
        history = torch.stack([ops.pack_mask(mask) for mask in older])

        def distances_loop():
            new = importance > threshold
            return [(new != old).float().mean() for old in older]

        layer_scores = [torch.rand_like(w) for w in weights]
        layer_flags = [torch.rand_like(w) > 0.1 for w in weights]

        def mask_loop():
            return [w * ((s > 0.5) & f) for w, s, f in zip(weights, layer_scores, layer_flags)]

        masked_params = [nn.Parameter(w.clone()) for w in weights]
        for param, grad in zip(masked_params, grads):
            param.grad = grad
        dense_sgd = torch.optim.SGD(masked_params, lr=1e-3, momentum=0.9, weight_decay=1e-4, fused=True)
        masked_sgd = masked_optimizer(torch.optim.SGD(masked_params, lr=1e-3, momentum=0.9, weight_decay=1e-4),
                                      dict(zip(masked_params, keep)))
        dense_sgd.step()
        masked_sgd.step()  # state exists before timing

        def two_pass_sgd():
            torch._foreach_mul_(grads, factors)
            dense_sgd.step()
            with torch.no_grad():
                torch._foreach_mul_(masked_params, factors)

        groups = {
            "masked SGD step (IMP)": (masked_sgd.step, {"peer_dense_fused_sgd": dense_sgd.step,
                                                        "peer_fused_sgd_two_pass": two_pass_sgd},
                                      numel * 21, None),
            "EB L1 + WORM scale": (lambda: ops.truncate_grads_(gamma_grads, keep_bn, scale=0.003, params=gammas,
                                                                l1=1e-4),
                                   {"official_loop": eb_loop, "peer_foreach": eb_foreach},
                                   sum(g.numel() for g in gammas) * 13, eb_loop),
            "IMP masked grads": (lambda: ops.truncate_grads_(grads, keep), {"official_loop": imp_loop,
                                 "peer_foreach": lambda: torch._foreach_mul_(grads, factors)}, numel * 9, imp_loop),
            "Gem-Miner score step": (lambda: torch.ops.sparseticket.gemminer_step_(scores, score_grads, buffer, flags,
                                                                                  0.1, 0.9, 1e-4),
                                     {"peer_sgd_weight_decay": peer_sgd}, numel * 21, None),
            "global kth value": (lambda: ops.kth_value(weights, k),
                                 {"cat_kthvalue": lambda: torch.kthvalue(flat, k + 1)}, numel * 16, None),
            "EB mask + distances": (lambda: ops.mask_distances(importance, threshold, history),
                                    {"official_loop": distances_loop}, importance.numel() * 5, distances_loop),
            "Gem-Miner masked weights (forward)": (
                lambda: [ops.gemminer_mask(w, s, f) for w, s, f in zip(weights, layer_scores, layer_flags)],
                {"official_loop": mask_loop}, numel * 13, mask_loop),
        }
        for group, (fused, peers, moved, compilable) in groups.items():
            fused_time = timed(fused)
            row = {"network": network, "op": group, "fused_ms": fused_time * 1e3,
                   "achieved_of_peak": moved / fused_time / peak}
            for way, function in peers.items():
                row[f"{way}_x"] = timed(function) / fused_time
            if compile_ok and compilable is not None and network == "resnet50" and time.perf_counter() > deadline:
                row["compiled_error"] = "skipped: the speed part's time budget is spent"
            elif compile_ok and compilable is not None and network == "resnet50":  # compile time is bounded
                try:
                    compiled = torch.compile(compilable)
                    row["compiled_x"] = timed(compiled) / fused_time
                except Exception as error:  # noqa: BLE001
                    row["compiled_error"] = str(error)[:120]
            rows.append(row)
    return {"copy_bandwidth_gb_s": peak / 1e9, "rows": rows}


# ------------------------------------------------------------------------------------------ 6
def whole_step(device: torch.device, dry: bool, repeats: int) -> dict:
    """Whole training step of the small VGG with and without each method (medians)."""
    timed = _timer(device, repeats)
    built = _method_steps(device, dry)
    dense = timed(built["dense"][1])
    return {"dense_ms": dense * 1e3,
            "overhead": {method: timed(step) / dense - 1 for method, (_, step, _) in built.items()
                         if method != "dense"}}


# ------------------------------------------------------------------------------------------ out
def write(report: Report, device_name: str, out: Path, dry: bool) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps({"device": device_name, "dry_run": dry, **report.parts},
                                                   indent=1, default=str))
    lines = [f"# GPU check ({'DRY RUN on the CPU: no GPU figure below' if dry else device_name})", "",
             f"Command: `python benchmarks/gpu_check.py{' --dry-run' if dry else ''}`; torch {torch.__version__}, "
             f"{platform.machine()}.", ""]
    for name, part in report.parts.items():
        lines.append(f"- {name}: {part['status']} ({part['seconds']} s)"
                     + (f": {part.get('failures') or part.get('error', '')}" if part["status"] != "ok" else ""))
    speed_part = report.parts.get("speed", {})
    if speed_part.get("rows"):
        lines += ["", f"Copy bandwidth: {speed_part['copy_bandwidth_gb_s']:.0f} GB/s.", "",
                  "| network | op | fused | achieved/peak | others / fused |", "|---|---|---|---|---|"]
        for row in speed_part["rows"]:
            others = ", ".join(f"{key[:-2]} {value:.2f}x" for key, value in row.items() if key.endswith("_x"))
            lines.append(f"| {row['network']} | {row['op']} | {row['fused_ms']:.3f} ms | "
                         f"{row['achieved_of_peak']:.0%} | {others} |")
    step_part = report.parts.get("whole_step", {})
    if step_part.get("overhead"):
        lines += ["", f"Whole step, small VGG: dense {step_part['dense_ms']:.3f} ms; "
                  + ", ".join(f"{m} {v:+.1%}" for m, v in step_part["overhead"].items())]
    (out / "RESULTS_GPU.md").write_text("\n".join(lines) + "\n")
    statuses = " ".join(f"{name}={part['status']}" for name, part in report.parts.items())
    best = min((row["achieved_of_peak"] for row in speed_part.get("rows", [])), default=float("nan"))
    return f"gpu_check {'DRY-RUN' if dry else device_name}: {statuses}; lowest achieved/peak {best:.0%}"


def main() -> int:
    dry = ARGUMENTS.dry_run
    repeats = ARGUMENTS.repeats or (2 if dry else 50)
    report = Report()
    report.run("build", build)
    if not dry and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --dry-run on a CPU machine", file=sys.stderr)
        return 2
    device = torch.device("cuda") if not dry else torch.device("cpu")
    device_name = torch.cuda.get_device_name() if not dry else "cpu"
    from sparseticket.ops import cpu_backend

    with cpu_backend("triton") if dry else contextlib.nullcontext():
        report.run("correctness", lambda: correctness(device, dry))
        report.run("no_host_sync", lambda: no_host_sync(device, dry))
        report.run("speed", lambda: speed(device, dry, repeats))
        report.run("whole_step", lambda: whole_step(device, dry, repeats))
        # last: a graph replaying a stale address would leave a sticky CUDA error for any later part
        report.run("cuda_graphs", lambda: cuda_graphs(device, dry))
    summary = write(report, device_name, ARGUMENTS.out, dry)
    print(summary, flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
