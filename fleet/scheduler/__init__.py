"""Queues and placement (pure functions) and the loop that drives them."""
