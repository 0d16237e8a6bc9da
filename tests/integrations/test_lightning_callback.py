"""``SparseTicketCallback`` inside ``lightning.pytorch.Trainer.fit`` against hand-written loops.

The reference for every fit is a plain PyTorch loop over the same batches that calls the
method's hooks where the module docstring of ``sparseticket.integrations.lightning`` says
Lightning calls them: same seeds and data give the same masks, distances, scores and weights.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from functools import cache

import pytest

pytest.importorskip("lightning")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.plugins import MixedPrecision  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from sparseticket.integrations.lightning import SparseTicketCallback  # noqa: E402
from sparseticket.methods import IMP, EarlyBird, GemMiner, Ticket  # noqa: E402

SAMPLES, BATCH = 384, 64  # 6 batches an epoch
EB_SETTINGS = {"ratio": 0.5, "l1": 1e-3, "queue": 3, "eps": 0.05}


@cache
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The first SAMPLES digits, flattened to 64 features in [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (torch.tensor(data.data[:SAMPLES], dtype=torch.float32) / 16.0,
            torch.tensor(data.target[:SAMPLES], dtype=torch.int64))


def loader() -> DataLoader:
    return DataLoader(TensorDataset(*digits()), batch_size=BATCH, shuffle=False)


def make_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.Linear(32, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


def sgd(params) -> torch.optim.SGD:
    return torch.optim.SGD([p for p in params if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=5e-4)


class Lit(pl.LightningModule):
    """``optimizer``: "sgd" (over the trainable parameters), None, or an optimizer object to reuse."""

    def __init__(self, net: nn.Module, optimizer: object = "sgd", inf_batches: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.net = net
        self.optimizer = optimizer
        self.inf_batches = inf_batches
        self.grads_at_step: list[list[torch.Tensor | None]] = []

    def training_step(self, batch, batch_idx):
        images, labels = batch
        loss = nn.functional.cross_entropy(self.net(images), labels)
        return loss * float("inf") if batch_idx in self.inf_batches else loss

    def on_before_optimizer_step(self, optimizer) -> None:  # after the callbacks' hook
        self.grads_at_step.append([p.grad for group in optimizer.param_groups for p in group["params"]])

    def configure_optimizers(self):
        return sgd(self.parameters()) if self.optimizer == "sgd" else self.optimizer


def make_trainer(root, **settings) -> pl.Trainer:
    options = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
               "enable_model_summary": False, "enable_checkpointing": False, "default_root_dir": root}
    return pl.Trainer(**{**options, **settings})


def hand_loop(net: nn.Module, method, epochs: int, *, optimizer=None, accumulate: int = 1, stop: bool = True,
              hooks_per_micro_batch: bool = False, autocast: torch.dtype | None = None) -> None:
    """The reference: the loop Lightning runs, written out (loss / accumulate per micro-batch)."""
    optimizer = sgd(net.parameters()) if optimizer is None else optimizer
    net.train()
    for _ in range(epochs):
        for index, (images, labels) in enumerate(loader()):
            with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                loss = nn.functional.cross_entropy(net(images), labels)
            (loss / accumulate).backward()
            if hooks_per_micro_batch:
                method.after_backward()
            if (index + 1) % accumulate == 0:
                if not hooks_per_micro_batch:
                    method.after_backward()
                optimizer.step()
                method.after_step()
                optimizer.zero_grad()
        if method.epoch_end() and stop:
            return


def count_calls(method, *names: str) -> dict[str, int]:
    """Wrap ``method``'s hooks (instance attributes) to count their calls."""
    counts = dict.fromkeys(names, 0)
    for name in names:
        original = getattr(method, name)

        def counted(*args, _name=name, _original=original):
            counts[_name] += 1
            return _original(*args)

        setattr(method, name, counted)
    return counts


