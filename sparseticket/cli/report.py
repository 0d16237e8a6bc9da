"""Run summaries: the terminal table, ``summary.md`` and the plots of a run or a comparison."""

from __future__ import annotations

from pathlib import Path

from sparseticket.cli.files import write_text


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
        rows.append(("ticket epoch", str(result.extra.get("found_epoch"))))
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


def summarize_search(result) -> str:
    """Write ``summary.md`` and the run's plots; return the table for the terminal."""
    from sparseticket.experiments import plots

    rows = _search_rows(result)
    write_text(result.run_dir / "summary.md", f"# {result.run_dir.name}\n\n{_markdown(rows)}")
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
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows) + f"\nrun folder: {result.run_dir}"


def summarize_compare(results: list, out: Path) -> str:
    """Write ``compare.md`` and the comparison plots under ``out``; return the terminal table."""
    from sparseticket.experiments import plots

    out.mkdir(parents=True, exist_ok=True)
    header = ["method", "density", "test acc", "search epochs", "fine-tune epochs", "wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_method: dict[str, list[tuple[float, float]]] = {}
    for result in results:
        ticket = result.ticket
        if ticket.masks:
            density = ticket.density()
        else:
            kept = sum(int(m.sum()) for m in ticket.channel_masks.values())
            density = kept / max(sum(m.numel() for m in ticket.channel_masks.values()), 1)
        unit = "" if ticket.masks else " (channels)"
        lines.append(f"| {result.config.method} | {density:.3f}{unit} | {result.accuracy:.3f} | "
                     f"{result.search_epochs} | {result.finetune_epochs} | {result.seconds:.1f} |")
        if ticket.masks:
            by_method.setdefault(result.config.method, []).append((density, result.accuracy))
    table = "\n".join(lines)
    write_text(out / "compare.md", f"# Comparison\n\n{table}\n")
    if by_method:
        plots.plot_accuracy_vs_density(by_method, out / "accuracy_vs_density.png")
    channel = [r for r in results if "history" in r.extra]
    if channel:
        plots.plot_mask_distances({r.config.method: r.extra["history"] for r in channel},
                                  {r.config.method: r.extra["found_epoch"] for r in channel},
                                  out / "mask_distance.png",
                                  trigger_epochs={r.config.method: r.extra.get("trigger_epoch") for r in channel})
    return table + f"\n\ntables and plots: {out}"
