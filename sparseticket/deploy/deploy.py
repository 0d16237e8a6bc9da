"""``deploy``: a ticket made into the network that runs at inference, checked and measured.

- A channel ticket (EarlyBird, WORM; transformer head/FFN tickets): the channels are removed
  physically (``sparseticket.methods.prune_model``: Torch-Pruning for BatchNorm channels,
  ``prune_transformer`` for heads and FFN neurons); slimming coefficients are folded into the weights.
  Coupled channels (both sides of a residual add) are kept if any coupled layer keeps them, so the
  ticket deployed is the coupled one (``DeployResult.ticket``), and the masked dense model is built
  from it. ``round_to=N`` keeps a multiple of N channels per layer (or all), adding the pruned channels
  of largest |gamma| (|coefficient|): a new ticket, whose masked model the check compares with.
- A weight ticket (IMP, Gem-Miner, baselines): the masks are applied, then every pruned ``nn.Linear``
  becomes the ``SparseLinear`` (CSR or BSR) that is fastest on the target, by timing there, or stays
  dense (``formats.choose_linear_formats``). Convolutions stay dense.

Either way the deployed model runs next to the masked dense model (``Ticket.apply_`` on the dense one)
on the example inputs and ``DeployMismatch`` is raised if the outputs differ by more than ``tolerance``
(``check.scaled_error``: max abs difference over max(1, max |output|)).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparseticket.deploy.check import TOLERANCE, check_models
from sparseticket.deploy.export import FORMATS, ExportReport, export_onnx, export_program
from sparseticket.deploy.formats import choose_linear_formats
from sparseticket.deploy.inputs import Inputs, to_device
from sparseticket.deploy.measure import Measures, dense_macs, latencies, memory_bytes, stored_params
from sparseticket.deploy.report import DeployReport
from sparseticket.deploy.run_folder import load_run
from sparseticket.deploy.sparse_linear import SparseLinear
from sparseticket.driver.training import accuracy
from sparseticket.methods import Ticket, prune_model

BATCH_SIZES = (1, 64)


@dataclass
class DeployResult:
    """The deployed (slim) model, the masked dense model it equals, the ticket deployed and the report."""

    model: nn.Module
    masked: nn.Module
    ticket: Ticket
    example_inputs: Inputs
    report: DeployReport

    def export(self, path: str | os.PathLike, format: str = "torch", *, tolerance: float = TOLERANCE) -> ExportReport:
        """Export the deployed model to ``path``: ``"torch"`` (``torch.export``, saved with
        ``torch.export.save``) or ``"onnx"``; checked against the masked dense model (``export``)."""
        if format not in FORMATS:
            raise ValueError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
        if format == "torch":
            return export_program(self.model, self.example_inputs, self.masked, path=path, tolerance=tolerance)[1]
        return export_onnx(self.model, self.example_inputs, Path(path), self.masked, tolerance=tolerance)


def _fold_parametrizations(model: nn.Module) -> None:
    """Bake every parametrization (slimming coefficients) into its weight, in place."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)


def _channel_deploy(model: nn.Module, ticket: Ticket, inputs: Inputs, round_to: int | None
                    ) -> tuple[nn.Module, Ticket, dict[str, tuple[int, int, int]]]:
    slim, prune_report = prune_model(model, ticket.channel_masks, inputs, measure_latency=False, round_to=round_to)
    _fold_parametrizations(slim)
    kept = prune_report.kept_channels
    deployed = Ticket({}, ticket.method, {**ticket.hyperparameters, **({"round_to": round_to} if round_to else {})},
                      channel_masks={name: mask.clone() for name, mask in kept.items()})
    channels = {name: (int(ticket.channel_masks[name].sum()), int(mask.sum()), mask.numel())
                for name, mask in kept.items()}
    return slim, deployed, channels


def _weight_macs(masked_macs: int, slim: nn.Module, layers: list, inputs: Inputs) -> int:
    """MACs the deployed model does per example: the dense count less the skipped zeros of sparse layers."""
    from sparseticket.deploy.formats import input_shapes

    sparse = {name: module for name, module in slim.named_modules() if isinstance(module, SparseLinear)}
    shapes = input_shapes(slim, inputs, sparse, (1,))
    saved = 0
    for name, module in sparse.items():
        rows = shapes[name][1].numel() // module.in_features
        saved += rows * (module.in_features * module.out_features - module.stored_values())
    return masked_macs - saved