def assert_same_weights(actual: nn.Module, expected: nn.Module) -> None:
    for (name, a), b in zip(actual.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.fixture(scope="module")
def reference_earlybird() -> tuple[EarlyBird, nn.Module]:
    net = make_net()
    eb = EarlyBird(net, **EB_SETTINGS)
    hand_loop(net, eb, 12)
    assert eb.found_epoch is not None and eb.found_epoch < 12
    return eb, net


# ----------------------------------------------------------------- EarlyBird
def test_earlybird_fit_matches_hand_written_loop_and_stops_at_the_draw(tmp_path, reference_earlybird):
    expected, expected_net = reference_earlybird
    net = make_net()
    eb = EarlyBird(net, **EB_SETTINGS)
    callback = SparseTicketCallback(eb)
    trainer = make_trainer(tmp_path, max_epochs=12, callbacks=[callback])
    trainer.fit(Lit(net), loader())
    assert eb.found_epoch == expected.found_epoch == eb.epoch == trainer.current_epoch  # stopped there
    assert eb.history == expected.history
    for name, mask in expected.channel_mask().items():
        assert torch.equal(eb.channel_mask()[name], mask), name
    assert_same_weights(net, expected_net)
    ticket = Ticket.load(tmp_path / "ticket.safetensors")
    assert callback.saved_path == os.path.join(tmp_path, "ticket.safetensors")
    assert ticket.method == "earlybird" and ticket.hyperparameters["found_epoch"] == expected.found_epoch
    assert ticket.channel_masks.keys() == expected.channel_mask().keys()
    assert all(torch.equal(ticket.channel_masks[n], m) for n, m in expected.channel_mask().items())
    metrics = trainer.callback_metrics
    assert metrics["sparseticket/epoch"].item() == metrics["sparseticket/found_epoch"].item() == eb.found_epoch
    assert metrics["sparseticket/drawn"].item() == 1.0


def test_training_on_after_the_draw_keeps_the_drawn_ticket(tmp_path, reference_earlybird):
    expected, _ = reference_earlybird
    found = expected.found_epoch
    net = make_net()
    eb = EarlyBird(net, **EB_SETTINGS)
    path = tmp_path / "sub" / "eb.safetensors"  # absolute, in a folder made on the way
    trainer = make_trainer(tmp_path / "root", max_epochs=found + 2,
                           callbacks=[SparseTicketCallback(eb, stop_when_drawn=False, ticket_path=path)])
    trainer.fit(Lit(net), loader())
    assert trainer.current_epoch == eb.epoch == found + 2 and eb.found_epoch == found
    ticket = Ticket.load(path)
    assert ticket.hyperparameters["epochs"] == found  # written at the draw, not overwritten at the end
    assert all(torch.equal(ticket.channel_masks[n], m) for n, m in expected.channel_mask().items())
    assert not (tmp_path / "root" / "ticket.safetensors").exists()
    # a fit that starts with the ticket drawn and stop_when_drawn stops before any step
    again = make_trainer(tmp_path, max_epochs=found + 10, callbacks=[SparseTicketCallback(eb)])
    again.fit(Lit(net), loader())
    assert again.global_step == 0 and eb.epoch == found + 2


def test_gradient_accumulation_runs_the_hooks_once_per_optimizer_step(tmp_path):
    settings = {**EB_SETTINGS, "l1": 1e-2}  # large: an L1 term added twice shows in the weights
    net = make_net()
    eb = EarlyBird(net, **settings)
    counts = count_calls(eb, "after_backward", "after_step")
    trainer = make_trainer(tmp_path, max_epochs=2, accumulate_grad_batches=2,
                           callbacks=[SparseTicketCallback(eb, stop_when_drawn=False, ticket_path=None)])
    trainer.fit(Lit(net), loader())
    assert trainer.global_step == 6  # 2 epochs x 6 batches / 2
    assert counts == {"after_backward": 6, "after_step": 6}
    reference, wrong = make_net(), make_net()
    hand_loop(reference, EarlyBird(reference, **settings), 2, accumulate=2, stop=False)
    hand_loop(wrong, EarlyBird(wrong, **settings), 2, accumulate=2, stop=False, hooks_per_micro_batch=True)
    assert_same_weights(net, reference)
    assert not torch.equal(net[1].weight, wrong[1].weight)  # the comparison does see a doubled L1 term
    assert not list(tmp_path.glob("*.safetensors"))  # ticket_path=None writes nothing


# ----------------------------------------------------------------- IMP
def test_imp_pruned_weights_stay_exactly_zero_across_fits(tmp_path):
    def run(with_callback: bool) -> tuple[nn.Module, IMP, dict[str, int]]:
        net = make_net()
        module = Lit(net)
        module.optimizer = sgd(net.parameters())  # one optimizer over both fits: momentum carries over
        imp = IMP(net, rate=0.5)
        counts = count_calls(imp, "after_backward", "after_step")
        callbacks = [SparseTicketCallback(imp, ticket_path="imp.safetensors")] if with_callback else []
        make_trainer(tmp_path, max_epochs=1, callbacks=callbacks).fit(module, loader())  # dense epoch
        imp.prune_round()  # the round between fits is the user's
        callbacks = [SparseTicketCallback(imp, ticket_path="imp.safetensors")] if with_callback else []
        make_trainer(tmp_path, max_epochs=2, callbacks=callbacks).fit(module, loader())
        return net, imp, counts

    net, imp, counts = run(with_callback=True)
    assert counts == {"after_backward": 18, "after_step": 18}  # 3 epochs x 6 steps
    assert imp.epoch == 3 and not imp.drawn
    for name, mask in zip(imp.names, imp.masks):
        weight = net.get_parameter(name)
        assert 0 < int(mask.sum()) < mask.numel()
        assert torch.count_nonzero(weight[~mask]) == 0, name  # exactly zero
        assert torch.count_nonzero(weight[mask]) == int(mask.sum()), name
    ticket = Ticket.load(tmp_path / "imp.safetensors")
    assert ticket.method == "imp" and all(torch.equal(ticket.masks[n], m) for n, m in zip(imp.names, imp.masks))
    control, control_imp, _ = run(with_callback=False)  # momentum moves the pruned weights without the hooks
    assert any(torch.count_nonzero(control.get_parameter(n)[~m]) for n, m in zip(control_imp.names, control_imp.masks))


# ----------------------------------------------------------------- Gem-Miner
@pytest.mark.parametrize("optimizer", ["sgd", None])
def test_gemminer_fit_matches_hand_written_loop(tmp_path, optimizer):
    settings = {"density": 0.25, "epochs": 4, "period": 1, "seed": 0}
    reference_net = make_net()
    reference = GemMiner(reference_net, **settings)
    hand_loop(reference_net, reference, 4, optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)]), stop=False)
    net = make_net()
    gm = GemMiner(net, **settings)
    module = Lit(net, optimizer=optimizer)  # "sgd": over the trainable parameters, i.e. the scores
    trainer = make_trainer(tmp_path, max_epochs=10, callbacks=[SparseTicketCallback(gm)])
    trainer.fit(module, loader())
    assert gm.drawn and trainer.current_epoch == gm.epoch == 4  # stopped once mining ran its epochs
    assert gm.density == reference.density == round(gm.flags.numel() * 0.25) / gm.flags.numel()
    assert torch.equal(gm.flags, reference.flags) and torch.equal(gm.scores, reference.scores)
    if optimizer == "sgd":  # the optimizer holds the scores but never sees a gradient
        assert module.grads_at_step and all(g is None for grads in module.grads_at_step for g in grads)
        assert len(module.grads_at_step[0]) == len(gm.weights)
        assert not trainer.optimizers[0].state  # SGD skipped every parameter
    ticket = Ticket.load(tmp_path / "ticket.safetensors")
    assert ticket.method == "gemminer" and ticket.density() == gm.density


