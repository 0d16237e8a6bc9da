"""Weight tickets on digits with the small VGG: Gem-Miner, IMP (with and without rewinding),
random, Smart Ratio and SNIP at the same densities and seeds; sanity checks; instability.

``python -m sparseticket.experiments.weight_tickets_report --seeds 0 1`` prints markdown tables.
Every ticket is trained with the same fine-tuning recipe (SGD lr 0.01, momentum 0.9, wd 1e-4,
``--finetune-epochs``) from the initial weights, except IMP, whose retraining after each rewind
is its fine-tuning.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from sparseticket.experiments.data import Split, load_digits_split
from sparseticket.experiments.models import vgg_small
from sparseticket.experiments.training import accuracy, train_epoch
from sparseticket.methods import (
    IMP,
    GemMiner,
    Ticket,
    error_barrier,
    random_ticket,
    sanity_checks,
    smart_ratio_ticket,
    snip_ticket,
)

DENSITIES = (0.2, 0.05, 0.014)
WIDTH = 16


def fresh_model(seed: int) -> nn.Module:
    """The small VGG with the run's initialization."""
    torch.manual_seed(seed)
    return vgg_small(width=WIDTH)


def finetune(model: nn.Module, ticket: Ticket, data: Split, epochs: int, seed: int) -> float:
    """Apply the ticket to ``model`` (its initial weights), train with masked gradients, test accuracy."""
    ticket.apply_(model)
    hook = ticket.gradient_mask(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    for epoch in range(epochs):
        train_epoch(model, data.train_loader(seed=seed * 1000 + 700 + epoch), optimizer, after_backward=hook)
    return accuracy(model, data.test_loader())


def mine_gemminer(data: Split, seed: int, density: float, epochs: int, lr: float) -> Ticket:
    """Gem-Miner: mine scores for ``epochs`` epochs; the ticket holds the flags at ``density``."""
    model = fresh_model(seed)
    miner = GemMiner(model, density=density, epochs=epochs, lr=lr, seed=seed)
    for epoch in range(1, epochs + 1):
        model.train()
        for images, labels in data.train_loader(batch_size=32, seed=seed * 1000 + epoch):
            nn.functional.cross_entropy(model(images), labels).backward()
            miner.step()
        miner.epoch_end(epoch)
    return miner.ticket()


def _steps(data: Split, seed: int, start: int, stop: int):
    """Batches number ``start`` .. ``stop - 1`` of the run's fixed data order (rewinding restores it)."""
    epoch, step = 0, 0
    while step < stop:
        for batch in data.train_loader(seed=seed * 1000 + epoch):
            if start <= step < stop:
                yield batch
            step += 1
            if step >= stop:
                return
        epoch += 1


def imp_run(data: Split, seed: int, epochs_per_round: int, rewind_step: int,
            densities: tuple[float, ...]) -> dict[float, tuple[float, float, int]]:
    """IMP: train, prune 20%, rewind to ``rewind_step``, repeat; per target density the accuracy
    and density of the round closest to it, and the epochs spent up to that round."""
    model = fresh_model(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    imp = IMP(model, rewind_step=rewind_step)
    total_steps = epochs_per_round * len(data.train_loader())
    rounds = max(round(torch.log(torch.tensor(d)).item() / torch.log(torch.tensor(0.8)).item()) for d in densities)
    results: dict[int, tuple[float, float]] = {}
    start = 0
    if rewind_step == 0:
        imp.capture(optimizer)
    for round_index in range(rounds + 1):
        for step, (images, labels) in enumerate(_steps(data, seed, start, total_steps), start=start):
            if round_index == 0 and rewind_step and step == rewind_step:
                imp.capture(optimizer)
            model.train()
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()
            imp.after_backward()
            optimizer.step()
            imp.after_step()
        results[round_index] = (accuracy(model, data.test_loader()), imp.density)
        if round_index < rounds:
            imp.prune_round()
            imp.rewind()
            start = rewind_step
    picked = {}
    for density in densities:
        round_index = min(results, key=lambda r: abs(results[r][1] - density))
        epochs_used = epochs_per_round + round_index * (total_steps - rewind_step) / len(data.train_loader())
        picked[density] = (results[round_index][0], results[round_index][1], round(epochs_used))
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
        print(f"  {method:<16} density {density:<6} acc {acc:.3f}  epochs {epochs_used:>5.0f}  {seconds:6.1f}s", flush=True)

    sanity: dict[str, list[float]] = {}
    barriers: dict[str, list[float]] = {}
    for seed in arguments.seeds:
        print(f"seed {seed}", flush=True)
        for density in DENSITIES:
            ticket, seconds = timed(lambda: mine_gemminer(data, seed, density, epochs, arguments.gemminer_lr))
            acc, tune_seconds = timed(lambda: finetune(fresh_model(seed), ticket, data, epochs, seed))
            record("Gem-Miner", density, acc, 2 * epochs, seconds + tune_seconds)
            if density == 0.05:
                # another seed: re-initializing with the run's own seed would give back the same weights
                for name, (variant, model) in sanity_checks(ticket, fresh_model(seed), scores=ticket.scores,
                                                            seed=seed + 10_000).items():
                    sanity.setdefault(name, []).append(finetune(model, variant, data, epochs, seed))
            batch = next(iter(data.train_loader(batch_size=256, seed=seed)))
            for name, make in (
                ("random", lambda: random_ticket(fresh_model(seed), density, seed=seed)),
                ("Smart Ratio", lambda: smart_ratio_ticket(fresh_model(seed), density, seed=seed)),
                ("SNIP", lambda: snip_ticket(fresh_model(seed), nn.functional.cross_entropy, batch, density)),
            ):
                ticket, seconds = timed(make)
                acc, tune_seconds = timed(lambda: finetune(fresh_model(seed), ticket, data, epochs, seed))
                record(name, density, acc, epochs, seconds + tune_seconds)
        for label, rewind in (("IMP (k=0)", 0), (f"IMP (k={arguments.imp_rewind_step})", arguments.imp_rewind_step)):
            picked, seconds = timed(lambda: imp_run(data, seed, arguments.imp_epochs, rewind, DENSITIES))
            for density, (acc, reached, epochs_used) in picked.items():
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
