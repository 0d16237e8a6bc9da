"""Run summaries: the terminal table, ``summary.md`` and the plots of a run; ``compare.md`` and the plots
of a comparison over seeds (mean ± std, 95% intervals, paired significance tests)."""

from __future__ import annotations

import math
from pathlib import Path

from sparseticket.cli.files import write_text
from sparseticket.driver.config import is_channel_method


def _search_rows(result) -> list[tuple[str, str]]:
    ticket = result.ticket
    rows = [("method", result.config.method), ("model / data", f"{result.config.model} / {result.config.data}"),
            ("seed", str(result.config.seed)), ("search epochs", str(result.search_epochs)),
            ("fine-tune epochs", str(result.finetune_epochs)), ("test accuracy", f"{result.accuracy:.4f}"),
            ("wall time", f"{result.seconds:.1f} s")]
    if ticket.masks:
        rows.append(("weight density", f"{ticket.density():.4f}"))
    if ticket.channel_masks:
        kept = sum(int(mask.sum()) for mask in ticket.channel_masks.values())
        total = sum(mask.numel() for mask in ticket.channel_masks.values())
        rows.append(("channels kept", f"{kept}/{total}"))
        found = result.extra.get("found_epoch")
        rows.append(("ticket epoch", str(found) if found is not None else
                     f"none: the masks never settled within eps; the ticket is the mask of the last epoch "
                     f"({result.search_epochs})"))
        if result.extra.get("trigger_epoch") is not None:
            rows.append(("WORM trigger epoch", str(result.extra["trigger_epoch"])))
    report = result.extra.get("prune_report")
    if report is not None:
        rows += [("params before → after", f"{report.params_before:,} → {report.params_after:,}"),
                 ("MACs before → after", f"{report.macs_before:,} → {report.macs_after:,}"),
                 ("CPU latency before → after", f"{report.latency_ms_before:.2f} → {report.latency_ms_after:.2f} ms")]
    return rows


def _markdown(rows: list[tuple[str, str]]) -> str:
    return "| | |\n|---|---|\n" + "\n".join(f"| {key} | {value} |" for key, value in rows) + "\n"


def summarize_search(result, *, write: bool = True) -> str:
    """Write ``summary.md`` and the run's plots (unless ``write`` is False); return the table for the terminal."""
    from sparseticket.reporting import plots

    rows = _search_rows(result)
    width = max(len(key) for key, _ in rows)
    table = "\n".join(f"{key:<{width}}  {value}" for key, value in rows) + f"\nrun folder: {result.run_dir}"
    if not write:
        return table
    if result.ticket.masks:
        plots.plot_layer_densities(result.ticket.density_per_layer(), result.run_dir / "layer_density.png",
                                   f"{result.config.method}: density per layer")
    if result.ticket.channel_masks:
        densities = {name: float(mask.float().mean()) for name, mask in result.ticket.channel_masks.items()}
        plots.plot_layer_densities(densities, result.run_dir / "layer_density.png",
                                   f"{result.config.method}: channels kept per layer")
    if "history" in result.extra:
        name = result.config.method
        plots.plot_mask_distances({name: result.extra["history"]}, {name: result.extra["found_epoch"]},
                                  result.run_dir / "mask_distance.png",
                                  trigger_epochs={name: result.extra.get("trigger_epoch")})
    # last: a summary.md on disk means the run folder is complete (cli.search.finished_run)
    write_text(result.run_dir / "summary.md", f"# {result.run_dir.name}\n\n{_markdown(rows)}")
    return table


# ------------------------------------------------------------------ comparisons over seeds
Group = tuple[str, float | None]  # (method, target density; None for the channel methods)
_ACCURACY_DIGITS, _EPOCH_DIGITS = 3, 1


def _group(result) -> Group:
    """The table row a run belongs to: its method and (weight methods) its target density."""
    return result.config.method, None if is_channel_method(result.config.method) else result.config.density


def _real_density(result) -> float:
    """Fraction of weights (or, channel tickets, of channels) the ticket keeps."""
    return result.ticket.density()


def _pruning_accuracies(result) -> dict[str, float]:
    """Accuracy-at-pruning figures of a channel search (row keys naming both 'prun' and 'acc'), taken at
    the epoch the ticket was drawn, else from the last search row that has them."""
    search_rows = [row for row in result.rows if row.get("phase") == "search"]
    found = result.extra.get("found_epoch")
    ordered = [row for row in search_rows if row.get("epoch") == found] + search_rows[::-1]
    figures: dict[str, float] = {}
    for key in dict.fromkeys(key for row in search_rows for key in row):
        if "prun" not in key or "acc" not in key:
            continue
        for row in ordered:
            value = row.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                figures[key.replace("_", " ")] = float(value)
                break
    return figures