def test_gemminer_created_before_a_cast_is_refused(tmp_path):
    net = make_net()
    gm = GemMiner(net, density=0.5, epochs=2, period=1)
    net.double()  # what moving the model after creating the miner does to its scores
    with pytest.raises(RuntimeError, match="moved or cast after GemMiner was created"):
        make_trainer(tmp_path, max_epochs=1, callbacks=[SparseTicketCallback(gm)]).fit(Lit(net), loader())
    imp = IMP(make_net())
    imp.masks = [mask.to("meta") for mask in imp.masks]  # stands in for weights moved to a GPU after IMP
    with pytest.raises(RuntimeError, match="create IMP after moving"):
        SparseTicketCallback(imp).on_fit_start(None, None)


# ----------------------------------------------------------------- checkpoints
def test_checkpoint_resume_continues_the_search(tmp_path):
    settings = {**EB_SETTINGS, "eps": 0.0}  # never drawn in 6 epochs: the search runs throughout
    net = make_net()
    whole = EarlyBird(net, **settings)
    make_trainer(tmp_path, max_epochs=6, callbacks=[SparseTicketCallback(whole, ticket_path=None)]).fit(
        Lit(net), loader())

    first_net = make_net()
    first = EarlyBird(first_net, **settings)
    callback = SparseTicketCallback(first, ticket_path=None)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    make_trainer(tmp_path, max_epochs=3, enable_checkpointing=True, callbacks=[callback, checkpoint]).fit(
        Lit(first_net), loader())
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["callbacks"][callback.state_key]["epoch"] == 3  # written after epoch_end

    resumed_net = make_net(seed=1)  # another init: the checkpoint restores the weights
    resumed = EarlyBird(resumed_net, **settings)
    make_trainer(tmp_path, max_epochs=6, callbacks=[SparseTicketCallback(resumed, ticket_path=None)]).fit(
        Lit(resumed_net), loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.epoch == whole.epoch == 6 and whole.found_epoch is None
    assert resumed.history == whole.history and len(resumed.history) == 6
    assert all(torch.equal(a, b) for a, b in zip(resumed.trackers[0].masks, whole.trackers[0].masks))
    assert torch.equal(resumed.trackers[0].static_runs, whole.trackers[0].static_runs)
    assert_same_weights(resumed_net, net)


# ----------------------------------------------------------------- precision plugins
def test_bf16_mixed_matches_an_autocast_loop(tmp_path):
    net = make_net()
    eb = EarlyBird(net, **EB_SETTINGS)
    trainer = make_trainer(tmp_path, max_epochs=3, precision="bf16-mixed",
                           callbacks=[SparseTicketCallback(eb, stop_when_drawn=False)])
    trainer.fit(Lit(net), loader())
    reference_net = make_net()
    reference = EarlyBird(reference_net, **EB_SETTINGS)
    hand_loop(reference_net, reference, 3, stop=False, autocast=torch.bfloat16)
    assert eb.history == reference.history and eb.epoch == 3
    assert_same_weights(net, reference_net)
    assert Ticket.load(tmp_path / "ticket.safetensors").hyperparameters["epochs"] == 3


def fp16_plugin() -> MixedPrecision:
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 16))


