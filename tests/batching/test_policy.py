"""The batching decision, stepped without sleeping: a pure function of queue, wait time and limits."""

from __future__ import annotations

from infergate.batching.policy import BatchDecision, BatchLimits, QueuePolicy, decide, effective_timeout_us

LIMITS = BatchLimits(max_batch_size=8, max_queue_delay_us=500)


def test_empty_queue_waits_for_arrival() -> None:
    assert decide([], 0, LIMITS) == BatchDecision(0, 0, None)


def test_partial_batch_waits_for_the_rest_of_the_delay() -> None:
    assert decide([1, 1], 200, LIMITS) == BatchDecision(0, 0, 300)


def test_partial_batch_goes_when_the_oldest_has_waited_the_delay() -> None:
    assert decide([1, 2], 500, LIMITS) == BatchDecision(2, 3, None)


def test_full_batch_goes_at_once() -> None:
    assert decide([4, 4], 0, LIMITS) == BatchDecision(2, 8, None)


def test_next_request_that_would_not_fit_closes_the_batch() -> None:
    # 3 + 4 = 7 rows fit; the next 2 would make 9 > 8, so 7 go now.
    assert decide([3, 4, 2], 0, LIMITS) == BatchDecision(2, 7, None)


def test_requests_are_never_split() -> None:
    assert decide([8, 1], 0, LIMITS) == BatchDecision(1, 8, None)


def test_zero_delay_dispatches_whatever_is_there() -> None:
    limits = BatchLimits(max_batch_size=8, max_queue_delay_us=0)
    assert decide([1], 0, limits) == BatchDecision(1, 1, None)


def test_largest_preferred_size_goes_at_once() -> None:
    limits = BatchLimits(max_batch_size=8, max_queue_delay_us=500, preferred_batch_sizes=(2, 4))
    assert decide([1, 1, 1, 1, 1], 0, limits) == BatchDecision(4, 4, None)


def test_smaller_preferred_size_waits_then_cuts_there() -> None:
    limits = BatchLimits(max_batch_size=8, max_queue_delay_us=500, preferred_batch_sizes=(2, 4))
    assert decide([1, 1, 1], 100, limits) == BatchDecision(0, 0, 400)
    assert decide([1, 1, 1], 500, limits) == BatchDecision(2, 2, None)


def test_adaptive_delay_goes_when_the_next_arrival_is_not_expected_in_time() -> None:
    # Arrivals every 600 us on average: with 300 us of the delay left, waiting would gain nothing.
    assert decide([1], 200, LIMITS, mean_gap_us=600) == BatchDecision(1, 1, None)
    # Arrivals every 100 us: wait for the rest of the batch, as without adaptation.
    assert decide([1], 200, LIMITS, mean_gap_us=100) == BatchDecision(0, 0, 300)
    # The delay left shrinks as the oldest waits, so a 250 us gap stops the wait at 250 us.
    assert decide([1, 1], 240, LIMITS, mean_gap_us=250) == BatchDecision(0, 0, 260)
    assert decide([1, 1], 250, LIMITS, mean_gap_us=250) == BatchDecision(2, 2, None)


def test_adaptive_delay_off_waits_the_whole_delay() -> None:
    fixed = BatchLimits(max_batch_size=8, max_queue_delay_us=500, is_delay_adaptive=False)
    assert decide([1], 200, fixed, mean_gap_us=10_000) == BatchDecision(0, 0, 300)


def test_adaptive_delay_still_cuts_at_a_preferred_size() -> None:
    limits = BatchLimits(max_batch_size=8, max_queue_delay_us=500, preferred_batch_sizes=(2, 4))
    assert decide([1, 1, 1], 100, limits, mean_gap_us=1000) == BatchDecision(2, 2, None)


def test_without_dynamic_batching_each_request_runs_alone() -> None:
    limits = BatchLimits(max_batch_size=8, is_dynamic=False)
    assert decide([3, 1, 1], 0, limits) == BatchDecision(1, 3, None)


def test_model_without_batching_counts_one_row_per_request() -> None:
    limits = BatchLimits(max_batch_size=0, max_queue_delay_us=100)
    assert limits.max_rows == 1
    assert decide([1, 1], 0, limits) == BatchDecision(1, 1, None)


def test_request_timeout_override() -> None:
    no_default = QueuePolicy()
    assert effective_timeout_us(700, no_default) == 700
    strict = QueuePolicy(default_timeout_us=1000)
    assert effective_timeout_us(700, strict) == 1000
    assert effective_timeout_us(0, strict) == 1000
    overridable = QueuePolicy(default_timeout_us=1000, allow_timeout_override=True)
    assert effective_timeout_us(700, overridable) == 700
