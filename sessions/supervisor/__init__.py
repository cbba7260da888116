"""Supervision: restart policies, the supervision tree, event delivery."""

from sessions.supervisor._policy import Backoff, RestartIntensity

__all__ = ["Backoff", "RestartIntensity"]