def _measures(result) -> dict[str, float | None]:
    """The per-seed figures a comparison summarises (None where a run has no such figure)."""
    finetune_rows = [row for row in result.rows if row.get("phase") == "finetune"]
    distorted = finetune_rows[-1].get("test_accuracy_distorted") if finetune_rows else None
    channel = is_channel_method(result.config.method)
    found = result.extra.get("found_epoch") if channel else None
    measures = {"test acc": result.accuracy,
                "distorted acc": distorted if isinstance(distorted, (int, float)) else None,
                "search epochs": result.search_epochs,
                "found epoch": found if isinstance(found, int) else None,
                **_pruning_accuracies(result),
                "wall s": result.seconds if math.isfinite(result.seconds) else None}
    return {key: None if value is None else float(value) for key, value in measures.items()}


def _cell(values: list[float], digits: int, interval: bool) -> str:
    """One table cell: the value for one seed, ``mean ± std [95% CI]`` for several."""
    from sparseticket.reporting.stats import format_summary, summary

    if not values:
        return "–"
    if len(values) == 1 and digits == _EPOCH_DIGITS and float(values[0]).is_integer():
        return str(int(values[0]))
    return format_summary(summary(values), digits, interval)


def _digits(measure: str) -> tuple[int, bool]:
    """Decimals and whether the 95% interval is shown, per measure."""
    return (_ACCURACY_DIGITS, True) if "acc" in measure else (_EPOCH_DIGITS, False)


def _table(groups: dict[Group, list], columns: list[str], several: bool) -> str:
    shown = [column for column in columns if column != "wall s"] + ["fine-tune epochs"] + ["wall s"] * (
        "wall s" in columns)
    header = ["method", "density", *(["seeds"] if several else []), *shown]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (method, _), runs in groups.items():
        density = sum(_real_density(run) for run in runs) / len(runs)
        unit = "" if runs[0].ticket.masks else " (channels)"
        cells = [method, f"{density:.3f}{unit}", *([str(len(runs))] if several else [])]
        for column in shown:
            if column == "fine-tune epochs":
                cells.append(str(runs[0].finetune_epochs))
                continue
            values = [m[column] for m in (_measures(run) for run in runs) if m.get(column) is not None]
            cell = _cell(values, *_digits(column))
            if column == "found epoch" and is_channel_method(method) and len(values) < len(runs):
                cell += f" ({len(values)}/{len(runs)} drew)"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _compared_pairs(groups: dict[Group, list], columns: list[str]) -> list[tuple[Group, Group, list[str]]]:
    """The pairs the papers compare, present in ``groups``, with the measures they are compared on."""
    accuracies = [column for column in columns if "acc" in column]
    pairs = []
    if ("worm", None) in groups and ("earlybird", None) in groups:
        pairs.append((("worm", None), ("earlybird", None), ["found epoch", *accuracies]))
    for density in sorted({density for _, density in groups if density is not None}, reverse=True):
        if ("gemminer", density) in groups and ("imp", density) in groups:
            pairs.append((("gemminer", density), ("imp", density),
                          [*accuracies, "search epochs", "wall s"]))
        if ("imp", density) in groups and ("random", density) in groups:
            pairs.append((("imp", density), ("random", density), accuracies))
    return pairs


def _paired_values(first: list, second: list, measure: str) -> tuple[list[float], list[float]]:
    """The two groups' values of ``measure`` on the seeds both have it for, in seed order."""
    by_seed = [{run.config.seed: _measures(run).get(measure) for run in runs} for runs in (first, second)]
    seeds = sorted(seed for seed in by_seed[0] if by_seed[0][seed] is not None and by_seed[1].get(seed) is not None)
    return [by_seed[0][seed] for seed in seeds], [by_seed[1][seed] for seed in seeds]


def _label(group: Group) -> str:
    return group[0] if group[1] is None else f"{group[0]} @ {group[1]:g}"


def _significance(groups: dict[Group, list], columns: list[str]) -> str:
    """Markdown: for each pair the papers compare, the paired difference, its p-value and the verdict."""
    from sparseticket.reporting.stats import ALPHA, format_summary, paired_test

    pairs = _compared_pairs(groups, columns)
    lines = ["## Significance", "",
             "Differences are the first method minus the second, paired by seed (a seed fixes the "
             "initialization and the data order); n counts the seeds both runs have the figure for. "
             f"Two-sided paired t-test; significant when p < {ALPHA:g}.", ""]
    if not pairs:
        return "\n".join(lines + ["No pair the papers compare is in this comparison "
                                  "(WORM vs EarlyBird, Gem-Miner vs IMP, IMP vs random)."])
    lines += ["| comparison | measure | n | difference: mean ± std [95% CI] | p | significant at 0.05 |",
              "|---|---|---|---|---|---|"]
    for first, second, measures in pairs:
        for measure in measures:
            a, b = _paired_values(groups[first], groups[second], measure)
            if not a and measure not in ("found epoch", "test acc"):
                continue  # a figure neither run reports
            test = paired_test(a, b)
            digits = _digits(measure)[0]
            verdict = f"n/a: {test.reason}" if test.p_value is None else ("yes" if test.significant else "no")
            p_value = "n/a" if test.p_value is None else f"{test.p_value:.3g}"
            lines.append(f"| {_label(first)} vs {_label(second)} | {measure} | {test.n} | "
                         f"{format_summary(test.difference, digits)} | {p_value} | {verdict} |")
    return "\n".join(lines)


