"""``python -m sparseticket.experiments.claims``: the same as ``sparseticket reproduce``."""

from sparseticket.experiments.claims import main

raise SystemExit(main())
