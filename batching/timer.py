"""PreciseTimer: sub-millisecond callbacks onto an event loop.

asyncio's timers sleep in epoll_wait, whose timeout is whole milliseconds, so a 500 us
max_queue_delay would really wait 1-2 ms. This timer waits on a condition variable in
its own thread (microsecond resolution) and hands the callback to the loop when due.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import Callable

# Delays at or above this go to asyncio's own timers: their ms rounding no longer matters.
LOOP_TIMER_MIN_US = 5_000


class TimerHandle:
    __slots__ = ("is_cancelled",)

    def __init__(self) -> None:
        self.is_cancelled = False

    def cancel(self) -> None:
        self.is_cancelled = True


class PreciseTimer:
    """One thread serving every batcher's short delays; started on first use."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[int, int, TimerHandle, asyncio.AbstractEventLoop, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def call_at(self, when_ns: int, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> TimerHandle:
        """Runs callback on loop at time.monotonic_ns() == when_ns (or just after)."""
        handle = TimerHandle()
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="infergate-timer", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (when_ns, next(self._seq), handle, loop, callback))
            if self._heap[0][2] is handle:
                self._cond.notify()
        return handle

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                when_ns, _, handle, loop, callback = self._heap[0]
                remaining_ns = when_ns - time.monotonic_ns()
                if remaining_ns > 0:
                    self._cond.wait(remaining_ns / 1e9)
                    continue
                heapq.heappop(self._heap)
            if not handle.is_cancelled and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(_fire, handle, callback)
                except RuntimeError:
                    pass  # the loop closed between the check and the call


def _fire(handle: TimerHandle, callback: Callable[[], None]) -> None:
    # Checked again on the loop thread: a cancel may have raced the hand-over.
    if not handle.is_cancelled:
        callback()


PRECISE_TIMER = PreciseTimer()
