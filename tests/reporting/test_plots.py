"""The plots write valid, readable PNGs atomically and reject empty inputs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from sparseticket.reporting.plots import (  # noqa: E402
    plot_accuracy_vs_density,
    plot_layer_densities,
    plot_mask_distances,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HISTORY = [[], [0.3], [0.2, 0.25], [0.1, 0.05, 0.08], [0.04, 0.02, 0.0]]


def assert_png(path: Path) -> None:
    """A PNG by its signature that matplotlib reads back as a non-empty image; no temp file left beside it."""
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert os.listdir(path.parent) == [path.name]


def test_mask_distances(tmp_path) -> None:
    path = plot_mask_distances({"EarlyBird": HISTORY, "WORM": HISTORY[:4]}, {"EarlyBird": 5, "WORM": None},
                               tmp_path / "distances.png", trigger_epochs={"WORM": 3}, eps=0.1)
    assert path == tmp_path / "distances.png"
    assert_png(path)


def test_mask_distances_single_method_replaces_file(tmp_path) -> None:
    path = tmp_path / "distances.png"
    path.write_bytes(b"old")
    assert plot_mask_distances({"EarlyBird": HISTORY}, {}, str(path)) == path
    assert_png(path)


def test_accuracy_vs_density(tmp_path) -> None:
    results = {"IMP": [(1.0, 0.97), (0.2, 0.95), (0.05, 0.8)], "random": [(0.01, 0.1)]}
    assert_png(plot_accuracy_vs_density(results, tmp_path / "accuracy.png"))


def _drawn_axis(monkeypatch, draw) -> object:
    """The matplotlib Axes a plot function saved (its figure is captured as it is written)."""
    from sparseticket.reporting import plots

    saved = []
    real = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: saved.append(figure) or real(figure, path))
    draw()
    (figure,) = saved
    (axis,) = figure.axes
    return axis


def test_nearby_densities_share_a_point_on_a_labelled_axis(tmp_path, monkeypatch) -> None:
    """Issue 26: IMP at 0.0500246 and random at 0.0500241 were spread over the whole log axis,
    which had no tick labels. The view spans at least a factor 2 either side, with labelled ticks."""
    results = {"imp": [(0.0500246, 0.97, 0.01)], "random": [(0.0500241, 0.90, 0.02)]}
    axis = _drawn_axis(monkeypatch, lambda: plot_accuracy_vs_density(results, tmp_path / "accuracy.png"))
    left, right = axis.get_xlim()
    assert left >= 2 * 5.00246 * 0.999 and right <= 5.00241 / 2 * 1.001  # dense on the left
    visible = [tick for tick in axis.get_xticks() if right <= tick <= left]
    labels = [axis.xaxis.get_major_formatter()(tick, 0) for tick in visible]
    assert {"5%", "10%"} <= set(labels), labels
    markers = {container.get_label(): container.lines[0].get_marker() for container in axis.containers}
    assert set(markers) == {"imp (mean ± std)", "random (mean ± std)"}
    assert len(set(markers.values())) == 2  # a different symbol per method


def test_accuracy_single_dense_point(tmp_path) -> None:
    assert_png(plot_accuracy_vs_density({"dense": [(1.0, 0.97)]}, tmp_path / "accuracy.png"))


def test_layer_densities(tmp_path) -> None:
    path = plot_layer_densities({"0.weight": 0.8, "3.weight": 0.1, "fc.weight": 1.0}, tmp_path / "sub" / "layers.png",
                                "IMP ticket")
    assert_png(path)


@pytest.mark.parametrize("history", [[], [[]]])
def test_a_search_without_distances_plots_what_exists(history, tmp_path) -> None:
    """A one-epoch search has no mask distance yet (the first mask has nothing to compare with): the
    plot is still written, with an empty panel saying so (a run of --epochs 1 once failed here)."""
    path = plot_mask_distances({"EarlyBird": history, "WORM": HISTORY[:3]}, {"EarlyBird": None}, tmp_path / "m.png")
    assert_png(path)


@pytest.mark.parametrize("call", [
    lambda path: plot_mask_distances({}, {}, path),
    lambda path: plot_accuracy_vs_density({}, path),
    lambda path: plot_accuracy_vs_density({"IMP": []}, path),
    lambda path: plot_layer_densities({}, path, "empty"),
])
def test_empty_inputs_raise(call, tmp_path) -> None:
    with pytest.raises(ValueError):
        call(tmp_path / "plot.png")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("call", [
    lambda path: plot_accuracy_vs_density({"IMP": [(20.0, 0.9)]}, path),
    lambda path: plot_accuracy_vs_density({"IMP": [(0.2, 90.0)]}, path),
    lambda path: plot_layer_densities({"fc": 1.5}, path, "percent by mistake"),
])
def test_fractions_required(call, tmp_path) -> None:
    with pytest.raises(ValueError, match="fractions"):
        call(tmp_path / "plot.png")


def test_failed_save_leaves_no_temp_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", fail)
    with pytest.raises(OSError, match="disk full"):
        plot_layer_densities({"fc": 0.5}, tmp_path / "layers.png", "t")
    assert not os.listdir(tmp_path)


def test_without_matplotlib(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install 'matplotlib>=3.6'"):
        plot_layer_densities({"fc": 0.5}, tmp_path / "layers.png", "t")