def test_fp16_scaler_hook_sees_unscaled_gradients(tmp_path):
    net = make_net()
    eb = EarlyBird(net, **EB_SETTINGS)
    seen: list[torch.Tensor] = []
    original = eb.after_backward

    def record() -> None:
        seen.append(eb.layers[0].gamma.grad.clone())  # before the L1 term
        original()

    eb.after_backward = record
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=1, plugins=[fp16_plugin()],
                           callbacks=[SparseTicketCallback(eb, ticket_path=None)])
    trainer.fit(Lit(net), loader())
    # the reference: a GradScaler loop with unscale_ before the hook
    reference = make_net()
    optimizer = sgd(reference.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    images, labels = next(iter(loader()))
    with torch.autocast("cpu", dtype=torch.float16):
        loss = nn.functional.cross_entropy(reference(images), labels)
    scaler.scale(loss).backward()
    scaled = reference[1].weight.grad.clone()
    scaler.unscale_(optimizer)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], reference[1].weight.grad, rtol=0, atol=0)
    assert seen[0].abs().max() * 1000 < scaled.abs().max()  # far from the scaled gradient


def test_fp16_step_skipped_by_the_scaler_is_skipped_by_gemminer(tmp_path):
    net = make_net()
    gm = GemMiner(net, density=0.5, epochs=3, period=1, seed=0)
    snapshots: list[torch.Tensor] = [gm.scores.detach().clone()]
    counts = count_calls(gm, "after_backward")

    class Snapshot(pl.Callback):
        def on_train_batch_end(self, *args) -> None:
            snapshots.append(gm.scores.detach().clone())

    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=4, plugins=[fp16_plugin()],
                           callbacks=[SparseTicketCallback(gm, ticket_path=None), Snapshot()])
    trainer.fit(Lit(net, inf_batches=(1,)), loader())
    changed = [not torch.equal(before, after) for before, after in zip(snapshots, snapshots[1:])]
    assert changed == [True, False, True, True] and counts["after_backward"] == 3
    assert torch.isfinite(gm.scores).all() and torch.isfinite(gm.momentum_buffer).all()


def test_fp16_scaler_needs_the_method_parameters_in_the_optimizer(tmp_path):
    net = make_net()
    gm = GemMiner(net, density=0.5, epochs=2, period=1)
    trainer = make_trainer(tmp_path, max_epochs=1, plugins=[fp16_plugin()], callbacks=[SparseTicketCallback(gm)])
    with pytest.raises(ValueError, match="must be in the LightningModule's optimizer"):
        trainer.fit(Lit(net, optimizer=None), loader())


