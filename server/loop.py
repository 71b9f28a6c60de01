"""The event loop a server process runs on: uvloop when it imports (as uvicorn chooses), else asyncio's."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
LOOPS = ("auto", "asyncio", "uvloop")


def run_on_loop(main: Coroutine[Any, Any, T], loop: str) -> T:
    """Runs main to completion on the chosen loop; `uvloop` fails loudly when it is not installed."""
    if loop in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                main.close()
                raise SystemExit("--loop uvloop: uvloop is not installed (pip install uvloop)") from None
        else:
            return uvloop.run(main)
    return asyncio.run(main)
