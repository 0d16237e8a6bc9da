"""``SparseTicketCallback``: run a sparseticket method inside ``Trainer.fit`` (extra ``sparseticket[lightning]``).

::

    model = LitNet()                                   # your LightningModule
    eb = EarlyBird(model.net)                          # made from the bare module (DDP is unwrapped)
    trainer = Trainer(callbacks=[SparseTicketCallback(eb)], max_epochs=160)
    trainer.fit(model, loader)                         # stops at the drawn epoch, writes ticket.safetensors

IMP (and a ticket's fine-tuning) at no step cost: return the fused masked optimizer from
``configure_optimizers`` (``return self.imp.optimizer(torch.optim.SGD(self.parameters(), lr=0.05))``,
or ``ticket.optimizer(self.net, optimizer)``): its step keeps the pruned weights at 0, so the
callback's ``after_backward``/``after_step`` do nothing.

Where the hooks run, as read in the Lightning source this was written against (lightning 2.6.6,
paths under ``lightning/pytorch/``):

- ``after_backward`` in ``on_before_optimizer_step``: ``loops/optimization/automatic.py``
  ``_AutomaticOptimization.run`` (l.174-192) only runs the closure (forward + backward, under DDP's
  ``no_sync``, l.184) while ``fit_loop._should_accumulate()``, and calls ``_optimizer_step`` on the
  last micro-batch of each accumulation window (and on the last batch of the epoch); the closure
  divides each micro-batch loss by ``accumulate_grad_batches`` (l.83). The step goes through the
  precision plugin: ``plugins/precision/precision.py`` ``_wrap_closure`` (l.96-112) runs the
  closure, then ``_after_closure`` (l.84-93) calls the callbacks' ``on_before_optimizer_step``
  (l.87), then gradient clipping, then ``optimizer.step``. So the hook runs once per optimizer
  step, on the accumulated (DDP-averaged) gradients, before clipping.
- With a ``GradScaler`` (``precision="16-mixed"``), ``plugins/precision/amp.py``
  ``MixedPrecision.optimizer_step`` (l.67-98) runs the closure, ``scaler.unscale_(optimizer)``
  (l.88), then ``_after_closure`` (l.90), then ``scaler.step`` (l.95, which skips
  ``optimizer.step`` when it found inf/NaN). The hook therefore sees unscaled gradients, but
  only those of the parameters in that optimizer: ``on_fit_start`` checks that the method's
  parameters are in it, and the hook is skipped on a step the scaler skips (Gem-Miner's hook is
  itself a step). ``bf16-mixed`` has no scaler. On CPU ``precision="16-mixed"`` is replaced by
  ``bf16-mixed`` (``trainer/connectors/accelerator_connector.py`` l.478); a
  ``MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))`` plugin runs fp16.
- ``after_step`` in ``on_train_batch_end`` (``loops/training_epoch_loop.py`` l.375, after the
  optimizer step) of a batch whose ``on_before_optimizer_step`` ran the method's hook: once per
  optimizer step, whatever the accumulation.
- ``epoch_end`` in ``on_train_epoch_end``: ``loops/fit_loop.py`` l.482-484 runs it before the
  monitoring callbacks (``ModelCheckpoint``), so an epoch-end checkpoint holds the state after it.
- Checkpoints: ``trainer/trainer.py`` ``_run`` restores callbacks (``load_state_dict``) at l.1046,
  before ``strategy.setup`` moves the model to its device (l.1053) and before ``on_fit_start``
  (l.1057): the state is kept and applied in ``on_fit_start``, on the model's device.

Gem-Miner: its ``after_backward`` is the score step and clears the score gradients, so the
LightningModule's own optimizer sees none. Return an optimizer over the trainable parameters
(the scores) from ``configure_optimizers``: it never steps anything (its learning rate does not
matter), but a GradScaler unscales exactly its parameters. ``configure_optimizers`` returning
None also works without a scaler. Create GemMiner (and IMP) after moving the module to its
device and dtype: the callback raises if it finds their state elsewhere than the weights.

IMP's rounds (``prune_round``, ``rewind``, ``capture``) stay yours, between fits.
Multi-process: every rank runs the hooks (the method objects check their masks agree); one rank
writes the ticket. Supported: single device and DDP, automatic optimization; ``ddp_spawn`` and
strategies that handle accumulation themselves (DeepSpeed) are not.
"""

