"""SparseTicketCallback inside transformers.Trainer equals a hand-written loop calling the same hooks.

Tiny ResNets from configs on random 16x16 images (no downloads); the Trainer reads the data in
order (``train_sampling_strategy="sequential"``) so a plain loop can replay its steps exactly.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers import ResNetConfig, ResNetForImageClassification, Trainer, TrainingArguments  # noqa: E402

from sparseticket import IMP, EarlyBird, GemMiner, Ticket  # noqa: E402
from sparseticket.integrations.huggingface import (  # noqa: E402
    METHOD_STATE_NAME,
    SparseTicketCallback,
    read_method_state,
)

SAMPLES, BATCH, LR = 24, 4, 0.05


def tiny_resnet(seed: int = 0) -> ResNetForImageClassification:
    torch.manual_seed(seed)
    model = ResNetForImageClassification(ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16],
                                                      depths=[1, 1], num_labels=4, layer_type="basic"))
    # The Trainer divides the loss by the accumulation steps only for models that do not take loss kwargs
    model.accepts_loss_kwargs = False
    return model


class Images(torch.utils.data.Dataset):
    """Random images with random labels, fixed by a seed."""

    def __init__(self, count: int = SAMPLES, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(count, 3, 16, 16, generator=generator)
        self.labels = torch.randint(0, 4, (count,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.images[index], "labels": self.labels[index]}


def training_args(output_dir, **overrides) -> TrainingArguments:
    settings = dict(output_dir=str(output_dir), per_device_train_batch_size=BATCH, num_train_epochs=3,
                    report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True,
                    dataloader_num_workers=0, seed=0, optim="sgd", learning_rate=LR, weight_decay=0.0,
                    lr_scheduler_type="constant", max_grad_norm=0.0, train_sampling_strategy="sequential")
    settings.update(overrides)
    return TrainingArguments(**settings)


def reference_loop(model, method, *, epochs: int, accumulation: int = 1, max_grad_norm: float = 0.0,
                   optimizer: torch.optim.Optimizer | None = None, stop_when_drawn: bool = True) -> list:
    """The Trainer's order by hand: backward per micro-batch (loss / micro-batches), clip,
    after_backward, step, after_step, zero_grad; epoch_end. Returns the channel mask of every epoch
    (EarlyBird) or the method's epoch count."""
    batches = list(torch.utils.data.DataLoader(Images(), batch_size=BATCH, shuffle=False))
    trainable = [p for p in model.parameters() if p.requires_grad]
    if optimizer is None and isinstance(method, EarlyBird):
        optimizer = torch.optim.SGD(trainable, lr=LR)
    model.train()
    log = []
    for _ in range(epochs):
        for start in range(0, len(batches), accumulation):
            group = batches[start:start + accumulation]
            for batch in group:
                (model(**batch).loss / len(group)).backward()
            if max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(list(model.parameters()), max_grad_norm)
            method.after_backward()
            if optimizer is not None:
                optimizer.step()
            method.after_step()
            model.zero_grad()
        method.epoch_end()
        log.append(method.channel_mask() if isinstance(method, EarlyBird) else method.epoch)
        if stop_when_drawn and method.drawn:
            break
    return log


