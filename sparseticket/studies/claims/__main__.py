"""``python -m sparseticket.studies.claims``: the same as ``sparseticket reproduce``."""

from sparseticket.studies.claims import main

raise SystemExit(main())
