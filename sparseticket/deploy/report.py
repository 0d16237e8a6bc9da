"""``DeployReport``: what deploying a ticket bought, as a table and as JSON-ready data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sparseticket.deploy.formats import LayerFormat
from sparseticket.deploy.measure import Measures


def _fmt(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.3f}"


@dataclass
class DeployReport:
    """Dense vs deployed costs, the equality check's error, and what happened to each layer."""

    kind: str  # "channel" or "weight"
    method: str
    target: str
    round_to: int | None
    dense: Measures
    deployed: Measures
    error: float  # max |deployed - masked dense| / max(1, max |masked dense output|) on the example
    layers: list[LayerFormat] = field(default_factory=list)  # weight tickets: each Linear's / Conv's format
    channels: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # BN: (ticket kept, kept, width)
    notes: list[str] = field(default_factory=list)
    # run folders: test accuracy of the masked dense model with the ticket as drawn, and of the deployed
    # model (the masks kept: coupled channels, round_to); None for a Ticket deployed without data
    accuracy_drawn: float | None = None
    accuracy_deployed: float | None = None

    def rows(self) -> list[tuple[str, float, float]]:
        """(label, dense, deployed) for each measure."""
        rows = [("params", self.dense.params, self.deployed.params), ("MACs / example", self.dense.macs,
                self.deployed.macs), ("memory (bytes)", self.dense.memory_bytes, self.deployed.memory_bytes)]
        rows += [(f"latency batch {size} (ms)", self.dense.latency_ms[size], self.deployed.latency_ms.get(size,
                 float("nan"))) for size in self.dense.latency_ms]
        return rows

    def table(self) -> str:
        """A Markdown table of dense vs deployed, then the per-layer formats and notes."""
        lines = [f"{self.method or 'ticket'} ({self.kind} ticket) on {self.target}"
                 + (f", round_to {self.round_to}" if self.round_to else ""),
                 "", "| | dense | deployed | deployed/dense |", "|---|---:|---:|---:|"]
        for label, dense, deployed in self.rows():
            ratio = deployed / dense if dense else float("nan")
            lines.append(f"| {label} | {_fmt(dense)} | {_fmt(deployed)} | {ratio:.3f} |")
        lines += ["", f"outputs vs the masked dense model: max |difference| / max(1, max |output|) = {self.error:.2g}"]
        if self.accuracy_drawn is not None and self.accuracy_deployed is not None:
            lines.append(f"test accuracy: {self.accuracy_drawn:.4f} with the ticket as drawn, "
                         f"{self.accuracy_deployed:.4f} deployed ({self.accuracy_deployed - self.accuracy_drawn:+.4f})")
        if self.layers:
            lines += ["", "| layer | kind | shape | density | format | timed (time / dense) |",
                      "|---|---|---|---:|---|---|"]
            for layer in self.layers:
                timed = ", ".join(f"{key} {value:.2f}" for key, value in layer.scores.items()) or layer.note
                lines.append(f"| {layer.name} | {layer.kind} | {'x'.join(map(str, layer.shape))} | "
                             f"{layer.density:.3f} | {layer.format} | {timed} |")
        if self.channels:
            kept = sum(value[1] for value in self.channels.values())
            total = sum(value[2] for value in self.channels.values())
            lines += ["", f"channels kept: {kept}/{total} in {len(self.channels)} layers"]
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain data (JSON-ready)."""
        data = asdict(self)
        data["dense"]["latency_ms"] = {str(k): v for k, v in self.dense.latency_ms.items()}
        data["deployed"]["latency_ms"] = {str(k): v for k, v in self.deployed.latency_ms.items()}
        return data
