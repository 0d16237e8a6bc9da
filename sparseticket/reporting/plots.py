"""PNG plots of ticket-search runs: mask distances per epoch, accuracy vs density (error bars over seeds),
found epochs over seeds, per-layer densities.

Needs matplotlib (imported lazily, Agg canvas; no pyplot state). Each function writes its PNG atomically
(``sparseticket.files.atomic_write``) and returns the path.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sparseticket.files import atomic_write

STOP_COLOR = "tab:red"
TRIGGER_COLOR = "tab:green"


def plot_mask_distances(histories: Mapping[str, Sequence[Sequence[float]]], stop_epochs: Mapping[str, int | None],
                        path: str | Path, trigger_epochs: Mapping[str, int | None] | None = None, *,
                        eps: float | None = None, title: str = "Mask distance to the queue per epoch") -> Path:
    """One subplot per method: max and mean distance of the newest mask to the queue (``eb.history``) per epoch.
    A method without any distance yet (a search of one epoch: its first mask has nothing to compare
    with) gets an empty subplot that says so."""
    if not histories:
        raise ValueError("histories must map at least one method to its history (a list per epoch)")
    trigger_epochs = trigger_epochs or {}
    figure = new_figure(figsize=(5.0 * len(histories), 4.0))
    from matplotlib.ticker import MaxNLocator

    axes = figure.subplots(1, len(histories), squeeze=False, sharey=True)[0]
    for axis, (method, history) in zip(axes, histories.items()):
        epochs = range(1, len(history) + 1)
        axis.plot(epochs, [max(d) if d else math.nan for d in history], "o-", label="max distance")
        axis.plot(epochs, [sum(d) / len(d) if d else math.nan for d in history], "s--", label="mean distance")
        if eps is not None:
            axis.axhline(eps, color="gray", linestyle=":", label=f"eps = {eps:g}")
        if trigger_epochs.get(method) is not None:
            axis.axvline(trigger_epochs[method], color=TRIGGER_COLOR, linestyle="-.",
                         label=f"trigger (epoch {trigger_epochs[method]})")
        if stop_epochs.get(method) is not None:
            axis.axvline(stop_epochs[method], color=STOP_COLOR, label=f"ticket drawn (epoch {stop_epochs[method]})")
        if not any(len(distances) for distances in history):
            axis.text(0.5, 0.5, f"no mask distance yet:\n{len(history)} epoch(s), nothing to compare with",
                      transform=axis.transAxes, ha="center", va="center")
        marked = [epoch for epoch in (stop_epochs.get(method), trigger_epochs.get(method)) if epoch is not None]
        axis.set_xlim(0.5, max([len(history), 1, *marked]) + 0.5)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(method if stop_epochs.get(method) is not None else f"{method} (no ticket drawn)")
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    axes[0].set_ylabel("normalised Hamming distance")
    axes[0].set_ylim(bottom=0)
    figure.suptitle(title)
    return save_figure(figure, path)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # one symbol per method: lines that overlap stay apart


def plot_accuracy_vs_density(results: Mapping[str, Sequence[tuple[float, ...]]], path: str | Path, *,
                             title: str = "Test accuracy vs density",
                             xlabel: str = "density (% of weights kept, log scale)") -> Path:
    """One line per method: test accuracy (fraction in [0, 1]) against density (fraction in (0, 1], log x-axis).

    A point is ``(density, accuracy)`` or ``(density, accuracy, std)``: the third value (std over seeds,
    a fraction; None or 0 for one seed) is drawn as an error bar.
    """
    if not results or any(not points for points in results.values()):
        raise ValueError("results must map at least one method to at least one (density, accuracy) point")
    for method, points in results.items():
        if any(len(point) not in (2, 3) for point in points):
            raise ValueError(f"{method}: points must be (density, accuracy) or (density, accuracy, std), got {points}")
        if any(not 0 < point[0] <= 1 or not 0 <= point[1] <= 1 for point in points):
            raise ValueError(f"{method}: densities must be fractions in (0, 1] and accuracies in [0, 1], got {points}")
        if any(len(point) == 3 and point[2] is not None and not 0 <= point[2] < math.inf for point in points):
            raise ValueError(f"{method}: std must be a finite fraction >= 0 or None, got {points}")
    figure = new_figure(figsize=(6.5, 4.5))
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    axis = figure.subplots()
    for (method, points), marker in zip(results.items(), itertools.cycle(MARKERS)):
        ordered = sorted(points, key=lambda point: point[0], reverse=True)
        densities = [100 * point[0] for point in ordered]
        accuracies = [100 * point[1] for point in ordered]
        errors = [100 * (point[2] or 0.0) if len(point) == 3 else 0.0 for point in ordered]
        if any(errors):
            axis.errorbar(densities, accuracies, yerr=errors, fmt=f"{marker}-", capsize=4,
                          label=f"{method} (mean ± std)")
        else:
            axis.plot(densities, accuracies, f"{marker}-", label=method)
    axis.set_xscale("log")
    values = [100 * point[0] for points in results.values() for point in points]
    lowest, highest = min(values), max(values)
    # at least a factor 2 either side of the data, so that nearby densities (5.00024% and 5.00025%)
    # share a point instead of spreading over the width, and labelled ticks fall inside the view
    axis.set_xlim(min(100.0, highest * 2), lowest / 2)  # dense on the left, sparse on the right
    axis.xaxis.set_major_locator(FixedLocator(_one_two_five(lowest / 2)))
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}%"))
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.set_xlabel(xlabel)
    axis.set_ylabel("test accuracy (%)")
    axis.set_ylim(top=min(axis.get_ylim()[1], 101))
    axis.set_title(title)
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    return save_figure(figure, path)


def plot_found_epochs(epochs: Mapping[str, Sequence[float]], path: str | Path, *, full_queue: int | None = None,
                      title: str = "Epoch the ticket was drawn") -> Path:
    """One bar per method: mean epoch the ticket was drawn, std over seeds as an error bar, each seed a dot.

    ``full_queue`` (the first epoch the queue is full, the earliest possible ticket) is drawn as a line.
    """
    if not epochs or any(not values for values in epochs.values()):
        raise ValueError("epochs must map at least one method to at least one found epoch")
    if any(not 0 < value < math.inf for values in epochs.values() for value in values):
        raise ValueError(f"found epochs must be positive finite numbers, got {dict(epochs)}")
    figure = new_figure(figsize=(1.8 + 1.6 * len(epochs), 4.0))
    axis = figure.subplots()
    for index, values in enumerate(epochs.values()):
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        axis.bar(index, mean, yerr=std, capsize=6, color="tab:blue", alpha=0.5)
        spread = [index + 0.25 * (k / max(len(values) - 1, 1) - 0.5) for k in range(len(values))]
        axis.plot(spread, list(values), "o", color="black", markersize=4)
    if full_queue is not None:
        axis.axhline(full_queue, color="gray", linestyle=":", label=f"first full queue (epoch {full_queue})")
        axis.legend(fontsize="small")
    axis.set_xticks(range(len(epochs)), [f"{method}\n(n = {len(values)})" for method, values in epochs.items()])
    axis.set_ylabel("epoch (mean ± std; dots: seeds)")
    axis.set_ylim(bottom=0)
    axis.set_title(title)
    axis.grid(alpha=0.3, axis="y")
    return save_figure(figure, path)


def plot_layer_densities(densities: Mapping[str, float], path: str | Path, title: str) -> Path:
    """Horizontal bars: density (fraction in [0, 1], shown in %) of each layer, in the given order."""
    if not densities:
        raise ValueError("densities must name at least one layer")
    if any(not 0 <= density <= 1 for density in densities.values()):
        raise ValueError(f"densities must be fractions in [0, 1], got {dict(densities)}")
    names, values = list(densities), [100 * density for density in densities.values()]
    figure = new_figure(figsize=(7.0, 1.5 + 0.3 * len(names)))
    axis = figure.subplots()
    bars = axis.barh(range(len(names)), values, color="tab:blue")
    axis.bar_label(bars, labels=[f"{value:.1f}%" for value in values], padding=3, fontsize="small")
    axis.set_yticks(range(len(names)), names, fontsize="small")
    axis.invert_yaxis()  # first layer on top
    axis.set_xlim(0, 112)
    axis.set_xlabel("density (% of weights kept)")
    axis.set_ylabel("layer")
    axis.set_title(title)
    axis.grid(alpha=0.3, axis="x")
    return save_figure(figure, path)


def _one_two_five(lowest: float) -> list[float]:
    """Tick values 100, 50, 20, 10, 5, 2, 1, 0.5, ... reaching ``lowest`` or below."""
    ticks = [100.0]
    exponent = 1
    while ticks[-1] > lowest:
        ticks += [round(mantissa * 10.0 ** exponent, 12) for mantissa in (5, 2, 1)]
        exponent -= 1
    return ticks


def new_figure(figsize: tuple[float, float]) -> Any:
    """A matplotlib Figure on an Agg canvas, with constrained layout; a clear ImportError without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"sparseticket plots need matplotlib: pip install 'matplotlib>=3.6' ({error})") from error

    figure = Figure(figsize=figsize, dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Any, path: str | Path) -> Path:
    """Write the figure as a PNG to ``path``, atomically and flushed to disk; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda temporary: figure.savefig(temporary, format="png"))
