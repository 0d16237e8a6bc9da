"""The search driver: one training loop and find_ticket() for every registered method."""
