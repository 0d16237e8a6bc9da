"""GemMiner's per-layer score Parameters over one flat buffer: gradients land in their slices (on the
C++ autograd path, the Python path over the Triton or reference kernels and under torch.compile),
accumulate correctly, cost memory in proportion to the scores (not layers x scores), survive
optimizers' zero_grad, and old checkpoints with one flat scores Parameter still load."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from sparseticket.methods.gemminer import GemMiner
from sparseticket.ops import cpu_backend

PATHS = ["cpp", "triton", "reference", "compiled"]  # triton: the autograd.Function over the Triton kernels


def mlp(layers: int, width: int = 16, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(layers)])


def expected_flat_gradient(model: nn.Sequential, miner: GemMiner, x: torch.Tensor, loss_of) -> torch.Tensor:
    """Gem-Miner's straight-through gradient by plain autograd on the same MLP: effective weight
    w * (hard mask + q * (p - p.detach())), whose gradient in p is grad * w * q."""
    scores = miner.scores.detach().clone().requires_grad_(True)
    out = x
    for name, module in miner.layers.items():
        weight = module.parametrizations.weight.original.detach()
        part = miner.slices[f"{name}.weight"]
        layer_scores, flags = scores[part].view(weight.shape), miner.flags[part].view(weight.shape)
        hard = ((layer_scores.detach() > 0.5) & flags).float()
        effective = weight * (hard + flags * (layer_scores - layer_scores.detach()))
        out = torch.relu(nn.functional.linear(out, effective, module.bias))
    loss_of(out).backward()
    return scores.grad


def backend_for(path: str):
    return cpu_backend("cpp" if path == "compiled" else path)


@pytest.mark.parametrize("path", PATHS)
def test_flat_gradient_matches_plain_autograd(path):
    model = mlp(3)
    miner = GemMiner(model, density=0.5, epochs=6, seed=1)
    miner.flags[::7] = False
    x = torch.randn(5, 16)
    network = torch.compile(model, backend="aot_eager") if path == "compiled" else model
    with backend_for(path):
        network(x).square().sum().backward()
        got = miner.gradient().clone()
    want = expected_flat_gradient(model, miner, x, lambda out: out.square().sum())
    torch.testing.assert_close(got, want)
    assert torch.equal(miner.scores.grad, got)  # gm.scores.grad is the flat gradient


@pytest.mark.parametrize("path", ["cpp", "triton", "reference"])
def test_gradient_goes_straight_into_the_flat_buffer(path):
    """Eager paths: each layer's .grad is its slice of the flat gradient, no copy at step()."""
    model = mlp(3)
    miner = GemMiner(model, density=0.5, epochs=6, seed=1)
    with backend_for(path):
        model(torch.randn(4, 16)).sum().backward()
    flat = miner.scores.grad
    for name, module in miner.layers.items():
        layer_grad = module.parametrizations.weight[0].scores.grad
        part = miner.slices[f"{name}.weight"]
        assert layer_grad.data_ptr() == flat[part].data_ptr()


@pytest.mark.parametrize("path", PATHS)
def test_two_backwards_and_a_layer_used_twice_accumulate(path):
    """Gradient accumulation over two backwards, and one graph that uses every layer twice."""
    x1, x2 = torch.randn(4, 16), torch.randn(4, 16)
    results = {}
    for way in ("single", "accumulated", "twice_in_one_graph"):
        model = mlp(2)
        miner = GemMiner(model, density=0.5, epochs=6, seed=2)
        network = torch.compile(model, backend="aot_eager") if path == "compiled" else model
        with backend_for(path):
            if way == "single":
                network(x1).sum().backward()
                first = miner.gradient().clone()
                miner.zero_grad()
                network(x2).square().sum().backward()
                results[way] = first + miner.gradient()
            elif way == "accumulated":
                network(x1).sum().backward()
                network(x2).square().sum().backward()
                results[way] = miner.gradient().clone()
            else:
                (network(x1).sum() + network(x2).square().sum()).backward()
                results[way] = miner.gradient().clone()
    torch.testing.assert_close(results["accumulated"], results["single"])
    torch.testing.assert_close(results["twice_in_one_graph"], results["single"])


@pytest.mark.parametrize("set_to_none", [True, False])
def test_an_optimizer_zero_grad_over_the_model_keeps_steps_right(set_to_none):
    """A user's zero_grad() over model.parameters() (the per-layer scores are among them)."""
    x = torch.randn(4, 16)
    runs = []
    for with_optimizer in (False, True):
        model = mlp(2)
        miner = GemMiner(model, density=0.5, epochs=6, seed=3)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
        for _ in range(3):
            if with_optimizer:
                optimizer.zero_grad(set_to_none=set_to_none)
            model(x).square().sum().backward()
            miner.step()
        runs.append(miner.scores.detach().clone())
    assert torch.equal(runs[0], runs[1])


def test_no_backward_raises():
    model = mlp(2)
    miner = GemMiner(model, density=0.5, epochs=6)
    with pytest.raises(RuntimeError, match="no score gradient"):
        miner.step()
    model(torch.randn(2, 16)).sum().backward()
    miner.step()
    with pytest.raises(RuntimeError, match="no score gradient"):
        miner.step()  # the gradient was used by the previous step


def test_kept_masked_weight_is_not_overwritten_by_the_next_forward():
    """The C++ path reuses a layer's masked-weight memory only when nothing else holds it."""
    model = mlp(1)
    miner = GemMiner(model, density=0.5, epochs=6, seed=4)
    layer = model[0][0]
    first = layer.weight.detach()  # a caller keeps the masked weight
    snapshot = first.clone()
    with torch.no_grad():
        miner.scores.copy_(1 - miner.scores)
    second = layer.weight
    assert torch.equal(first, snapshot)
    assert not torch.equal(second.detach(), snapshot)


