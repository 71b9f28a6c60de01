"""Sliding windows, stepped with an injected clock (no sleeping)."""

from __future__ import annotations

import numpy as np

from infergate.server.telemetry.windows import SlidingWindows

S = 1_000_000_000  # one second, ns


def _one() -> np.ndarray:
    return np.ones(2, np.int64)


def test_windows_keep_the_last_slots_and_total_keeps_all() -> None:
    w = SlidingWindows((2,), start_ns=0, slot_s=10, slots=30)
    for second in range(0, 600, 5):  # two samples per 10 s slot for 10 minutes
        w.add(second * S, _one())
    now = 599 * S
    assert w.total[0] == 120
    assert w.window(6, now)[0] == 12  # slots 54..59: the last 60 s
    assert w.window(30, now)[0] == 60  # the last 300 s
    assert w.window_seconds(6, now) == 59.0  # 540 s .. 599 s


def test_window_after_idle_is_empty() -> None:
    w = SlidingWindows((2,), start_ns=0, slot_s=10, slots=30)
    w.add(5 * S, _one())
    assert w.window(6, 30 * S)[0] == 1
    assert w.window(6, 61 * S)[0] == 0  # slot 0 left the 1-minute window
    assert w.window(30, 1000 * S)[0] == 0
    assert w.total[0] == 1


def test_ring_reuse_resets_old_slots() -> None:
    w = SlidingWindows((2,), start_ns=0, slot_s=10, slots=3)
    w.add(0, _one())
    w.add(30 * S, _one())  # same ring entry as slot 0, three slots later
    assert w.window(3, 30 * S)[0] == 1
    w.add(1 * S, _one())  # late sample for a slot the ring no longer holds: total only
    assert w.window(3, 30 * S)[0] == 1 and w.total[0] == 3


def test_window_seconds_right_after_start() -> None:
    w = SlidingWindows((1,), start_ns=100 * S, slot_s=10, slots=30)
    assert w.window_seconds(6, 103 * S) == 3.0
