"""``python -m sparseticket``: the command line (``sparseticket --help``)."""

import sys

from sparseticket.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
