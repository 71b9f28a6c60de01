"""Graceful shutdown's refusal, one rule for every transport: which calls a draining server turns away, and how."""

from __future__ import annotations

from infergate.server.protocol import SERVICE_NAME

# Sent with UNAVAILABLE, which clients may retry on another server; says why, unlike a connection reset.
DRAINING_MESSAGE = "the server is shutting down; retry on another server"
SIGNAL_EXIT_BASE = 128  # shells report death by signal N as 128 + N
_REFUSED_PREFIX = f"/{SERVICE_NAME}/"


def is_refused_while_draining(path: str) -> bool:
    """Inference-service calls are refused once draining; health still answers (NOT_SERVING) and reflection too."""
    return path.startswith(_REFUSED_PREFIX)


def second_signal_exit_status(signal_number: int) -> int:
    """A second SIGTERM/SIGINT exits at once with 128 + the signal (143, 130): what a supervisor would see had
    the signal killed the process, so it is never mistaken for a clean drain's 0."""
    return SIGNAL_EXIT_BASE + signal_number
