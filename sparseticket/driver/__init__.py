"""The search driver: ``find_ticket()`` runs search -> ticket -> fine-tune -> evaluate for every
registered method, through one training loop (``training.train_steps``). The command line,
``compare``, ``reproduce`` and the reports are its users.

- ``search``: ``find_ticket``, ``TicketSearch`` (resumable, with a ``RunStore``), ``TicketResult``
- ``jobs``: how each kind of method is driven (any method, channel methods, IMP, baselines)
- ``recipe``: ``Schedule``, the training recipe; ``schedules``: per-iteration LR schedules
- ``data``: ``TrainingData``, the batches per phase and epoch; ``processes``: rank and device
- ``training``: the training loop, evaluation, BatchNorm recalibration
- ``config``: ``RunConfig``, every setting of a search (a run folder's ``config.json``)
"""

from sparseticket.driver.data import TrainingData
from sparseticket.driver.recipe import Schedule
from sparseticket.driver.search import (
    MemoryStore,
    RunStore,
    TicketResult,
    TicketSearch,
    TrainingDiverged,
    find_ticket,
)

__all__ = ["MemoryStore", "RunStore", "Schedule", "TicketResult", "TicketSearch", "TrainingData", "TrainingDiverged",
           "find_ticket"]
