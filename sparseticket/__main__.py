"""``python -m sparseticket``: for now, the tour of the fused ops (sparseticket.demo)."""

from sparseticket.demo import main

if __name__ == "__main__":
    main()