def allocated_bytes_in_one_step(layers: int) -> tuple[int, int]:
    """(bytes allocated during one warm mining step, number of scores), from the profiler."""
    model = mlp(layers, width=128)
    miner = GemMiner(model, density=0.5, epochs=6, seed=0)
    x = torch.randn(4, 128)

    def step() -> None:
        model(x).sum().backward()
        miner.step()

    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    allocated = sum(max(event.self_cpu_memory_usage, 0) for event in prof.events())
    assert allocated > 0, "the profiler recorded no allocation: the measurement is broken"
    return allocated, miner.scores.numel()


def test_step_memory_traffic_is_linear_in_the_scores():
    """Bytes allocated per step, per score, stay flat from 2 to 32 layers (a layers x scores
    zero-fill, as a slice of one flat Parameter per layer costs, would grow 16-fold)."""
    small, small_scores = allocated_bytes_in_one_step(2)
    large, large_scores = allocated_bytes_in_one_step(32)
    assert large_scores == 16 * small_scores
    # at most the weight gradient of each layer's matmul plus activations: ~4 bytes a score
    assert large <= 8 * large_scores, (large, large_scores)
    assert large / large_scores <= 1.5 * small / small_scores + 1, (large, small)


def test_a_checkpoint_with_one_flat_scores_parameter_still_loads():
    """Model states saved before per-layer scores held one flat Parameter on the first layer."""
    model = mlp(3)
    miner = GemMiner(model, density=0.5, epochs=6, seed=5)
    state = model.state_dict()
    legacy = {key: value for key, value in state.items() if not key.endswith(".scores")}
    legacy["0.0.parametrizations.weight.0.scores"] = miner.scores.detach().clone()
    fresh = mlp(3, seed=9)
    fresh_miner = GemMiner(fresh, density=0.5, epochs=6, seed=6)
    fresh.load_state_dict(legacy)
    assert torch.equal(fresh_miner.scores.detach(), miner.scores.detach())
    for key, value in state.items():
        assert torch.equal(fresh.state_dict()[key], value)
    wrong = dict(legacy)
    wrong["0.0.parametrizations.weight.0.scores"] = torch.rand(miner.scores.numel() + 1)
    with pytest.raises(ValueError, match="flat scores .* not the same model"):
        GemMiner(mlp(3), density=0.5, epochs=6).model.load_state_dict(wrong)


def test_cpp_masked_weight_op_checks_its_arguments():
    op = torch.ops.sparseticket_cpu.gemminer_masked_weight
    weight, scores = torch.randn(4, 3), torch.rand(4, 3)
    flags, slot = torch.ones(4, 3, dtype=torch.bool), torch.zeros(4, 3)
    claimed, weight_slot = torch.zeros(1, dtype=torch.uint8), torch.empty(4, 3)
    torch.testing.assert_close(op(weight, scores, flags, slot, claimed, weight_slot), weight * (scores > 0.5))
    with pytest.raises(TypeError, match="weight must be float32/float16/bfloat16"):
        op(weight.long(), scores, flags, slot, claimed, weight_slot)
    with pytest.raises(TypeError, match="flags must be bool"):
        op(weight, scores, flags.float(), slot, claimed, weight_slot)
    with pytest.raises(ValueError, match="must have weight's shape"):
        op(weight, scores[:2], flags, slot, claimed, weight_slot)
    with pytest.raises(TypeError, match="claimed must be one uint8"):
        op(weight, scores, flags, slot, torch.zeros(2, dtype=torch.uint8), weight_slot)


def test_another_optimizer_on_the_flat_scores_with_project():
    """Adam on gm.scores, then gm.project_() (clamp + clear), equals Adam on the plain-autograd gradient."""
    x = torch.randn(4, 16)
    model = mlp(2)
    miner = GemMiner(model, density=0.5, epochs=6, seed=7)
    optimizer = torch.optim.Adam([miner.scores], lr=0.01)
    twin_scores = miner.scores.detach().clone().requires_grad_(True)
    twin_optimizer = torch.optim.Adam([twin_scores], lr=0.01)
    for _ in range(3):
        with torch.no_grad():
            miner.scores.copy_(twin_scores)
        want = expected_flat_gradient(model, miner, x, lambda out: out.square().sum())
        model(x).square().sum().backward()
        optimizer.step()
        miner.project_()
        twin_scores.grad = want
        twin_optimizer.step()
        with torch.no_grad():
            twin_scores.clamp_(0, 1)
        torch.testing.assert_close(miner.scores.detach(), twin_scores.detach())


@pytest.mark.parametrize("bucket_view", [False, True])
def test_ddp_gradients_reach_the_flat_buffer(tmp_path, bucket_view):
    """Under DistributedDataParallel (one gloo rank; bucket views on or off) the per-layer score
    gradients DDP writes back land in gm.scores.grad, and steps match the bare model's."""
    import datetime

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from sparseticket.methods.teardown import end_distributed

    x = torch.randn(4, 16)
    bare_model = mlp(2)
    bare = GemMiner(bare_model, density=0.5, epochs=6, seed=8)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        model = mlp(2)
        miner = GemMiner(model, density=0.5, epochs=6, seed=8)
        network = DistributedDataParallel(model, gradient_as_bucket_view=bucket_view)
        for _ in range(3):
            bare_model(x).square().sum().backward()
            network(x).square().sum().backward()
            torch.testing.assert_close(miner.gradient(), bare.gradient())
            bare.step()
            miner.step()
            torch.testing.assert_close(miner.scores.detach(), bare.scores.detach())
    finally:
        end_distributed(finished=False)