class Recording:
    """Wraps a method: records every hook call, each epoch's channel mask and the gamma gradient
    before and after each after_backward."""

    def __init__(self, method) -> None:
        self.method = method
        self.calls: list[str] = []
        self.masks: list[dict[str, torch.Tensor]] = []
        self.l1_added: list[list[torch.Tensor]] = []  # per step: grad after - grad before, per layer
        self.gammas: list[list[torch.Tensor]] = []  # per step: gamma when after_backward ran
        self.stepped: list[bool] = []  # per after_step: the optimizer step had moved gamma by then

    def __getattr__(self, name):
        return getattr(self.method, name)

    def after_backward(self):
        layers = self.method.layers if isinstance(self.method, EarlyBird) else []
        before = [layer.gamma.grad.clone() for layer in layers]
        self.calls.append("after_backward")
        result = self.method.after_backward()
        self.l1_added.append([layer.gamma.grad - old for layer, old in zip(layers, before)])
        self.gammas.append([layer.gamma.detach().clone() for layer in layers])
        return result

    def after_step(self):
        self.calls.append("after_step")
        if self.gammas and self.gammas[-1]:
            layer, before = self.method.layers[0], self.gammas[-1][0]
            self.stepped.append(not torch.equal(layer.gamma.detach(), before))
        return self.method.after_step()

    def epoch_end(self):
        self.calls.append("epoch_end")
        found = self.method.epoch_end()
        if isinstance(self.method, EarlyBird):
            self.masks.append(self.method.channel_mask())
        return found


def assert_masks_equal(left: list[dict], right: list[dict]) -> None:
    assert len(left) == len(right)
    for mine, theirs in zip(left, right):
        assert mine.keys() == theirs.keys()
        for name in mine:
            assert torch.equal(mine[name], theirs[name]), name


def assert_models_equal(left: nn.Module, right: nn.Module) -> None:
    theirs = dict(right.named_parameters())
    for name, parameter in left.named_parameters():
        assert torch.equal(parameter.detach(), theirs[name].detach()), name


# --------------------------------------------------------------------------- EarlyBird = reference loop
def test_earlybird_through_trainer_equals_reference_loop_and_stops_when_drawn(tmp_path):
    model = tiny_resnet()
    reference_model = copy.deepcopy(model)
    settings = dict(ratio=0.5, l1=1e-2, queue=2, eps=0.1)
    recording = Recording(EarlyBird(model, **settings))
    callback = SparseTicketCallback(recording)
    # max_grad_norm 0.5 clips every step here: the reference clips before after_backward, as the Trainer does
    trainer = Trainer(model=model, args=training_args(tmp_path, num_train_epochs=8, max_grad_norm=0.5),
                      train_dataset=Images(), callbacks=[callback])
    trainer.train()

    reference = EarlyBird(reference_model, **settings)
    reference_masks = reference_loop(reference_model, reference, epochs=8, max_grad_norm=0.5)

    found = recording.method.found_epoch
    assert found is not None and found == reference.found_epoch and found < 8
    assert_masks_equal(recording.masks, reference_masks)
    assert_models_equal(model, reference_model)
    # stop_when_drawn: training ended at the found epoch
    assert recording.method.epoch == found and trainer.state.epoch == found
    assert recording.calls.count("epoch_end") == found
    # the ticket was written to output_dir and loads back
    assert callback.saved_path == os.path.join(str(tmp_path), "ticket.safetensors")
    ticket = Ticket.load(callback.saved_path)
    assert ticket.method == "earlybird" and ticket.hyperparameters["found_epoch"] == found
    assert_masks_equal([ticket.channel_masks], [reference.channel_mask()])


# --------------------------------------------------------------------------- gradient accumulation
def test_gradient_accumulation_calls_hooks_once_per_optimizer_step(tmp_path):
    model = tiny_resnet()
    reference_model = copy.deepcopy(model)
    l1 = 1e-2
    recording = Recording(EarlyBird(model, l1=l1, queue=5))
    trainer = Trainer(model=model, args=training_args(tmp_path, num_train_epochs=2, gradient_accumulation_steps=2),
                      train_dataset=Images(), callbacks=[SparseTicketCallback(recording)])
    trainer.train()

    steps_per_epoch = SAMPLES // BATCH // 2  # 6 micro-batches, 2 per optimizer step
    epoch_calls = ["after_backward", "after_step"] * steps_per_epoch + ["epoch_end"]
    assert recording.calls == epoch_calls * 2
    assert trainer.state.global_step == 2 * steps_per_epoch
    assert recording.stepped == [True] * (2 * steps_per_epoch)  # after_step ran after optimizer.step()
    # each call added l1 * sign(gamma) once, on the accumulated gradient
    assert len(recording.l1_added) == 2 * steps_per_epoch
    for added, gammas in zip(recording.l1_added, recording.gammas):
        for delta, gamma in zip(added, gammas):
            torch.testing.assert_close(delta, l1 * torch.sign(gamma), rtol=0, atol=1e-6)
    # and the whole run equals the loop that accumulates two micro-batches per step
    reference = EarlyBird(reference_model, l1=l1, queue=5)
    reference_masks = reference_loop(reference_model, reference, epochs=2, accumulation=2)
    assert_masks_equal(recording.masks, reference_masks)
    assert_models_equal(model, reference_model)


