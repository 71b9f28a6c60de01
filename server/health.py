"""grpc.health.v1 apart from any transport: statuses by service, Check's answer, Watch subscriptions, the end."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from infergate.models.errors import InferError, InvalidInput, Status
from infergate.server.errors import invalid_message
from infergate.server.protocol import SERVICE_NAME

HEALTH_SERVICE: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name  # "grpc.health.v1.Health"
SERVICES = ("", SERVICE_NAME)  # the health-checked names: the whole server, and the inference service
SERVING, NOT_SERVING, SERVICE_UNKNOWN = (health_pb2.HealthCheckResponse.SERVING,
                                         health_pb2.HealthCheckResponse.NOT_SERVING,
                                         health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
# Each status's HealthCheckResponse as sent: every Watch gets the same bytes, serialized once.
REPLIES: dict[int, bytes] = {status: health_pb2.HealthCheckResponse(status=status).SerializeToString()
                             for status in health_pb2.HealthCheckResponse.ServingStatus.values()}

OnReply = Callable[[bytes | None], None]  # a Watch's sink: each HealthCheckResponse, then None when it ends


class UnknownService(InferError):
    status = Status.NOT_FOUND

    def __init__(self, service: str) -> None:
        super().__init__(f"unknown service {service!r}")


def requested_service(body: bytes, method: str) -> str:
    """The service a HealthCheckRequest names; raises InvalidInput when the body does not parse."""
    try:
        return str(health_pb2.HealthCheckRequest.FromString(body).service)
    except DecodeError as exc:
        raise InvalidInput(invalid_message(f"health {method}", exc)) from None


class HealthState:
    """The statuses a server sets as it starts and stops, and who watches them; transports only carry bytes."""

    def __init__(self, services: tuple[str, ...] = SERVICES) -> None:
        # NOT_SERVING until the server says otherwise: a call between bind and set_serving is not yet served.
        self.statuses: dict[str, int] = dict.fromkeys(services, NOT_SERVING)
        self.watchers: dict[str, set[OnReply]] = {}
        self.is_ending = False  # shutting down: statuses are final, every Watch has ended, a new one ends at once

    def set(self, service: str, status: int) -> None:
        """Sets one status; each Watch of that service hears of a change. Ignored once ending."""
        if not self.is_ending:
            self._change(service, status)

    def set_serving(self, is_serving: bool) -> None:
        for service in list(self.statuses):
            self.set(service, SERVING if is_serving else NOT_SERVING)

    def check(self, body: bytes) -> bytes:
        """Check's answer to a request body; raises InvalidInput or UnknownService (NOT_FOUND)."""
        service = requested_service(body, "Check")
        if service not in self.statuses:
            raise UnknownService(service)
        return REPLIES[self.statuses[service]]

    def watch(self, body: bytes, on_reply: OnReply) -> Callable[[], None]:
        """Starts a Watch: on_reply gets the current status now (SERVICE_UNKNOWN for a name never set), then
        each change, then None when the server ends. Returns what to call when the client leaves first.
        Raises InvalidInput before subscribing when the body does not parse."""
        service = requested_service(body, "Watch")
        on_reply(REPLIES[self.statuses.get(service, SERVICE_UNKNOWN)])
        if self.is_ending:
            on_reply(None)
            return _nothing
        watchers = self.watchers.setdefault(service, set())
        watchers.add(on_reply)
        return lambda: watchers.discard(on_reply)

    def end(self) -> None:
        """Shutdown (grpcio's enter_graceful_shutdown): every status NOT_SERVING for good, then every Watch
        gets that last status and ends; later sets are ignored."""
        if self.is_ending:
            return
        for service in list(self.statuses):
            self._change(service, NOT_SERVING)
        self.is_ending = True
        watchers, self.watchers = self.watchers, {}
        for sinks in watchers.values():
            for on_reply in list(sinks):
                on_reply(None)

    def _change(self, service: str, status: int) -> None:
        # Only a change is sent, as grpcio does: the protocol promises the current status and each change.
        if self.statuses.get(service) == status:
            return
        self.statuses[service] = status
        for on_reply in list(self.watchers.get(service, ())):
            on_reply(REPLIES[status])


def _nothing() -> None:
    """The unsubscribe of a Watch that already ended."""