def _trigger_section(groups: dict[Group, list]) -> str:
    """Markdown: when WORM's trigger fired on each seed, against the first epoch the queue is full."""
    runs = groups.get(("worm", None))
    if not runs:
        return ""
    config = runs[0].config
    lines = ["## What WORM's trigger did", "",
             f"The trigger (mean queue distance < {config.trigger:g}) can first fire when the queue of "
             f"{config.queue} masks is full, at epoch {config.queue}; from then on the gradients of the static "
             f"channels are scaled by {config.chi:g}.", "",
             "| seed | trigger epoch | found epoch | epochs trained with truncation before the ticket |",
             "|---|---|---|---|"]
    first_full = later = never = 0
    for run in sorted(runs, key=lambda run: run.config.seed):
        trigger, found = run.extra.get("trigger_epoch"), run.extra.get("found_epoch")
        first_full += trigger == config.queue
        later += trigger is not None and trigger != config.queue
        never += trigger is None
        truncated = found - trigger if trigger is not None and found is not None else "–"
        lines.append(f"| {run.config.seed} | {'never' if trigger is None else trigger} | "
                     f"{'none drawn' if found is None else found} | {truncated} |")
    lines += ["", f"The trigger fired at the first full queue (epoch {config.queue}) in {first_full} of {len(runs)} "
                  f"seeds, later in {later}, never in {never}."
                  + (" Firing at the first full queue means the 0.15 threshold never held truncation back: "
                     "WORM truncated from the earliest epoch it could." if first_full == len(runs) else "")]
    return "\n".join(lines)


def _compare_plots(groups: dict[Group, list], out: Path) -> None:
    """accuracy_vs_density.png (error bars: std over seeds), found_epoch.png, mask_distance.png (first seed)."""
    from sparseticket.reporting import plots
    from sparseticket.reporting.stats import summary

    by_method: dict[str, list[tuple[float, float, float | None]]] = {}
    found: dict[str, list[float]] = {}
    channel = []
    for (method, density), runs in groups.items():
        if density is not None and runs[0].ticket.masks:
            accuracy = summary([run.accuracy for run in runs])
            by_method.setdefault(method, []).append((density, accuracy.mean, accuracy.std))  # the target
        epochs = [float(run.extra["found_epoch"]) for run in runs if isinstance(run.extra.get("found_epoch"), int)]
        if epochs:
            found[method] = epochs
        first = min(runs, key=lambda run: run.config.seed)
        if "history" in first.extra:
            channel.append(first)
    if by_method:
        several = any(len(runs) > 1 for runs in groups.values())
        title = "Test accuracy vs density" + (" (mean ± std over seeds)" if several else "")
        plots.plot_accuracy_vs_density(by_method, out / "accuracy_vs_density.png", title=title,
                                       xlabel="target density (% of weights kept, log scale)")
    if found:
        queue = next(runs[0].config.queue for (method, _), runs in groups.items() if method in found)
        plots.plot_found_epochs(found, out / "found_epoch.png", full_queue=queue)
    if channel:
        label = {run.config.method: f"{run.config.method} (seed {run.config.seed})" for run in channel}
        plots.plot_mask_distances({label[r.config.method]: r.extra["history"] for r in channel},
                                  {label[r.config.method]: r.extra["found_epoch"] for r in channel},
                                  out / "mask_distance.png",
                                  trigger_epochs={label[r.config.method]: r.extra.get("trigger_epoch")
                                                  for r in channel})


def summarize_compare(results: list, out: Path) -> str:
    """Write ``compare.md`` (one row per method and density, mean ± std [95% CI] over seeds, the paired
    significance tests, what WORM's trigger did) and the comparison plots under ``out``; return the
    terminal table."""
    if not results:
        raise ValueError("results must hold at least one finished run to compare")
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[Group, list] = {}
    for result in results:
        groups.setdefault(_group(result), []).append(result)
    for runs in groups.values():
        runs.sort(key=lambda run: run.config.seed)
    seeds = sorted({result.config.seed for result in results})
    several = any(len(runs) > 1 for runs in groups.values())
    present = {key for result in results for key, value in _measures(result).items() if value is not None}
    if any(is_channel_method(method) for method, _ in groups):
        present.add("found epoch")  # shown even when no seed drew a ticket ("0/n drew")
    columns = [key for key in dict.fromkeys(k for result in results for k in _measures(result)) if key in present]
    table = _table(groups, columns, several)
    significance = _significance(groups, columns) if several else (
        "## Significance\n\nn/a: needs >= 2 seeds (e.g. --seeds 0 1 2 3 4).")
    header = (f"Seeds: {' '.join(map(str, seeds))} (n = {len(seeds)}); cells are mean ± std (ddof 1) "
              "[Student-t 95% interval of the mean] over seeds." if several else f"Seed: {seeds[0]}.")
    sections = [f"# Comparison\n\n{header}\n\n{table}", significance, _trigger_section(groups)]
    write_text(out / "compare.md", "\n\n".join(section for section in sections if section) + "\n")
    _compare_plots(groups, out)
    shown = [table, significance] if several else [table]
    return "\n\n".join(shown) + f"\n\ntables and plots: {out}"
