"""Isolation: the backends that run commands in sandboxes, and the pieces they share."""
