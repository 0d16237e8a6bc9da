"""Trainer integrations: callbacks that run a method's hooks inside a trainer's own loop.

- ``sparseticket.integrations.huggingface.SparseTicketCallback``: a ``transformers.TrainerCallback``
  (extra ``sparseticket[hf]``).
- ``sparseticket.integrations.lightning.SparseTicketCallback``: a Lightning ``Callback``
  (extra ``sparseticket[lightning]``).

Each is imported on its own, so neither trainer is needed to import the other or the package.
"""
