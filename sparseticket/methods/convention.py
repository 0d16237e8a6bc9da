"""``convention``: whose semantics a method follows where this package's default differs by design.

- ``"default"``: this package's choices. Exact counts (a round prunes or freezes exactly the number
  it computes, ties broken by index), the optimizer state captured at the rewind step restored at
  every rewind, EarlyBird/WORM queues that hold the masks of trained epochs only.
- ``"original"``: the authors' own code, bit for bit on the same inputs: open_lth for IMP, the
  Rare Gems repository for Gem-Miner, the Early-Bird-Tickets and WORM repositories for EarlyBird
  and WORM.

Each method's docstring lists what the option changes; docs/fidelity.md has the whole table.
"""

from __future__ import annotations

CONVENTIONS = ("default", "original")


def check_convention(convention: object) -> str:
    """``convention`` itself if it is one of ``CONVENTIONS``; ValueError naming the argument otherwise."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(map(repr, CONVENTIONS))}, got {convention!r}")
    return str(convention)
