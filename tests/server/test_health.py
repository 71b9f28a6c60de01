"""server/health.py as pure logic: statuses, Check's answers, Watch subscriptions and the end, without a transport."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from grpc_health.v1 import health_pb2

from infergate.models.errors import InvalidInput
from infergate.server.health import NOT_SERVING, SERVICE_UNKNOWN, SERVING, HealthState, UnknownService

INFERENCE = "inference.GRPCInferenceService"


def _request(service: str = "") -> bytes:
    return health_pb2.HealthCheckRequest(service=service).SerializeToString()  # type: ignore[no-any-return]


def _status(reply: bytes) -> int:
    return health_pb2.HealthCheckResponse.FromString(reply).status  # type: ignore[no-any-return]


def _watch(health: HealthState, service: str = "") -> tuple[list[int | None], Callable[[], None]]:
    """A Watch whose replies are kept as statuses, None for its end; returns them and the unsubscribe."""
    seen: list[int | None] = []
    unsubscribe = health.watch(_request(service), lambda reply: seen.append(None if reply is None else _status(reply)))
    return seen, unsubscribe


def test_both_services_are_not_serving_until_set() -> None:
    health = HealthState()
    assert _status(health.check(_request())) == NOT_SERVING
    assert _status(health.check(_request(INFERENCE))) == NOT_SERVING
    health.set_serving(True)
    assert _status(health.check(_request())) == SERVING
    assert _status(health.check(_request(INFERENCE))) == SERVING
    health.set_serving(False)
    assert _status(health.check(_request(INFERENCE))) == NOT_SERVING


def test_check_unknown_service_is_not_found() -> None:
    with pytest.raises(UnknownService) as info:
        HealthState().check(_request("no.such.Service"))
    assert info.value.status.value == "NOT_FOUND"
    assert info.value.message == "unknown service 'no.such.Service'"


@pytest.mark.parametrize("method", ["check", "watch"])
def test_a_body_that_does_not_parse_is_invalid_input(method: str) -> None:
    health = HealthState()
    seen: list[bytes | None] = []
    with pytest.raises(InvalidInput) as info:
        if method == "check":
            health.check(b"\x0a\x05ab")
        else:
            health.watch(b"\x0a\x05ab", seen.append)
    assert info.value.message.startswith(f"the health {method.capitalize()} request is not a valid protobuf message: ")
    assert seen == [] and health.watchers == {}


def test_watch_gets_the_current_status_then_each_change_only() -> None:
    health = HealthState()
    seen, _ = _watch(health, INFERENCE)
    health.set_serving(True)
    health.set_serving(True)  # no change: nothing sent
    health.set("", NOT_SERVING)  # another service: nothing sent
    health.set_serving(False)
    assert seen == [NOT_SERVING, SERVING, NOT_SERVING]


def test_watch_of_an_unknown_service_waits_for_it() -> None:
    health = HealthState()
    seen, _ = _watch(health, "later.Service")
    health.set("later.Service", SERVING)
    assert seen == [SERVICE_UNKNOWN, SERVING]
    assert _status(health.check(_request("later.Service"))) == SERVING


def test_a_watch_that_left_gets_nothing_more() -> None:
    health = HealthState()
    seen, unsubscribe = _watch(health)
    unsubscribe()
    health.set_serving(True)
    health.end()
    assert seen == [NOT_SERVING]


def test_end_sends_the_last_status_ends_every_watch_and_freezes() -> None:
    health = HealthState()
    health.set_serving(True)
    server, inference = _watch(health), _watch(health, INFERENCE)
    health.end()
    assert server[0] == inference[0] == [SERVING, NOT_SERVING, None]
    health.set_serving(True)  # a set after the end is ignored, as grpcio's enter_graceful_shutdown has it
    health.end()  # and a second end changes nothing
    assert _status(health.check(_request())) == NOT_SERVING
    assert server[0] == [SERVING, NOT_SERVING, None]


def test_end_after_not_serving_sends_no_repeat() -> None:
    """The server sets NOT_SERVING, then ends: a Watch hears the change once, then its end."""
    health = HealthState()
    health.set_serving(True)
    seen, _ = _watch(health)
    health.set_serving(False)
    health.end()
    assert seen == [SERVING, NOT_SERVING, None]


def test_a_watch_started_while_ending_gets_the_status_and_ends_at_once() -> None:
    health = HealthState()
    health.end()
    seen, unsubscribe = _watch(health, INFERENCE)
    assert seen == [NOT_SERVING, None]
    unsubscribe()  # the client leaving after the end is harmless
    assert health.watchers == {}


def test_a_watch_may_leave_while_the_end_is_sent() -> None:
    """A transport's finish() runs its on-close (the unsubscribe) from inside the end callback."""
    health = HealthState()
    calls: list[bytes | None] = []
    unsubscribes: list[Callable[[], None]] = []

    def on_reply(reply: bytes | None) -> None:
        calls.append(reply)
        if reply is None:
            unsubscribes[0]()

    unsubscribes.append(health.watch(_request(), on_reply))
    health.end()
    assert [None if reply is None else _status(reply) for reply in calls] == [NOT_SERVING, None]
