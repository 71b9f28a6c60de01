"""The batching decision: a pure function of the queue, the limits and the clock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """Triton's ModelQueuePolicy for one priority level."""

    max_queue_size: int = 0  # requests waiting at this level; 0 = unbounded
    default_timeout_us: int = 0  # time a request may wait in the queue; 0 = no limit
    allow_timeout_override: bool = False  # may a request's `timeout` parameter set its own limit?


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """What the batcher may do for one model (Triton's dynamic_batching semantics)."""

    max_batch_size: int  # rows in one execution; 0 = the model does not batch
    is_dynamic: bool = True  # False: each request runs alone (no dynamic_batching in the config)
    max_queue_delay_us: int = 0  # longest the oldest request waits for a fuller batch
    preferred_batch_sizes: tuple[int, ...] = ()  # row counts to dispatch as soon as reached
    priority_levels: int = 1  # levels 1 (highest) .. priority_levels
    default_priority_level: int = 1
    queue_policies: dict[int, QueuePolicy] = field(default_factory=dict)  # by level; missing -> default
    default_queue_policy: QueuePolicy = QueuePolicy()
    # Stop waiting for a fuller batch once the next arrival is expected after the delay runs out
    # (see decide); parameters { key: "adaptive_queue_delay" value: { string_value: "off" } } turns it off.
    is_delay_adaptive: bool = True

    def policy_for(self, level: int) -> QueuePolicy:
        return self.queue_policies.get(level, self.default_queue_policy)

    @property
    def max_rows(self) -> int:
        """Row budget of one batch (a non-batching model runs one request of one 'row' at a time)."""
        return max(self.max_batch_size, 1)


@dataclass(frozen=True, slots=True)
class BatchDecision:
    """What to do with the queue now."""

    count: int  # requests to take from the head of the queue, in dispatch order; 0 = wait
    rows: int  # rows those requests add up to
    wake_in_us: int | None  # if waiting: when the decision may change by time alone; None = only on arrival


WAIT_FOR_ARRIVAL = BatchDecision(0, 0, None)


def decide(rows: Sequence[int], oldest_wait_us: int, limits: BatchLimits,
           mean_gap_us: float = 0.0) -> BatchDecision:
    """Decides whether to dispatch a batch from a queue of requests with these row counts.

    `rows` lists the head of the queue in dispatch order (it need not be longer than
    max_batch_size entries); `oldest_wait_us` is how long its first request has waited.
    A batch is dispatched when it is full, when the next request would not fit, when it
    reaches the largest preferred size, or when the oldest request has waited
    max_queue_delay_us; then it is cut at the largest preferred size it contains, if any.

    `mean_gap_us` is the recent mean time between arrivals. With an adaptive delay the batch
    also goes as soon as that gap is at least the delay still left: the next request is not
    expected in time to join, so waiting would only add latency (one client in a closed loop
    never fills a batch). Under load the gap is short and batches fill as before.
    """
    if not rows:
        return WAIT_FOR_ARRIVAL
    if not limits.is_dynamic:
        return BatchDecision(1, rows[0], None)
    budget = limits.max_rows
    count, total = 0, 0
    preferred = set(limits.preferred_batch_sizes)
    best_preferred = (0, 0)  # (count, rows) of the longest prefix whose rows are a preferred size
    for n in rows:
        if total + n > budget:
            break
        count += 1
        total += n
        if total in preferred:
            best_preferred = (count, total)
    is_full = total == budget or count < len(rows)
    largest_preferred = max(preferred, default=0)
    if best_preferred[1] and best_preferred[1] == largest_preferred:
        return BatchDecision(best_preferred[0], best_preferred[1], None)
    remaining_us = limits.max_queue_delay_us - oldest_wait_us
    if is_full or remaining_us <= 0 or (limits.is_delay_adaptive and mean_gap_us >= remaining_us):
        if best_preferred[1] and not is_full:
            return BatchDecision(best_preferred[0], best_preferred[1], None)
        return BatchDecision(count, total, None)
    return BatchDecision(0, 0, remaining_us)


def effective_timeout_us(requested_us: int, policy: QueuePolicy) -> int:
    """The queue timeout for one request: its own `timeout` parameter where the policy allows it."""
    if requested_us > 0 and (policy.allow_timeout_override or policy.default_timeout_us == 0):
        return requested_us
    return policy.default_timeout_us