def deploy(source: str | os.PathLike | Ticket, model: nn.Module | None = None, *, example_inputs: Inputs = None,
           round_to: int | None = None, target: str | torch.device = "cpu",
           batch_sizes: Sequence[int] = BATCH_SIZES, repeats: int = 10, formats: Sequence[str] = ("csr", "bsr"),
           measure: bool = True, tolerance: float = TOLERANCE) -> DeployResult:
    """Deploy a ticket: a run folder of ``sparseticket search``, or a ``Ticket`` with its ``model`` (weights
    as found; not changed) and ``example_inputs`` (a tensor, tuple or dict of keyword arguments).

    ``round_to``: channel tickets only, channels kept per layer a multiple of it. ``target``: the device
    the formats are timed and the model runs on. ``batch_sizes``: latencies reported (and the batch
    sizes the Linear formats are timed at). ``repeats``: timed runs per latency (medians).
    ``formats``: sparse layouts tried for Linear layers (``"csr"``, ``"bsr"``; empty: all dense).
    ``measure=False`` skips the latencies. A run folder's report also holds the test accuracy of the
    ticket as drawn and of the deployed model (what coupled channels and ``round_to`` change).
    Raises ``DeployMismatch`` if the deployed model's outputs are off the masked dense model's by more
    than ``tolerance``."""
    split = None
    if isinstance(source, Ticket):
        if model is None or example_inputs is None:
            raise ValueError("deploy(ticket, model, example_inputs=...): a Ticket needs its model and example inputs")
        ticket = source
    else:
        if model is not None:
            raise ValueError("deploy(run_folder): the run folder holds the model; pass no model")
        run = load_run(source)
        ticket, model, split = run.ticket, run.model, run.split
        example_inputs = run.example_inputs if example_inputs is None else example_inputs
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to must be an integer >= 1, got {round_to!r}")
    if not ticket.channel_masks and not ticket.masks:
        raise ValueError("the ticket holds no masks (neither channel masks nor weight masks)")
    if round_to is not None and not ticket.channel_masks:
        raise ValueError(f"round_to={round_to} applies to channel tickets (EarlyBird, WORM); this {ticket.method!r} "
                         "ticket masks single weights: it has no channel counts to round")
    if any(size < 1 for size in batch_sizes):
        raise ValueError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    device = torch.device(target)
    base = copy.deepcopy(model).to(device).eval()
    inputs = to_device(example_inputs, device)
    notes = []
    if ticket.channel_masks:
        kind = "channel"
        slim, deployed_ticket, channels = _channel_deploy(base, ticket, inputs, round_to)
        layers: list = []
        if any(kept != drawn for drawn, kept, _ in channels.values()):
            notes.append("some layers keep more channels than the ticket drew (coupled channels"
                         + (f", round_to {round_to}" if round_to else "") + "): the check uses the masks kept")
    else:
        kind, deployed_ticket, channels = "weight", ticket, {}
    masked = deployed_ticket.apply_(copy.deepcopy(base)).eval()
    masked_macs = dense_macs(masked, inputs)
    if kind == "weight":
        slim = copy.deepcopy(masked)
        layers = choose_linear_formats(slim, inputs, list(batch_sizes), formats=formats)
        if any(layer.kind == "conv" for layer in layers):
            notes.append("convolutions stay dense: torch.sparse has no sparse convolution of dense inputs")
        deployed_macs = _weight_macs(masked_macs, slim, layers, inputs)
    else:
        deployed_macs = dense_macs(slim, inputs)
    error = check_models(slim, masked, inputs, "the deployed model", tolerance)
    sizes = list(batch_sizes) if measure else []
    dense_measures = Measures(stored_params(masked), masked_macs, memory_bytes(masked),
                              latencies(masked, inputs, sizes, repeats=repeats))
    deployed_measures = Measures(stored_params(slim), deployed_macs, memory_bytes(slim),
                                 latencies(slim, inputs, sizes, repeats=repeats))
    report = DeployReport(kind, ticket.method, str(device), round_to, dense_measures, deployed_measures, error,
                          layers, channels, notes)
    if split is not None:  # a run folder: what the deployed masks (coupled, rounded) change in test accuracy
        drawn = ticket.apply_(copy.deepcopy(base)).eval()
        report.accuracy_drawn = accuracy(drawn, split.test_loader())
        report.accuracy_deployed = accuracy(slim, split.test_loader())
    return DeployResult(slim.eval(), masked, deployed_ticket, inputs, report)
