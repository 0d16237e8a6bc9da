"""Pruning-at-initialization baselines: random, Smart Ratio, magnitude, SNIP, GraSP and SynFlow.

Each returns a ``Ticket`` whose masks are keyed by weight parameter name (every Conv/Linear
weight and ``nn.MultiheadAttention`` projection, ``weights.prunable_weights``) and keep exactly
``round(density * total)`` weights. Global methods rank scores with ``kth_value``; ties go to the
earlier layer, then the lower flat index. The input model is never modified (scores are computed on
deep copies).

Under ``torch.distributed`` the model may be wrapped in ``DistributedDataParallel`` and each rank
may pass its own part of the batch: SNIP and GraSP average their gradients (and GraSP its
Hessian-gradient product) across ranks, so the scores are those of the global batch, and every
ticket is checksummed across ranks before it is returned.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from sparseticket.methods.consistency import assert_same_on_all_ranks
from sparseticket.methods.distributed import all_reduce_mean_, unwrap
from sparseticket.methods.ticket import Ticket
from sparseticket.methods.weights import prunable_layers, weight_name
from sparseticket.methods.weights import prunable_weights as all_prunable_weights
from sparseticket.ops import kth_value

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------- shared helpers
def check_density(density: object) -> float:
    """``density`` must be a number in (0, 1]."""
    if isinstance(density, bool) or not isinstance(density, (int, float)):
        raise TypeError(f"density must be a float in (0, 1], got {type(density).__name__}")
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return float(density)


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every prunable weight of ``model`` (``weights.prunable_weights``) by parameter name, in module order."""
    return {weight.name: weight.tensor for weight in all_prunable_weights(model)}


def kept_count(density: float, total: int) -> int:
    """Number of weights a ticket at ``density`` keeps out of ``total``."""
    return round(density * total)


def top_k_masks(scores: Mapping[str, torch.Tensor], keep: int) -> dict[str, torch.Tensor]:
    """Bool masks (on CPU) keeping exactly the ``keep`` highest scores over all tensors.

    Ties at the threshold go to the earlier tensor, then to the lower flat index.
    """
    values = [score.detach().float() for score in scores.values()]
    total = sum(value.numel() for value in values)
    if not 0 <= keep <= total:
        raise ValueError(f"keep must be in [0, {total}], got {keep}")
    for name, value in zip(scores, values):
        if torch.isnan(value).any():
            raise ValueError(f"scores[{name!r}] contains NaN")
    if keep == 0:
        return {name: torch.zeros(value.shape, dtype=torch.bool) for name, value in zip(scores, values)}
    threshold = kth_value(values, total - keep)
    ties_left = keep - sum(int((value > threshold).sum()) for value in values)
    masks = {}
    for name, value in zip(scores, values):
        ties = (value == threshold).flatten()
        taken = ties & (ties.cumsum(0) <= ties_left)
        ties_left -= int(taken.sum())
        masks[name] = ((value > threshold) | taken.view_as(value)).cpu()
    return masks


def seeded_generator(seed: int | None) -> torch.Generator | None:
    """A CPU generator seeded with ``seed``, or None (torch's global RNG) when ``seed`` is None.

    The convention of every random baseline: no seed follows ``torch.manual_seed``; a seed gives
    the same draw whatever the global RNG, which it leaves untouched.
    """
    seed = checked_seed(seed)
    return None if seed is None else torch.Generator().manual_seed(seed)


def checked_seed(seed: object) -> int | None:
    """``seed`` as a plain int (numpy integers too) or None; TypeError for anything else, bools included."""
    if seed is None:
        return None
    if not isinstance(seed, bool):
        try:
            return operator.index(seed)
        except TypeError:
            pass
    raise TypeError(f"seed must be an int or None, got {type(seed).__name__} {seed!r}")