# --------------------------------------------------------------------------- AMP
@pytest.fixture
def accelerated_optimizer():
    """Builds accelerate's AcceleratedOptimizer (the Trainer's optimizer) around a CPU GradScaler."""
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer
    from accelerate.state import AcceleratorState

    Accelerator(cpu=True)  # the state AcceleratedOptimizer reads
    yield lambda optimizer, scaler: AcceleratedOptimizer(optimizer, device_placement=False, scaler=scaler)
    AcceleratorState._reset_state(reset_partial_state=True)


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("unscaled_by_trainer", [False, True], ids=["callback-unscales", "clip-unscaled"])
def test_fp16_scaled_gradients_are_unscaled_before_the_l1_term(accelerated_optimizer, unscaled_by_trainer):
    model, l1, lr = _bn_model(), 1e-2, 0.1
    reference = copy.deepcopy(model)
    inputs, labels = torch.randn(16, 6, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 3
    callback = SparseTicketCallback(EarlyBird(model, l1=l1))
    inner = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    optimizer = accelerated_optimizer(inner, scaler)
    args, state, control = None, _State(), None  # the hooks below read neither (TrainingArguments
    # would reset the accelerate state the fixture made)
    callback.on_train_begin(args, state, control, optimizer=optimizer, model=model)

    # the Trainer's order: scaled backward, (clip: unscale_), on_pre_optimizer_step, step, on_optimizer_step
    scaler.scale(nn.functional.cross_entropy(model(inputs), labels)).backward()
    if unscaled_by_trainer:
        scaler.unscale_(inner)  # what accelerator.clip_grad_norm_ does when the Trainer clips
    callback.on_pre_optimizer_step(args, state, control, optimizer=optimizer)
    gamma = model[1].weight.detach().clone()
    optimizer.step()
    callback.on_optimizer_step(args, state, control, optimizer=optimizer)

    nn.functional.cross_entropy(reference(inputs), labels).backward()  # fp32, unscaled
    unscaled_grad, gamma_before = reference[1].weight.grad, reference[1].weight.detach()
    assert torch.equal(gamma, gamma_before)  # gamma moves only in the step
    expected = gamma_before - lr * (unscaled_grad + l1 * torch.sign(gamma_before))
    torch.testing.assert_close(model[1].weight.detach(), expected, rtol=0, atol=1e-7)
    # an l1 term added before unscaling would have moved gamma by only lr * l1 / 2**16
    assert (model[1].weight.detach() - (gamma_before - lr * unscaled_grad)).abs().min() > 0.5 * lr * l1
    assert callback.skipped_steps == 0 and scaler.get_scale() == 2.0**16


def test_fp16_overflow_skips_after_backward(accelerated_optimizer):
    model = _bn_model()
    callback = SparseTicketCallback(EarlyBird(model, l1=1e-2))
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    optimizer = accelerated_optimizer(inner, scaler)
    scaler.scale(model(torch.randn(4, 6)).sum()).backward()
    model[0].weight.grad[0, 0] = float("inf")
    before = [p.detach().clone() for p in model.parameters()]
    gamma_grad = model[1].weight.grad.clone()
    callback.on_pre_optimizer_step(None, _State(), None, optimizer=optimizer)
    assert callback.skipped_steps == 1
    torch.testing.assert_close(model[1].weight.grad, gamma_grad / 2.0**16, rtol=0, atol=0)  # unscaled, no l1
    optimizer.step()
    assert all(torch.equal(p.detach(), old) for p, old in zip(model.parameters(), before))  # step skipped
    assert scaler.get_scale() == 2.0**15


class _State:
    """The TrainerState fields the callback reads."""

    global_step = 0
    is_world_process_zero = True


def test_bf16_trainer_runs_in_autocast(tmp_path):
    model = tiny_resnet()
    recording = Recording(EarlyBird(model, l1=1e-2, queue=5))
    dtypes = []
    model.resnet.embedder.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    trainer = Trainer(model=model, args=training_args(tmp_path, num_train_epochs=2, bf16=True),
                      train_dataset=Images(), callbacks=[SparseTicketCallback(recording)])
    trainer.train()
    assert set(dtypes) == {torch.bfloat16}  # autocast was on
    assert recording.calls.count("after_backward") == trainer.state.global_step == 12
    assert all(delta[0].abs().max() > 0 for delta in recording.l1_added)  # the l1 term reached the fp32 grads
    assert len(recording.masks) == 2
    assert Ticket.load(tmp_path / "ticket.safetensors").channel_masks.keys() == recording.masks[-1].keys()


# --------------------------------------------------------------------------- IMP and Gem-Miner
def test_imp_pruned_weights_stay_exactly_zero(tmp_path):
    model = tiny_resnet()
    imp = IMP(model, rate=0.5)
    imp.prune_round()
    initial = {name: weight.detach().clone() for name, weight in zip(imp.names, imp.weights)}
    args = training_args(tmp_path, num_train_epochs=2, optim_args="momentum=0.9", weight_decay=0.01)
    Trainer(model=model, args=args, train_dataset=Images(), callbacks=[SparseTicketCallback(imp)]).train()
    for name, weight, mask in zip(imp.names, imp.weights, imp.masks):
        assert 0 < int(mask.sum()) < mask.numel()
        assert torch.count_nonzero(weight.detach()[~mask]) == 0, name  # exactly zero
        assert not torch.equal(weight.detach()[mask], initial[name][mask]), name  # the survivors trained
    assert imp.epoch == 2
    ticket = Ticket.load(tmp_path / "ticket.safetensors")  # never drawn: saved at train end
    assert ticket.method == "imp"
    assert_masks_equal([ticket.masks], [dict(zip(imp.names, imp.masks))])


def test_gemminer_mines_through_trainer_with_adamw(tmp_path):
    model = tiny_resnet()
    reference_model = copy.deepcopy(model)
    settings = dict(density=0.25, epochs=3, period=1, seed=0)
    recording = Recording(GemMiner(model, **settings))
    # AdamW with weight decay over the scores: it must find no gradient (after_backward consumed it)
    args = training_args(tmp_path, num_train_epochs=5, optim="adamw_torch", weight_decay=0.1, save_strategy="epoch")
    trainer = Trainer(model=model, args=args, train_dataset=Images(), callbacks=[SparseTicketCallback(recording)])
    trainer.train()
    miner = recording.method
    assert miner.drawn and miner.epoch == 3 and trainer.state.epoch == 3  # stopped when mining ended
    assert miner.density == pytest.approx(0.25, abs=1 / miner.flags.numel())

    reference = GemMiner(reference_model, **settings)
    reference_loop(reference_model, reference, epochs=5)
    assert torch.equal(miner.flags, reference.flags)
    assert torch.equal(miner.scores.detach(), reference.scores.detach())  # AdamW never moved a score
    ticket = Ticket.load(tmp_path / "ticket.safetensors")
    assert ticket.method == "gemminer" and ticket.density() == pytest.approx(miner.density)

    # resume after epoch 2 with a miner drawn from another seed: the Trainer restores the scores in
    # the model's state, the callback the flags, momentum and schedule; mining ends the same
    resumed = GemMiner(tiny_resnet(), **{**settings, "seed": 1})
    trainer = Trainer(model=resumed.model, args=args, train_dataset=Images(), callbacks=[SparseTicketCallback(resumed)])
    trainer.train(resume_from_checkpoint=str(tmp_path / f"checkpoint-{2 * SAMPLES // BATCH}"))
    assert resumed.epoch == 3 and torch.equal(resumed.flags, reference.flags)
    assert torch.equal(resumed.scores.detach(), reference.scores.detach())


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_save_and_resume_restore_the_method_state(tmp_path):
    def run(output_dir, epochs=4, resume=None, load=None):
        model = tiny_resnet()
        method = EarlyBird(model, l1=1e-2, queue=3, eps=0.0)
        callback = SparseTicketCallback(method, stop_when_drawn=False)
        if load is not None:
            callback.load(load)
        trainer = Trainer(model=model, args=training_args(output_dir, num_train_epochs=epochs, save_strategy="epoch"),
                          train_dataset=Images(), callbacks=[callback])
        trainer.train(resume_from_checkpoint=resume)
        return method, model, callback

    full, full_model, _ = run(tmp_path / "a")
    steps = SAMPLES // BATCH
    for epoch in range(1, 5):
        saved = read_method_state(tmp_path / "a" / f"checkpoint-{epoch * steps}")
        assert saved["method"] == "earlybird" and saved["epoch"] == epoch
    assert not [name for name in os.listdir(tmp_path / "a" / f"checkpoint-{steps}") if name.endswith(".tmp")]
    expected = full.state_dict()

    # resume in the same output_dir: the callback finds checkpoint-{global_step} by itself
    middle = str(tmp_path / "a" / f"checkpoint-{2 * steps}")
    resumed, resumed_model, callback = run(tmp_path / "a", resume=middle)
    assert callback.loaded_from == os.path.join(middle, METHOD_STATE_NAME)
    _assert_states_equal(resumed.state_dict(), expected)
    assert_models_equal(resumed_model, full_model)

    # elsewhere, the callback cannot see the path: it says so, and load() names it
    with pytest.raises(FileNotFoundError, match="callback.load"):
        run(tmp_path / "b", resume=middle)
    resumed, _, _ = run(tmp_path / "c", resume=middle, load=middle)
    _assert_states_equal(resumed.state_dict(), expected)


def _assert_states_equal(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for key in left:
        if key == "trackers":
            for mine, theirs in zip(left[key], right[key]):
                assert mine["history"] == theirs["history"] and mine["found_epoch"] == theirs["found_epoch"]
                assert all(torch.equal(a, b) for a, b in zip(mine["masks"], theirs["masks"]))
                assert torch.equal(mine["static_runs"], theirs["static_runs"])
        else:
            assert left[key] == right[key], key


# --------------------------------------------------------------------------- bad input
def test_bad_arguments_name_the_argument(tmp_path):
    with pytest.raises(TypeError, match="method.*lacks after_backward"):
        SparseTicketCallback(object())
    model = tiny_resnet()
    method = EarlyBird(model)
    with pytest.raises(ValueError, match="ticket_name"):
        SparseTicketCallback(method, ticket_name="sub/ticket.safetensors")
    with pytest.raises(TypeError, match="stop_when_drawn"):
        SparseTicketCallback(method, stop_when_drawn="yes")
    other = Trainer(model=tiny_resnet(1), args=training_args(tmp_path, num_train_epochs=1), train_dataset=Images(),
                    callbacks=[SparseTicketCallback(method)])
    with pytest.raises(ValueError, match="method: .*another model"):
        other.train()


def test_missing_transformers_names_the_extra(monkeypatch):
    import importlib
    import sys

    monkeypatch.delitem(sys.modules, "sparseticket.integrations.huggingface")
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"sparseticket\[hf\]"):
        importlib.import_module("sparseticket.integrations.huggingface")
