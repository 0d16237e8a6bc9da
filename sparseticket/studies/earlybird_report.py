"""EarlyBird vs WORM on digits with the small VGG: epochs to ticket, accuracy around pruning.

``python -m sparseticket.studies.earlybird_report --seeds 0 1 2 3 4`` prints one row per
method and seed (same seeds and data order for both methods) and the mean per method.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

from sparseticket.builtin.data import Split, load_digits_split
from sparseticket.builtin.models import vgg_small
from sparseticket.driver.data import TrainingData
from sparseticket.driver.recipe import Schedule
from sparseticket.driver.search import TicketSearch


@dataclass
class TicketRun:
    """What one search + prune + fine-tune run measured."""

    method: str
    seed: int
    found_epoch: int | None
    trigger_epoch: int | None
    dense_accuracy: float
    pruned_accuracy: float
    finetuned_accuracy: float
    params_ratio: float
    macs_ratio: float
    seconds: float


def report_data(data: Split, seed: int) -> TrainingData:
    """Batches of 64: search epoch e shuffled by seed ``1000 s + e``, fine-tuning epoch e by ``1000 s + 500 + e``."""
    def batches(phase: str, epoch: int):
        return data.train_loader(seed=seed * 1000 + (500 if phase == "finetune" else 0) + epoch)

    return TrainingData(data, batches, len(data.train_loader()))


def run_once(method: str, data: Split, seed: int, *, width: int = 16, max_epochs: int = 40,
             finetune_epochs: int = 5) -> TicketRun:
    """Search a ticket with ``method`` ("earlybird" or "worm") through the driver, prune it
    physically, fine-tune it; measure each stage."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    schedule = Schedule(epochs=max_epochs, lr=0.05, lr_schedule="constant", finetune_epochs=finetune_epochs,
                        finetune_lr=0.01)
    result = TicketSearch(method, vgg_small(width=width), report_data(data, seed), schedule).run()
    search_rows = [row for row in result.rows if row["phase"] == "search"]
    report = result.extra["prune_report"]
    return TicketRun(
        method=method, seed=seed, found_epoch=result.extra["found_epoch"],
        trigger_epoch=result.extra["trigger_epoch"], dense_accuracy=search_rows[-1]["test_accuracy"],
        pruned_accuracy=result.extra["at_pruning"]["accuracy_at_pruning"], finetuned_accuracy=result.accuracy,
        params_ratio=report.params_after / report.params_before,
        macs_ratio=report.macs_after / report.macs_before, seconds=time.perf_counter() - start,
    )


def _row(values: list[str]) -> str:
    return "| " + " | ".join(values) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds to run")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    data = load_digits_split()
    header = ["method", "seed", "ticket epoch", "trigger epoch", "dense acc", "acc after prune",
              "acc after 5-epoch fine-tune", "params kept", "MACs kept", "seconds"]
    print(_row(header))
    print(_row(["---"] * len(header)))
    runs: dict[str, list[TicketRun]] = {}
    for seed in arguments.seeds:
        for method in ("earlybird", "worm"):
            run = run_once(method, data, seed)
            runs.setdefault(run.method, []).append(run)
            print(_row([run.method, str(run.seed), str(run.found_epoch), str(run.trigger_epoch or "-"),
                        f"{run.dense_accuracy:.3f}", f"{run.pruned_accuracy:.3f}",
                        f"{run.finetuned_accuracy:.3f}", f"{run.params_ratio:.2f}", f"{run.macs_ratio:.2f}",
                        f"{run.seconds:.1f}"]), flush=True)
    for method, method_runs in runs.items():
        found = [r.found_epoch for r in method_runs if r.found_epoch is not None]
        print(f"{method}: mean ticket epoch {statistics.mean(found):.1f} ({len(found)}/{len(method_runs)} found), "
              f"mean acc after prune {statistics.mean(r.pruned_accuracy for r in method_runs):.3f}, "
              f"after fine-tune {statistics.mean(r.finetuned_accuracy for r in method_runs):.3f}")


if __name__ == "__main__":
    main()