def random_mask(shape: torch.Size, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A bool mask of ``shape`` with exactly ``count`` True entries at random positions
    (drawn from ``generator``, or from torch's global RNG when it is None)."""
    flat = torch.zeros(math.prod(shape), dtype=torch.bool)
    flat[torch.randperm(flat.numel(), generator=generator)[:count]] = True
    return flat.view(shape)


def _random_ticket_from_counts(weights: Mapping[str, torch.Tensor], counts: Mapping[str, int], seed: int | None,
                               method: str, hyperparameters: dict[str, Any]) -> Ticket:
    generator = seeded_generator(seed)
    masks = {name: random_mask(weight.shape, counts[name], generator) for name, weight in weights.items()}
    return checked(Ticket(masks, method, hyperparameters))


def proportional_counts(sizes: Mapping[str, int], shares: Mapping[str, int], keep: int) -> dict[str, int]:
    """Split ``keep`` so each layer's density is proportional to its share, capped at 1.

    Layers that would exceed density 1 are filled and the rest re-scaled (water-filling, exact
    rational arithmetic); the integer counts sum to ``keep`` (largest remainder, earlier layer
    first on equal remainders).
    """
    full: set[str] = set()
    scale = Fraction(0)
    while len(full) < len(sizes):
        free = [name for name in sizes if name not in full]
        budget = keep - sum(sizes[name] for name in full)
        scale = Fraction(budget, sum(shares[name] * sizes[name] for name in free))
        saturated = [name for name in free if scale * shares[name] >= 1]
        if not saturated:
            break
        full.update(saturated)
    targets = {name: Fraction(sizes[name]) if name in full else scale * shares[name] * sizes[name]
               for name in sizes}
    counts = {name: math.floor(target) for name, target in targets.items()}
    by_remainder = sorted(sizes, key=lambda name: -(targets[name] - counts[name]))
    for name in by_remainder[:keep - sum(counts.values())]:
        counts[name] += 1
    return counts


# ----------------------------------------------------------------- random ratios
def random_ticket(model: nn.Module, density: float, *, layer_densities: Mapping[str, float] | None = None,
                  seed: int | None = None) -> Ticket:
    """Random masks: a uniform density per layer, or exactly ``round(d_l * n_l)`` per layer.

    ``seed``: the masks' own generator; None draws from torch's global RNG (``torch.manual_seed``).
    """
    density, seed = check_density(density), checked_seed(seed)
    weights = prunable_weights(model)
    sizes = {name: weight.numel() for name, weight in weights.items()}
    if layer_densities is None:
        counts = proportional_counts(sizes, dict.fromkeys(sizes, 1), kept_count(density, sum(sizes.values())))
    else:
        counts = _layer_counts(sizes, layer_densities, density)
    hyperparameters = {"density": density, "seed": seed,
                       "layer_densities": None if layer_densities is None else dict(layer_densities)}
    return _random_ticket_from_counts(weights, counts, seed, "random", hyperparameters)


def _layer_counts(sizes: Mapping[str, int], layer_densities: Mapping[str, float], density: float
                  ) -> dict[str, int]:
    if set(layer_densities) != set(sizes):
        raise ValueError(f"layer_densities must have one entry per prunable weight ({', '.join(sizes)}), "
                         f"got {', '.join(layer_densities)}")
    for name, layer_density in layer_densities.items():
        if not 0 <= layer_density <= 1:
            raise ValueError(f"layer_densities[{name!r}] must be in [0, 1], got {layer_density}")
    counts = {name: round(layer_densities[name] * size) for name, size in sizes.items()}
    if abs(sum(counts.values()) - density * sum(sizes.values())) > len(sizes):
        raise ValueError(f"density {density} does not match layer_densities "
                         f"(they keep {sum(counts.values()) / sum(sizes.values()):.6f})")
    return counts


def smart_ratio_counts(sizes: Mapping[str, int], keep: int, linear: str | None, linear_keep: float
                       ) -> dict[str, int]:
    """Smart Ratio's kept count per layer: density of layer l of L proportional to (L-l+1)^2 + (L-l+1).

    ``linear`` (the final Linear, if any) keeps ``round(linear_keep * n)`` weights, as far as
    ``keep`` allows and more only when the other layers are full.
    """
    depth = len(sizes)
    shares = {name: (depth - index + 1) ** 2 + (depth - index + 1) for index, name in enumerate(sizes, start=1)}
    if linear is None or depth == 1:
        return proportional_counts(sizes, shares, keep)
    others = {name: size for name, size in sizes.items() if name != linear}
    linear_count = max(min(round(linear_keep * sizes[linear]), keep), keep - sum(others.values()))
    counts = proportional_counts(others, shares, keep - linear_count)
    counts[linear] = linear_count
    return {name: counts[name] for name in sizes}


def smart_ratio_ticket(model: nn.Module, density: float, *, seed: int | None = None, linear_keep: float = 0.3
                       ) -> Ticket:
    """Smart Ratio (Su et al., NeurIPS 2020): quadratically decaying layer densities, random masks.

    ``seed``: the masks' own generator; None draws from torch's global RNG (``torch.manual_seed``).
    """
    density, seed = check_density(density), checked_seed(seed)
    if not 0 <= linear_keep <= 1:
        raise ValueError(f"linear_keep must be in [0, 1], got {linear_keep}")
    layers = prunable_layers(model)
    weights = prunable_weights(model)
    sizes = {name: weight.numel() for name, weight in weights.items()}
    last = next(reversed(layers))
    linear = weight_name(last) if isinstance(layers[last], nn.Linear) else None
    counts = smart_ratio_counts(sizes, kept_count(density, sum(sizes.values())), linear, linear_keep)
    hyperparameters = {"density": density, "seed": seed, "linear_keep": linear_keep}
    return _random_ticket_from_counts(weights, counts, seed, "smart_ratio", hyperparameters)


# ----------------------------------------------------------------- scored, global
def _global_ticket(scores: Mapping[str, torch.Tensor], density: float, method: str,
                   hyperparameters: dict[str, Any]) -> Ticket:
    total = sum(score.numel() for score in scores.values())
    masks = top_k_masks(scores, kept_count(density, total))
    return checked(Ticket(masks, method, {"density": density, **hyperparameters}))


def checked(ticket: Ticket) -> Ticket:
    """``ticket``, after checking that every rank found the same masks (no-op in one process)."""
    assert_same_on_all_ranks(torch.cat([mask.reshape(-1) for mask in ticket.masks.values()]),
                             f"the {ticket.method} ticket")
    return ticket


def magnitude_ticket(model: nn.Module, density: float) -> Ticket:
    """Global magnitude pruning at initialization: keep the largest |w|."""
    density = check_density(density)
    scores = {name: weight.detach().abs() for name, weight in prunable_weights(model).items()}
    return _global_ticket(scores, density, "magnitude", {})


def snip_scores(model: nn.Module, loss_fn: LossFn, batch: Batch) -> dict[str, torch.Tensor]:
    """SNIP connection sensitivity |g * w| on one batch (on a copy; the model's mode is kept)."""
    network = copy.deepcopy(unwrap(model))
    weights = prunable_weights(network)
    inputs, labels = batch
    grads = list(torch.autograd.grad(loss_fn(network(inputs), labels), list(weights.values())))
    all_reduce_mean_(grads)  # the global batch's gradient under torch.distributed
    return {name: (grad * weight).detach().abs() for (name, weight), grad in zip(weights.items(), grads)}


def snip_ticket(model: nn.Module, loss_fn: LossFn, batch: Batch, density: float) -> Ticket:
    """SNIP (Lee et al., ICLR 2019): keep the top ``density`` of |g * w| globally."""
    density = check_density(density)
    return _global_ticket(snip_scores(model, loss_fn, batch), density, "snip", {})


def grasp_scores(model: nn.Module, loss_fn: LossFn, batch: Batch, *, temperature: float = 200.0
                 ) -> dict[str, torch.Tensor]:
    """GraSP score -w * (H g) over the Conv/Linear weights, loss on logits / ``temperature``.

    H g is a Hessian-vector product by double backward: the gradient of sum(g * stop_grad(g)).
    The official code (github.com/alecwangcq/GraSP) divides the logits by T = 200.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    network = copy.deepcopy(unwrap(model))
    weights = prunable_weights(network)
    inputs, labels = batch
    loss = loss_fn(network(inputs) / temperature, labels)
    grads = torch.autograd.grad(loss, list(weights.values()), create_graph=True)
    global_grads = [grad.detach().clone() for grad in grads]
    all_reduce_mean_(global_grads)  # g of the global batch under torch.distributed
    gradient_norm = sum((grad * global_grad).sum() for grad, global_grad in zip(grads, global_grads))
    hessian_grads = list(torch.autograd.grad(gradient_norm, list(weights.values())))
    all_reduce_mean_(hessian_grads)  # H g of the global batch
    return {name: -(weight.detach() * hessian_grad)
            for (name, weight), hessian_grad in zip(weights.items(), hessian_grads)}


def grasp_ticket(model: nn.Module, loss_fn: LossFn, batch: Batch, density: float, *,
                 temperature: float = 200.0) -> Ticket:
    """GraSP (Wang et al., ICLR 2020): remove the highest -w * (H g), keep the lowest.

    Sign convention as in the paper (Eq. 8, S(-w) = -w * Hg) and its official code: a large
    score means removing the weight reduces the gradient flow least, so the weights kept are
    the ``density`` fraction with the lowest scores.
    """
    density = check_density(density)
    scores = grasp_scores(model, loss_fn, batch, temperature=temperature)
    return _global_ticket({name: -score for name, score in scores.items()}, density, "grasp",
                          {"temperature": temperature})


# ----------------------------------------------------------------- SynFlow
@torch.no_grad()
def _synflow_network(model: nn.Module) -> nn.Module:
    """A float64 copy in eval mode with every floating parameter and buffer replaced by its |.|."""
    network = copy.deepcopy(unwrap(model)).double().eval()
    for tensor in network.state_dict().values():
        if tensor.is_floating_point():
            tensor.abs_()
    return network


def _synflow_step(network: nn.Module, weights: Mapping[str, nn.Parameter], inputs: torch.Tensor
                  ) -> dict[str, torch.Tensor]:
    """|w * dR/dw| with R the sum of the network's output on ``inputs``."""
    grads = torch.autograd.grad(network(inputs).sum(), list(weights.values()))
    return {name: (grad * weight).detach().abs() for (name, weight), grad in zip(weights.items(), grads)}


def _synflow_inputs(network: nn.Module, example_input_shape: Sequence[int]) -> torch.Tensor:
    device = next(network.parameters()).device
    return torch.ones(tuple(example_input_shape), dtype=torch.float64, device=device)


def synflow_scores(model: nn.Module, example_input_shape: Sequence[int]) -> dict[str, torch.Tensor]:
    """One SynFlow scoring pass (float64): |w * dR/dw| for |w|, an all-ones input, R = sum(output)."""
    network = _synflow_network(model)
    return _synflow_step(network, prunable_weights(network), _synflow_inputs(network, example_input_shape))


def _normalized(scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Non-negative float64 scores (or -inf) over their largest, as float32 for ``top_k_masks``."""
    largest = max(float(score.clamp(min=0).max()) for score in scores.values())
    scale = largest if largest > 0 else 1.0
    return {name: (score / scale).float() for name, score in scores.items()}


def synflow_ticket(model: nn.Module, example_input_shape: Sequence[int], density: float, *,
                   iterations: int = 100) -> Ticket:
    """SynFlow (Tanaka et al., NeurIPS 2020): iterative, data-free pruning to ``density``.

    As in the official code (github.com/ganguli-lab/Synaptic-Flow): on a copy in eval mode, every
    parameter and buffer (BatchNorm's gamma, beta and running statistics too) is replaced by its
    absolute value; the input is all ones of ``example_input_shape`` (the full input shape,
    batch dimension included, e.g. ``(1, 1, 8, 8)``); at step k of ``iterations`` the global
    top ``density ** (k / iterations)`` of |w * dR/dw| is kept, with the mask applied to the
    weights. Computed in float64 to avoid the overflow of deep products; pruned weights stay pruned.
    """
    density = check_density(density)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    network = _synflow_network(model)
    weights = prunable_weights(network)
    originals = {name: weight.detach().clone() for name, weight in weights.items()}
    inputs = _synflow_inputs(network, example_input_shape)
    total = sum(weight.numel() for weight in weights.values())
    masks = {name: torch.ones(weight.shape, dtype=torch.bool) for name, weight in weights.items()}
    for step in range(1, iterations + 1):
        with torch.no_grad():
            for name, weight in weights.items():
                weight.copy_(originals[name] * masks[name].to(weight.device))
        scores = _synflow_step(network, weights, inputs)
        scores = {name: score.masked_fill(~masks[name].to(score.device), -math.inf)
                  for name, score in scores.items()}
        masks = top_k_masks(_normalized(scores), kept_count(density ** (step / iterations), total))
    return checked(Ticket(masks, "synflow", {"density": density, "iterations": iterations,
                                             "example_input_shape": list(example_input_shape)}))
