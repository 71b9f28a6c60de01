"""Sliding windows of counter vectors: a ring of fixed-width time slots, summed on demand."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

SLOT_S = 10  # width of one slot, s: the windows move in 10 s steps
WINDOW_SLOTS = {"1m": 6, "5m": 30}  # window name -> slots it spans (the current, partial one included)


class SlidingWindows:
    """Int64 vectors of one shape, added into the slot of their time; a window sums its last slots.

    A window of n slots covers the current slot (partly elapsed) and the n-1 before it: between
    (n-1)*SLOT_S and n*SLOT_S seconds of data. Since start is kept apart in `total`, exactly.
    Not thread-safe: the caller holds its lock.
    """

    def __init__(self, shape: tuple[int, ...], start_ns: int, slot_s: int = SLOT_S,
                 slots: int = max(WINDOW_SLOTS.values())) -> None:
        self.slot_ns = slot_s * 1_000_000_000
        self.start_ns = start_ns
        self._ring = np.zeros((slots, *shape), np.int64)
        self._ring_slot = np.full(slots, -1, np.int64)  # which absolute slot each ring entry holds
        self.total = np.zeros(shape, np.int64)

    def _slot(self, at_ns: int) -> int:
        return (at_ns - self.start_ns) // self.slot_ns

    def add(self, at_ns: int, values: np.ndarray) -> None:
        self.total += values
        slot = self._slot(at_ns)
        index = slot % len(self._ring)
        if self._ring_slot[index] > slot:
            return  # older than the ring reaches: counted in total only
        if self._ring_slot[index] != slot:
            self._ring[index] = 0
            self._ring_slot[index] = slot
        self._ring[index] += values

    def window(self, slots: int, now_ns: int) -> np.ndarray:
        """The sum of the last `slots` slots up to now (the current one included)."""
        current = self._slot(now_ns)
        live = (self._ring_slot > max(current - slots, -1)) & (self._ring_slot <= current)
        summed: np.ndarray = self._ring[live].sum(axis=0)
        return summed

    def window_seconds(self, slots: int, now_ns: int) -> float:
        """How many seconds the window really covers: less than slots*SLOT_S right after start."""
        first_slot = max(self._slot(now_ns) - slots + 1, 0)
        return max(now_ns - (self.start_ns + first_slot * self.slot_ns), 1) / 1e9
