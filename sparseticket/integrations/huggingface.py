"""``SparseTicketCallback``: run a sparseticket method inside ``transformers.Trainer``.

    eb = EarlyBird(model)                        # or WORM, GemMiner, IMP
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[SparseTicketCallback(eb)])
    trainer.train()                              # stops at the epoch the ticket is drawn
    ticket = Ticket.load(f"{args.output_dir}/ticket.safetensors")

IMP (and a ticket's fine-tuning) at no step cost: hand the Trainer the fused masked optimizer,
``Trainer(..., optimizers=(imp.optimizer(torch.optim.AdamW(model.parameters())), None),
callbacks=[SparseTicketCallback(imp)])`` (``ticket.optimizer(model, optimizer)`` for a ticket): its
step keeps the pruned weights at 0, so the callback's ``after_backward``/``after_step`` do nothing.

Where the hooks run (verified against transformers 5.24 ``Trainer._run_epoch`` and accelerate 1.15):

- ``after_backward()`` in ``on_pre_optimizer_step``: once per optimizer step (only on the
  ``do_sync_step`` micro-batch, so once per ``gradient_accumulation_steps`` micro-batches), after
  gradient clipping: the L1 term is not clipped, and it is added to the accumulated gradient once.
- ``after_step()`` in ``on_optimizer_step``, right after ``optimizer.step()`` (before ``zero_grad``).
- ``epoch_end()`` in ``on_epoch_end``; ``stop_when_drawn`` then stops training once ``method.drawn``.

fp16: the methods need unscaled gradients. The Trainer unscales them before
``on_pre_optimizer_step`` whenever it computes the gradient norm (accelerate's ``clip_grad_norm_``
calls ``unscale_gradients``; transformers 5.24 computes it on every step, ``max_grad_norm=0``
included); where it did not, the callback calls ``scaler.unscale_(optimizer)`` itself, once: the
scaler is the ``scaler`` attribute of accelerate's ``AcceleratedOptimizer`` (the ``optimizer``
the Trainer passes to callbacks). On a step whose gradients overflowed (the scaler will skip
``optimizer.step()``) ``after_backward`` is skipped too; ``skipped_steps`` counts them (telling
costs one host sync per fp16 step). A Trainer whose optimizer carries no ``scaler`` (DeepSpeed,
custom optimizers) is taken to hand over unscaled gradients. bf16 needs no scaler.

Files, on the main process: the ticket (``method.ticket().save``) goes to
``{output_dir}/{ticket_name}`` when it is drawn and at the end of training if it was not drawn in
this run; the method's state goes next to every Trainer checkpoint as
``checkpoint-{global_step}/sparseticket_method.pt`` (written by ``sparseticket.files.atomic_write``).
Callbacks do not see the path ``trainer.train(resume_from_checkpoint=...)`` was given; when the
Trainer resumed (a global step > 0 at ``on_train_begin``) the callback loads the state from
``args.resume_from_checkpoint`` or ``{output_dir}/checkpoint-{global_step}`` (whichever holds it
for that step), and raises if neither does: call ``callback.load(checkpoint_dir)`` before
``trainer.train`` to name the folder.
IMP's ``load_state_dict`` gets the Trainer's optimizer and scheduler (to rewind a captured state).
``on_train_begin`` calls ``method.check_placement()``: build GemMiner and IMP on the model already
on its training device and dtype (the Trainer moves the model in its constructor; add the callback
after it with ``trainer.add_callback``), or the callback raises.

Gem-Miner: the Trainer builds its optimizer over the trainable parameters, which are the scores;
``after_backward`` (the fused score step) clears their gradients, so the Trainer's optimizer finds
no gradient and leaves them alone (torch's SGD and AdamW skip parameters without ``.grad``, weight
decay included). ``max_grad_norm`` clips the score gradients before the score step: pass
``max_grad_norm=0`` for Gem-Miner's own update rule.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import torch
from torch import nn

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as error:  # pragma: no cover - exercised only without transformers
    raise ImportError("sparseticket.integrations.huggingface needs transformers: "
                      "pip install 'sparseticket[hf]'") from error

if not all(hasattr(TrainerCallback, hook) for hook in ("on_pre_optimizer_step", "on_optimizer_step")):
    raise ImportError("sparseticket.integrations.huggingface needs a transformers with the "
                      "on_pre_optimizer_step/on_optimizer_step callbacks (tested with 5.24): "
                      "pip install -U 'sparseticket[hf]'")

from sparseticket.files import atomic_write
from sparseticket.methods.distributed import unwrap
from sparseticket.methods.protocol import Method, check_method

__all__ = ["METHOD_STATE_NAME", "SparseTicketCallback", "read_method_state"]

METHOD_STATE_NAME = "sparseticket_method.pt"


def read_method_state(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """The method state the callback wrote into a Trainer checkpoint folder (tensors on the CPU)."""
    path = os.path.join(os.fspath(checkpoint_dir), METHOD_STATE_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint_dir: {checkpoint_dir} holds no {METHOD_STATE_NAME} "
                                "(not written by SparseTicketCallback.on_save)")
    return torch.load(path, map_location="cpu", weights_only=True)


def _torch_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` (and similar wrappers)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def _already_unscaled(scaler: Any, optimizer: Any) -> bool | None:
    """Whether ``scaler.unscale_(optimizer)`` ran this step; None where the scaler does not say."""
    try:
        from torch.amp.grad_scaler import OptState

        return scaler._per_optimizer_states[id(optimizer)]["stage"] is OptState.UNSCALED
    except (ImportError, AttributeError, KeyError, TypeError):
        return None


def _found_inf(scaler: Any, optimizer: Any) -> bool:
    """Whether the unscaled gradients hold an inf/NaN (the scaler will skip the step)."""
    try:
        found = scaler._found_inf_per_device(optimizer)
    except (AttributeError, AssertionError, KeyError):
        return False
    return bool(sum(float(value.item()) for value in found.values()))


class SparseTicketCallback(TrainerCallback):
    """Calls ``method``'s hooks from the Trainer's loop, saves its ticket and checkpoints its state.

    ``method``: a ``sparseticket.Method`` (``EarlyBird``, ``WORM``, ``GemMiner``, ``IMP``: any of
    ``sparseticket.METHODS``) built on the Trainer's model;
    ``stop_when_drawn``: stop training at the end of the epoch ``method.drawn`` becomes True;
    ``ticket_name``: file name of the ticket in ``args.output_dir``; ``resume``: load the method
    state when the Trainer resumes from a checkpoint (False: keep the method as it is).
    """

    def __init__(self, method: Any, *, stop_when_drawn: bool = True, ticket_name: str = "ticket.safetensors",
                 resume: bool = True) -> None:
        method = check_method(method)
        if not isinstance(stop_when_drawn, bool):
            raise TypeError(f"stop_when_drawn must be a bool, got {stop_when_drawn!r}")
        if not isinstance(resume, bool):
            raise TypeError(f"resume must be a bool, got {resume!r}")
        if not isinstance(ticket_name, str) or not ticket_name or os.path.basename(ticket_name) != ticket_name:
            raise ValueError(f"ticket_name must be a file name (no folder), got {ticket_name!r}")
        self.method: Method = method
        self.stop_when_drawn = stop_when_drawn
        self.ticket_name = ticket_name
        self.resume = resume
        self.optimizer: Any = None  # the Trainer's optimizer, kept from on_train_begin
        self.saved_path: str | None = None  # where the ticket was last written
        self.loaded_from: str | None = None  # the method state file last loaded
        self.skipped_steps = 0  # fp16 steps whose gradients overflowed: after_backward skipped
        self._pending_load = False  # load() ran since the last train(): no automatic lookup
        self._drawn_saved = False  # the drawn ticket was written

    # ----------------------------------------------------------------- checkpoints
    def load(self, checkpoint_dir: str | os.PathLike, **load_kwargs: Any) -> None:
        """Load the method state saved in a Trainer checkpoint folder now (``load_kwargs`` go to
        ``method.load_state_dict``, e.g. IMP's ``optimizer=``/``scheduler=``); the next
        ``trainer.train`` then skips its own lookup."""
        state = read_method_state(checkpoint_dir)
        self.method.load_state_dict(state, **load_kwargs)
        self.loaded_from = os.path.join(os.fspath(checkpoint_dir), METHOD_STATE_NAME)
        self._pending_load = True

    def _resume(self, args: TrainingArguments, state: TrainerState, **kwargs: Any) -> None:
        """Find the checkpoint the Trainer resumed from (global step ``state.global_step``) and load it."""
        candidates = []
        if isinstance(args.resume_from_checkpoint, str):
            candidates.append(args.resume_from_checkpoint)
        candidates.append(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))
        for folder in candidates:
            if os.path.isfile(os.path.join(folder, METHOD_STATE_NAME)) and self._step_of(folder) in (
                    None, state.global_step):
                # IMP rewinds the Trainer's optimizer and scheduler to its captured states; the others ignore them
                self.load(folder, optimizer=kwargs.get("optimizer"), scheduler=kwargs.get("lr_scheduler"))
                return
        raise FileNotFoundError(
            f"the Trainer resumed at global step {state.global_step}, but no {METHOD_STATE_NAME} for that step "
            f"is in {' or '.join(candidates)}: call callback.load(checkpoint_dir) before "
            "trainer.train(resume_from_checkpoint=checkpoint_dir), or pass resume=False to keep the method's state")

    @staticmethod
    def _step_of(folder: str) -> int | None:
        """The global step recorded in a checkpoint's trainer_state.json (None if unreadable)."""
        try:
            with open(os.path.join(folder, "trainer_state.json")) as handle:
                return int(json.load(handle)["global_step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """Write ``method.state_dict()`` into the checkpoint folder the Trainer just wrote."""
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not os.path.isdir(folder):
            warnings.warn(f"SparseTicketCallback: no checkpoint folder {folder} (hyperparameter search runs "
                          "save elsewhere): the method state was not saved", stacklevel=2)
            return
        state = self.method.state_dict()
        atomic_write(os.path.join(folder, METHOD_STATE_NAME), lambda temporary: torch.save(state, temporary))

    # ----------------------------------------------------------------- training
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        """Keep the optimizer, check the method's model is the Trainer's and its placement, load the
        state on resume."""
        self.optimizer = kwargs.get("optimizer")
        model, method_model = kwargs.get("model"), getattr(self.method, "model", None)
        if isinstance(model, nn.Module) and isinstance(method_model, nn.Module):
            if not any(module is method_model for module in unwrap(model).modules()):
                raise ValueError(f"method: this {type(self.method).__name__} was built on another model than "
                                 "the Trainer's (build it on the model passed to Trainer, after any model_init)")
        self.method.check_placement()
        if self.resume and not self._pending_load and state.global_step > 0:
            self._resume(args, state, **kwargs)
        self._pending_load = False
        self._drawn_saved = False

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                              **kwargs: Any) -> None:
        """``method.after_backward()`` on unscaled gradients (unscaling them first if needed)."""
        optimizer = kwargs.get("optimizer")
        if optimizer is None:
            optimizer = self.optimizer
        if self._unscale(optimizer):
            self.method.after_backward()

    def _unscale(self, optimizer: Any) -> bool:
        """Unscale fp16 gradients once; False when they overflowed (the step will be skipped)."""
        scaler = getattr(optimizer, "scaler", None)
        if scaler is None or not callable(getattr(scaler, "unscale_", None)):
            return True
        if callable(getattr(scaler, "is_enabled", None)) and not scaler.is_enabled():
            return True
        inner = _torch_optimizer(optimizer)
        unscaled = _already_unscaled(scaler, inner)
        if unscaled is None:  # a scaler without the private stage record: unscale_ tells by raising
            try:
                scaler.unscale_(inner)
            except RuntimeError as error:
                if "already been called" not in str(error):
                    raise
        elif not unscaled:
            scaler.unscale_(inner)
        if _found_inf(scaler, inner):
            self.skipped_steps += 1
            zero_grad = getattr(self.method, "zero_grad", None)
            if callable(zero_grad):  # Gem-Miner: forget this step's score gradient
                zero_grad()
            return False
        return True

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                          **kwargs: Any) -> None:
        """``method.after_step()`` right after ``optimizer.step()``."""
        self.method.after_step()

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> TrainerControl:
        """``method.epoch_end()``; save the ticket when drawn, and stop if ``stop_when_drawn``."""
        self.method.epoch_end()
        if self.method.drawn:
            if not self._drawn_saved:
                self._save_ticket(args, state)
                self._drawn_saved = True
            if self.stop_when_drawn:
                control.should_training_stop = True
        return control

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        """Save the ticket unless the drawn one was saved in this run."""
        if self._drawn_saved:
            return
        try:
            self._save_ticket(args, state)
        except RuntimeError as error:  # e.g. EarlyBird before its first epoch end
            warnings.warn(f"SparseTicketCallback: no ticket saved: {error}", stacklevel=2)

    def _save_ticket(self, args: TrainingArguments, state: TrainerState) -> None:
        ticket = self.method.ticket()  # on every rank: collective for a sharded IMP
        if state.is_world_process_zero:
            os.makedirs(args.output_dir, exist_ok=True)
            self.saved_path = os.path.join(args.output_dir, self.ticket_name)
            ticket.save(self.saved_path)
