"""Deadline-aware admission: whether a request can still finish in time, from the work queued ahead of it."""

from __future__ import annotations

from dataclasses import dataclass

BATCH_TIME_SMOOTHING = 1 / 8  # weight of the newest batch in the mean batch time
DEVIATION_SMOOTHING = 1 / 4  # weight of the newest batch in the mean deviation (TCP's RTTVAR weight)
SLOW_BATCH_DEVIATIONS = 2  # a slow batch: the mean and this many mean deviations


@dataclass(frozen=True, slots=True)
class Backlog:
    """What is ahead of a new request at one model, as the batcher sees it when the request arrives."""

    requests_ahead: int  # queued at the request's priority level or above
    rows_ahead: int
    max_rows: int  # rows in one batch
    instances: int
    batch_us: float  # measured mean time of one batch, dispatch to outputs; 0 = not measured yet


def finish_us(backlog: Backlog, rows: int) -> tuple[int, int]:
    """(start, finish): how long until this request's batch starts and until it is done, at the least.

    A lower bound, so that a request is never refused that could have made it: the queue ahead drains in
    full batches on every instance at once, each taking the mean batch time, and the batches running now
    are already done. Under overload the batches are full and the bound is close; at light load it is
    the request's own batch."""
    if backlog.batch_us <= 0:
        return 0, 0
    batches = -(-(backlog.rows_ahead + rows) // backlog.max_rows)
    waves = -(-batches // max(backlog.instances, 1))
    return int((waves - 1) * backlog.batch_us), int(waves * backlog.batch_us)


def refusal(backlog: Backlog, rows: int, deadline_left_us: int | None, queue_timeout_us: int | None) -> str:
    """Why a request cannot finish in time, or "" to admit it.

    `deadline_left_us` is the client's deadline, from now (None: no deadline): the request must be done
    by then. `queue_timeout_us` is the queue policy's timeout (None: none): its batch must start by then.

    With nothing queued ahead it is admitted whatever the estimate: only a batch that runs updates the mean,
    so one slow batch (a cold start, a GC pause) would otherwise refuse an idle model's traffic for good."""
    if backlog.rows_ahead == 0:
        return ""
    start_us, end_us = finish_us(backlog, rows)
    if deadline_left_us is not None and end_us > deadline_left_us:
        limit = f"its deadline: {deadline_left_us} us left"
        needed_us = end_us
    elif queue_timeout_us is not None and start_us > queue_timeout_us:
        limit = f"its queue timeout of {queue_timeout_us} us"
        needed_us = start_us
    else:
        return ""
    return (f"cannot be run before {limit}, and the {backlog.requests_ahead} requests ({backlog.rows_ahead} rows) "
            f"queued ahead of it need at least {needed_us} us at {backlog.batch_us:.0f} us per batch of up to "
            f"{backlog.max_rows} rows on {backlog.instances} instance(s); refused without queueing, retry with a "
            "longer deadline or on another server")


def too_late_to_start(given_ns: int, left_ns: int, batch_us: float) -> bool:
    """Whether a queued request about to join a batch would be computed past its deadline: less than one mean
    batch time is left of it. Only a request that had at least one batch time when it came is dropped: one whose
    deadline was always shorter (at an idle model, after a slow batch raised the mean) runs, and its batch brings
    the mean back down; refusing it would refuse such traffic for good."""
    batch_ns = batch_us * 1000
    return batch_ns > 0 and given_ns >= batch_ns > left_ns


def late_start(left_us: int, waited_us: int, batch_us: float) -> str:
    """CannotFinish's reason for a request dropped from the queue by too_late_to_start."""
    return (f"cannot finish before its deadline: {left_us} us left after {waited_us} us in the queue, and a batch "
            f"takes {batch_us:.0f} us; dropped uncomputed, retry with a longer deadline or on another server")


def smoothed_batch_us(mean_us: float, deviation_us: float, batch_us: float) -> tuple[float, float]:
    """The mean batch time and its mean absolute deviation after one more batch (the deviation against the mean
    before it). The first batch sets the mean, and half of it the deviation: unsure, as TCP starts RTTVAR."""
    if mean_us <= 0:
        return batch_us, batch_us / 2
    error_us = batch_us - mean_us
    return (mean_us + error_us * BATCH_TIME_SMOOTHING,
            deviation_us + (abs(error_us) - deviation_us) * DEVIATION_SMOOTHING)