# ----------------------------------------------------------------- DDP (2 gloo processes)
DDP_SCRIPT = """
import sys, torch
import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy
sys.path.insert(0, {tests!r})
from test_lightning_callback import EB_SETTINGS, Lit, count_calls, loader, make_net
from sparseticket.methods import EarlyBird
from sparseticket.integrations.lightning import SparseTicketCallback

torch.set_num_threads(1)
net = make_net()
eb = EarlyBird(net, **EB_SETTINGS)
counts = count_calls(eb, "after_backward", "after_step")
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo"),
                     max_epochs=12, logger=False, enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=False, default_root_dir=".",
                     callbacks=[SparseTicketCallback(eb, ticket_path="ddp.safetensors")])
trainer.fit(Lit(net), loader())
torch.save({{"epoch": eb.epoch, "found": eb.found_epoch, "mask": eb.channel_mask(), "counts": counts,
            "steps": trainer.global_step, "gamma": net[1].weight.detach()}}, f"rank{{trainer.global_rank}}.pt")
"""


def test_ddp_two_gloo_processes(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)))))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    for rank in ranks:  # every rank ran the hooks, once per optimizer step, and stopped at the draw
        assert rank["found"] is not None and rank["epoch"] == rank["found"]
        assert rank["counts"] == {"after_backward": rank["steps"], "after_step": rank["steps"]}
        assert rank["steps"] == 3 * rank["epoch"]  # 6 batches split over 2 ranks
    assert ranks[0]["epoch"] == ranks[1]["epoch"] and torch.equal(ranks[0]["gamma"], ranks[1]["gamma"])
    ticket = Ticket.load(tmp_path / "ddp.safetensors")
    assert all(torch.equal(ticket.channel_masks[n], m) for n, m in ranks[0]["mask"].items())
    assert all(torch.equal(ranks[1]["mask"][n], m) for n, m in ranks[0]["mask"].items())
    assert (done.stdout + done.stderr).count("ticket drawn at epoch") == 1  # rank zero alone reports


# ----------------------------------------------------------------- arguments and imports
def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match=r"method must be a sparseticket method .* object lacks after_backward"):
        SparseTicketCallback(object())
    eb = EarlyBird(make_net())
    with pytest.raises(TypeError, match="stop_when_drawn"):
        SparseTicketCallback(eb, stop_when_drawn="yes")
    with pytest.raises(TypeError, match="ticket_path"):
        SparseTicketCallback(eb, ticket_path=3)
    with pytest.raises(TypeError, match="state_dict must be a dict"):
        SparseTicketCallback(eb).load_state_dict([1])


def _import_without(monkeypatch, blocked: dict[str, object]):
    monkeypatch.delitem(sys.modules, "sparseticket.integrations.lightning")
    for name, module in blocked.items():
        monkeypatch.setitem(sys.modules, name, module)
    return importlib.import_module("sparseticket.integrations.lightning")


def test_import_error_names_the_extra(monkeypatch):
    with pytest.raises(ImportError, match=r"sparseticket\[lightning\]"):
        _import_without(monkeypatch, {"lightning": None, "lightning.pytorch": None, "pytorch_lightning": None})


def test_falls_back_to_pytorch_lightning(monkeypatch):
    import lightning.pytorch.utilities

    module = _import_without(monkeypatch, {"lightning.pytorch": None, "pytorch_lightning": pl,
                                           "pytorch_lightning.utilities": lightning.pytorch.utilities})
    assert issubclass(module.SparseTicketCallback, pl.Callback)


def test_the_core_package_does_not_import_lightning(tmp_path):
    code = ("import sys, sparseticket, sparseticket.integrations; sparseticket.EarlyBird; sparseticket.GemMiner; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')))")
    # from tmp_path: the installed package, as CI installs it (the source tree there has no built extension
    # and would build one first)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


# ----------------------------------------------------------------- the fused masked optimizer
def test_imp_fused_optimizer_from_configure_optimizers_matches_the_two_pass_loop(tmp_path):
    """configure_optimizers returns imp.optimizer(SGD): the fit equals a hand loop with IMP's two
    passes bit for bit, and the pruned weights stay at exactly 0."""
    net = make_net()
    imp = IMP(net, rate=0.5)
    imp.prune_round()
    lit = Lit(net, optimizer=imp.optimizer(sgd(net.parameters())))
    make_trainer(tmp_path, max_epochs=2, callbacks=[SparseTicketCallback(imp)]).fit(lit, loader())
    assert type(lit.optimizer).__name__ == "MaskedSGD"
    reference_net = make_net()
    reference = IMP(reference_net, rate=0.5)
    reference.prune_round()
    hand_loop(reference_net, reference, 2, stop=False)
    assert_same_weights(net, reference_net)
    for weight, mask in zip(imp.weights, imp.masks):
        assert not weight.detach()[~mask].any()
