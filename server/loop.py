"""Event-loop plumbing of every server process: which loop runs (uvloop when it imports, as uvicorn
chooses), and answering a pipelined stream in request order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")
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


async def in_request_order(requests: AsyncIterator[R], start: Callable[[R], Awaitable[T]]) -> AsyncIterator[T]:
    """Starts each request as it arrives and yields the results in request order.

    A failed read (the client cancelled) is re-raised after the results before it; on exit, work
    not yet yielded is cancelled."""
    pending: asyncio.Queue[asyncio.Future[T] | None] = asyncio.Queue()

    async def read() -> None:
        try:
            async for request in requests:
                pending.put_nowait(asyncio.ensure_future(start(request)))
        finally:
            pending.put_nowait(None)

    reader = asyncio.ensure_future(read())
    try:
        while (item := await pending.get()) is not None:
            yield await item
        await reader
    finally:
        reader.cancel()
        while not pending.empty():
            if (item := pending.get_nowait()) is not None:
                item.cancel()
