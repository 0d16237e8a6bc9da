"""Studies built on the driver: the papers' claims (``sparseticket reproduce``) and the reports."""