from __future__ import annotations

import os
from typing import Any

import torch

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
except ImportError:  # the standalone package
    try:
        import pytorch_lightning as pl
        from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
    except ImportError as error:
        raise ImportError("sparseticket.integrations.lightning needs Lightning (`lightning` or "
                          "`pytorch_lightning`): pip install 'sparseticket[lightning]'") from error

from sparseticket.methods.protocol import Method, check_method

__all__ = ["SparseTicketCallback"]


def _scaler(trainer: pl.Trainer) -> Any:
    """The precision plugin's GradScaler, or None."""
    return getattr(trainer.precision_plugin, "scaler", None)


def _scaler_found_inf(scaler: Any, optimizer: Any) -> bool:
    """Whether ``scaler.unscale_(optimizer)`` found inf/NaN this step (then ``scaler.step`` skips
    ``optimizer.step``). Reads GradScaler's per-optimizer state as ``GradScaler.step`` does."""
    state = getattr(scaler, "_per_optimizer_states", {}).get(id(optimizer), {})
    found = state.get("found_inf_per_device") or {}
    return bool(sum(float(value.item()) for value in found.values()))


class SparseTicketCallback(pl.Callback):
    """Runs ``method``'s hooks inside ``Trainer.fit`` and writes its ticket.

    ``method``: a ``sparseticket.Method`` (``EarlyBird``, ``WORM``, ``GemMiner``, ``IMP``: any of
    ``sparseticket.METHODS``), made from the LightningModule's bare network. ``stop_when_drawn``:
    stop training at the end of the epoch where ``method.drawn`` becomes True. ``ticket_path``:
    where rank zero writes the ticket when it is drawn and at the end of training (unless it was
    written when drawn, so a run that trains on keeps the drawn ticket); relative paths are under
    ``trainer.default_root_dir``; None writes nothing. ``saved_path`` holds the last path written.
    """

    def __init__(self, method: Any, *, stop_when_drawn: bool = True,
                 ticket_path: str | os.PathLike | None = "ticket.safetensors") -> None:
        method = check_method(method)
        if not isinstance(stop_when_drawn, bool):
            raise TypeError(f"stop_when_drawn must be a bool, got {stop_when_drawn!r}")
        if ticket_path is not None and not isinstance(ticket_path, (str, os.PathLike)):
            raise TypeError(f"ticket_path must be a path or None, got {type(ticket_path).__name__}")
        self.method: Method = method
        self.stop_when_drawn = stop_when_drawn
        self.ticket_path = ticket_path
        self.saved_path: str | None = None
        self._params: list[torch.Tensor] = []
        self._stepped = False  # the method's after_backward ran for this batch's optimizer step
        self._saved_when_drawn = False
        self._pending_state: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        """The key of this callback's state in a checkpoint (one per method class)."""
        return self._generate_state_key(method=type(self.method).__name__)

    # ----------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """``method.state_dict()`` (a state loaded but not yet applied is returned as loaded)."""
        return self._pending_state if self._pending_state is not None else self.method.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep ``state_dict`` for ``method.load_state_dict``, applied at the next ``on_fit_start``
        (Lightning restores callbacks before moving the model to its device)."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict from SparseTicketCallback.state_dict(), "
                            f"got {type(state_dict).__name__}")
        self._pending_state = state_dict

    def _apply_pending_state(self, trainer: pl.Trainer) -> None:
        """``method.load_state_dict`` with this fit's first optimizer and scheduler (IMP rewinds its
        captured states into them; the other methods ignore them)."""
        state, self._pending_state = self._pending_state, None
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        configs = trainer.lr_scheduler_configs
        scheduler = configs[0].scheduler if configs else None
        self.method.load_state_dict(state, optimizer=optimizer, scheduler=scheduler)

    # ----------------------------------------------------------------- fit
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check placement and that the optimizer holds the hooked parameters; apply a restored state."""
        self.method.check_placement()
        self._params = list(self.method.hooked_parameters())
        if _scaler(trainer) is not None and self._params:
            in_optimizers = {id(p) for optimizer in trainer.optimizers for group in optimizer.param_groups
                             for p in group["params"]}
            if any(id(p) not in in_optimizers for p in self._params):
                raise ValueError(f"{type(self.method).__name__}: under a GradScaler precision plugin the "
                                 "parameters whose gradients the method uses must be in the LightningModule's "
                                 "optimizer (Lightning unscales only those); configure_optimizers leaves some out")
        if self._pending_state is not None:
            self._apply_pending_state(trainer)
        self._stepped = False
        self._saved_when_drawn = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A fit that starts with the ticket already drawn (a resumed run) stops at once."""
        if self.stop_when_drawn and self.method.drawn:
            rank_zero_info(f"sparseticket: {type(self.method).__name__} ticket already drawn (epoch "
                           f"{self.method.epoch}); stopping")
            trainer.should_stop = True

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        """``method.after_backward()`` on the accumulated, unscaled gradients of this optimizer step."""
        if self._params and all(p.grad is None for p in self._params):
            return  # no backward this step (training_step returned None): nothing to act on
        scaler = _scaler(trainer)
        if scaler is not None and _scaler_found_inf(scaler, optimizer):
            return  # the scaler skips this optimizer step: so does the method
        self.method.after_backward()
        self._stepped = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        """``method.after_step()`` once after each optimizer step whose hook ran."""
        if self._stepped:
            self._stepped = False
            self.method.after_step()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """``method.epoch_end()``; log; on a new draw write the ticket and maybe stop."""
        was_drawn = self.method.drawn
        self.method.epoch_end()
        drawn = self.method.drawn
        self._log(trainer, pl_module, drawn)
        if drawn and not was_drawn:
            self.save_figure(trainer)
            self._saved_when_drawn = self.saved_path is not None
            found = getattr(self.method, "found_epoch", self.method.epoch)
            rank_zero_info(f"sparseticket: {type(self.method).__name__} ticket drawn at epoch {found}"
                           + (f", saved to {self.saved_path}" if self._saved_when_drawn else ""))
        if self.stop_when_drawn and drawn:
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the ticket (unless written when drawn); every rank builds it, rank zero writes."""
        if self._saved_when_drawn or self.ticket_path is None:
            return
        if self.method.epoch == 0:
            rank_zero_warn("SparseTicketCallback: no training epoch ended, so no ticket was written")
            return
        self.save_figure(trainer)
        rank_zero_info(f"sparseticket: {type(self.method).__name__} after {self.method.epoch} epochs "
                       f"(drawn: {self.method.drawn}), ticket saved to {self.saved_path}")

    # ----------------------------------------------------------------- helpers
    def _path(self, trainer: pl.Trainer) -> str:
        path = os.fspath(self.ticket_path)
        return path if os.path.isabs(path) else os.path.join(trainer.default_root_dir, path)

    def save_figure(self, trainer: pl.Trainer) -> None:
        if self.ticket_path is None:
            return
        ticket = self.method.ticket()  # on every rank: collective for a sharded IMP
        path = self._path(trainer)
        if trainer.is_global_zero:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            ticket.save(path)
        self.saved_path = path

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, drawn: bool) -> None:
        metrics = {"sparseticket/epoch": float(self.method.epoch), "sparseticket/drawn": float(drawn)}
        found = getattr(self.method, "found_epoch", None)
        if isinstance(found, int):
            metrics["sparseticket/found_epoch"] = float(found)
        if isinstance(getattr(type(self.method), "density", None), property):
            metrics["sparseticket/density"] = float(self.method.density)
        for name, value in metrics.items():
            # the values are equal on every rank: sync_dist averages equal numbers
            pl_module.log(name, value, on_step=False, on_epoch=True, logger=trainer.logger is not None,
                          sync_dist=trainer.world_size > 1)
