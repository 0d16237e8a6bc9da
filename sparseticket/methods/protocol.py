"""The ``Method`` protocol: what every lottery-ticket method offers a training loop.

A method never owns the loop. The loop (a user's, the driver's, a trainer callback's) calls
``after_backward()`` between ``loss.backward()`` and ``optimizer.step()``, ``after_step()`` right
after the step and ``epoch_end()`` at the end of every epoch; ``ticket()`` is the result and
``state_dict()``/``load_state_dict()`` checkpoint it. ``METHOD_HOOKS`` and ``METHOD_ATTRIBUTES``
name the members once, for every integration that checks an object before running it.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from sparseticket.methods.ticket import Ticket

__all__ = ["KINDS", "METHOD_ATTRIBUTES", "METHOD_HOOKS", "Method", "check_method", "missing_members"]

# "channel": channel masks (EarlyBird, WORM), physically prunable; "weight": weight masks (GemMiner, IMP)
KINDS = ("channel", "weight")
# the callable members, in the order a loop meets them
METHOD_HOOKS = ("after_backward", "after_step", "epoch_end", "ticket", "state_dict", "load_state_dict",
                "hooked_parameters", "check_placement")
# the plain members (``drawn`` is a property)
METHOD_ATTRIBUTES = ("name", "kind", "drawn", "epoch")


@runtime_checkable
class Method(Protocol):
    """A lottery-ticket method: hooks for any training loop, its ticket and its checkpoint state.

    ``name``: its key in ``sparseticket.METHODS`` (also ``Ticket.method``); ``kind``: one of
    ``KINDS``; ``epoch``: ``epoch_end`` calls so far. ``isinstance(obj, Method)`` checks that
    every member exists (not their signatures).
    """

    name: str
    kind: str
    epoch: int

    @property
    def drawn(self) -> bool:
        """True once the ticket is ready (EarlyBird/WORM: drawn; GemMiner: mined; IMP: never by a hook)."""
        ...

    def after_backward(self) -> object:
        """Between ``loss.backward()`` and ``optimizer.step()``, on unscaled gradients (any return value
        is informational: GemMiner returns its score step's kept count)."""
        ...

    def after_step(self) -> None:
        """Right after ``optimizer.step()``."""
        ...

    def epoch_end(self) -> bool:
        """At the end of every epoch; True when something happened this epoch (EarlyBird/WORM: the
        ticket was newly drawn; GemMiner: a freezing round ran; IMP: never). ``drawn`` is the state."""
        ...

    def ticket(self) -> Ticket:
        """The current ticket."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """A snapshot of everything the hooks change (tensors and plain values)."""
        ...

    def load_state_dict(self, state: dict[str, Any], *, optimizer: Any = None, scheduler: Any = None) -> None:
        """Restore a ``state_dict()``; a method that captured optimizer/scheduler states (IMP) rewinds
        the ones passed, the others ignore them."""
        ...

    def hooked_parameters(self) -> list[torch.Tensor]:
        """The tensors whose ``.grad`` ``after_backward`` reads or edits."""
        ...

    def check_placement(self) -> None:
        """RuntimeError if the method's state no longer sits with the model's weights (model moved or
        cast after the method was created)."""
        ...


def missing_members(method: object) -> list[str]:
    """The ``Method`` members ``method`` lacks: hooks that are not callable, then absent attributes."""
    missing = [hook for hook in METHOD_HOOKS if not callable(getattr(method, hook, None))]
    return missing + [attribute for attribute in METHOD_ATTRIBUTES if not hasattr(method, attribute)]


def check_method(method: object, argument: str = "method") -> Method:
    """``method`` itself if it satisfies ``Method`` with a known ``kind``; else TypeError/ValueError
    naming ``argument`` and what it lacks."""
    missing = missing_members(method)
    if missing:
        known = "EarlyBird, WORM, GemMiner, IMP"  # the built-in ones (registry.METHODS imports this module)
        raise TypeError(f"{argument} must be a sparseticket method ({known}, or any sparseticket.Method with "
                        f"{', '.join(METHOD_HOOKS + METHOD_ATTRIBUTES)}); {type(method).__name__} lacks "
                        f"{', '.join(missing)}")
    if method.kind not in KINDS:
        raise ValueError(f"{argument}.kind must be one of {KINDS}, got {method.kind!r}")
    return method
