"""The harness's one error type: a problem with the user's request, reported as a message and a non-zero exit."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class BenchError(Exception):
    """Bad input or an unusable target: the CLI prints the message (no traceback) and exits with `exit_code`."""

    exit_code = 2
