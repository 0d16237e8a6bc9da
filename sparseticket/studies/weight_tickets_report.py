"""Weight tickets on digits with the small VGG: Gem-Miner, IMP (with and without rewinding),
random, Smart Ratio and SNIP at the same densities and seeds; sanity checks; instability.

``python -m sparseticket.studies.weight_tickets_report --seeds 0 1`` prints markdown tables.
Every search runs through the driver (``sparseticket.driver``) with one recipe: SGD lr 0.05
(constant), momentum 0.9, wd 1e-4, batches of 64; every ticket is fine-tuned from the initial weights
with SGD lr 0.01 for ``--epochs`` epochs, except IMP, whose training after the last rewind is its
fine-tuning (open_lth's last level).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from sparseticket.builtin.data import Split, load_digits_split
from sparseticket.builtin.models import vgg_small
from sparseticket.driver.data import TrainingData
from sparseticket.driver.recipe import Schedule
from sparseticket.driver.search import TicketResult, TicketSearch
from sparseticket.driver.training import accuracy, train_epoch
from sparseticket.methods import Ticket, error_barrier, sanity_checks

DENSITIES = (0.2, 0.05, 0.014)
WIDTH = 16


def fresh_model(seed: int) -> nn.Module:
    """The small VGG with the run's initialization."""
    torch.manual_seed(seed)
    return vgg_small(width=WIDTH)


def report_data(data: Split, seed: int) -> TrainingData:
    """Batches of 64: search epoch e shuffled by seed ``1000 s + e``, fine-tuning epoch e by ``1000 s + 700 + e``."""
    def batches(phase: str, epoch: int):
        return data.train_loader(seed=seed * 1000 + (700 if phase == "finetune" else 0) + epoch)

    def scoring_batch(size: int):
        return next(iter(data.train_loader(batch_size=size, seed=seed)))

    return TrainingData(data, batches, len(data.train_loader()), scoring_batch)


def search(method: str, data: Split, run_seed: int, epochs: int, *, round_epochs: int = 10,
           imp_last_round: bool = False, **options: Any) -> TicketResult:
    """One driver run of ``method`` on run ``run_seed``'s initialization and data order (``epochs``:
    search and fine-tuning); ``options``: the method's own."""
    schedule = Schedule(epochs=epochs, lr=0.05, lr_schedule="constant", round_epochs=round_epochs,
                        finetune_epochs=epochs, finetune_lr=0.01, imp_last_round=imp_last_round)
    return TicketSearch(method, fresh_model(run_seed), report_data(data, run_seed), schedule,
                        options=options).run()


