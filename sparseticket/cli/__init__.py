"""The ``sparseticket`` command line: search, compare and info (a user of the methods layer)."""