def finetune(model: nn.Module, ticket: Ticket, data: Split, epochs: int, seed: int) -> float:
    """Apply a given ticket to ``model`` (its initial weights), train with masked gradients, test accuracy."""
    ticket.apply_(model)
    hook = ticket.gradient_mask(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    for epoch in range(epochs):
        train_epoch(model, data.train_loader(seed=seed * 1000 + 700 + epoch), optimizer, after_backward=hook)
    return accuracy(model, data.test_loader())


def imp_levels(result: TicketResult, densities: tuple[float, ...], round_epochs: int
               ) -> dict[float, tuple[float, float, float]]:
    """Per target density: (accuracy, density, epochs spent) of the IMP level closest to it (every
    round's end, and the last level after its training)."""
    rounds = [row for row in result.rows if "round_test_accuracy" in row]
    levels = [(row["round_test_accuracy"], row["trained_density"]) for row in rounds]
    levels.append((result.accuracy, result.ticket.density()))
    per_epoch = result.extra["steps_per_epoch"]
    later = round_epochs - result.job.rewind_at / per_epoch  # epochs of a round after the first
    picked = {}
    for density in densities:
        index = min(range(len(levels)), key=lambda i: abs(levels[i][1] - density))
        picked[density] = (*levels[index], round_epochs + index * later)
    return picked


def barrier_from(data: Split, seed: int, start_epochs: int, epochs: int) -> float:
    """Train a dense model ``start_epochs`` epochs, then two copies with different data orders; barrier."""
    model = fresh_model(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(start_epochs):
        train_epoch(model, data.train_loader(seed=seed * 1000 + epoch), optimizer)
    copies = []
    for order in (1, 2):
        twin = copy.deepcopy(model)
        twin_optimizer = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
        twin_optimizer.load_state_dict(optimizer.state_dict())
        for epoch in range(epochs):
            train_epoch(twin, data.train_loader(seed=order * 7919 + epoch), twin_optimizer)
        copies.append(twin)
    return error_barrier(copies[0], copies[1], data.test_loader(), points=30).barrier


def timed(function: Callable[[], object]) -> tuple[object, float]:
    """Result and wall seconds."""
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds (same for every method)")
    parser.add_argument("--epochs", type=int, default=20, help="Gem-Miner mining epochs = fine-tuning epochs")
    parser.add_argument("--imp-epochs", type=int, default=10, help="IMP training epochs per round")
    parser.add_argument("--imp-rewind-step", type=int, default=10, help="IMP rewinding step k (iterations)")
    parser.add_argument("--gemminer-lr", type=float, default=10.0,
                        help="score learning rate (the paper's 0.1 barely moves scores in the few hundred "
                             "steps digits offers)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    data = load_digits_split()
    epochs = arguments.epochs
    rows: dict[tuple[str, float], list[tuple[float, float, float]]] = {}

    def record(method: str, density: float, acc: float, epochs_used: float, seconds: float) -> None:
        rows.setdefault((method, density), []).append((acc, epochs_used, seconds))
        print(f"  {method:<16} density {density:<6} acc {acc:.3f}  epochs {epochs_used:>5.0f}  {seconds:6.1f}s",
              flush=True)

    sanity: dict[str, list[float]] = {}
    barriers: dict[str, list[float]] = {}
    for seed in arguments.seeds:
        print(f"seed {seed}", flush=True)
        for density in DENSITIES:
            mined = search("gemminer", data, seed, epochs, density=density, lr=arguments.gemminer_lr, seed=seed)
            record("Gem-Miner", density, mined.accuracy, 2 * epochs, mined.seconds)
            if density == 0.05:
                # another seed: re-initializing with the run's own seed would give back the same weights
                for name, (variant, model) in sanity_checks(mined.ticket, fresh_model(seed),
                                                            scores=mined.ticket.scores, seed=seed + 10_000).items():
                    sanity.setdefault(name, []).append(finetune(model, variant, data, epochs, seed))
            for label, method, options in (("random", "random", {"seed": seed}),
                                           ("Smart Ratio", "smart_ratio", {"seed": seed}), ("SNIP", "snip", {})):
                result = search(method, data, seed, epochs, density=density, **options)
                record(label, density, result.accuracy, epochs, result.seconds)
        for label, rewind in (("IMP (k=0)", 0), (f"IMP (k={arguments.imp_rewind_step})", arguments.imp_rewind_step)):
            result, seconds = timed(lambda rewind=rewind, seed=seed: search(
                "imp", data, seed, epochs, round_epochs=arguments.imp_epochs, imp_last_round=True,
                density=min(DENSITIES), rewind_step=rewind))
            for density, (acc, reached, epochs_used) in imp_levels(result, DENSITIES, arguments.imp_epochs).items():
                record(f"{label} @{reached:.3f}", density, acc, epochs_used, seconds)
        for label, start in (("k = 0", 0), ("k = 1 epoch", 1)):
            barriers.setdefault(label, []).append(barrier_from(data, seed, start, 5))

    print("\n| method | density | test acc (mean over seeds) | epochs | wall s (all densities share IMP's run) |")
    print("|---|---|---|---|---|")
    for (method, density), values in rows.items():
        print(f"| {method} | {density} | {statistics.mean(v[0] for v in values):.3f} | "
              f"{statistics.mean(v[1] for v in values):.0f} | {statistics.mean(v[2] for v in values):.1f} |")
    print("\nGem-Miner at 5%, sanity checks (test acc after the same fine-tuning):")
    for name, values in sanity.items():
        print(f"  {name:<14} {statistics.mean(values):.3f}")
    print("\nError barrier between two copies trained 5 epochs with different data orders:")
    for label, values in barriers.items():
        print(f"  from {label:<12} {statistics.mean(values):.3f}  ({', '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
