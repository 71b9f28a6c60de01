"""Running a service method outside grpcio: the method table by index, and the context shim it gets."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from infergate.proto import grpc_service_pb2 as pb
from infergate.server.errors import invalid_message, status_of
from infergate.server.protocol import SERVICE
from infergate.server.service import UNARY_METHODS, InferenceService, guarded

OK = grpc.StatusCode.OK.value[0]


class Aborted(Exception):
    """What `context.abort` raises in the engine: the status travels back to the worker."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class ForwardedContext:
    """The slice of grpc's ServicerContext the handlers use, rebuilt from a forwarded call."""

    __slots__ = ("_deadline_s", "_metadata")

    def __init__(self, timeout_s: float, metadata: tuple[tuple[str, str], ...]) -> None:
        self._deadline_s = time.monotonic() + timeout_s if timeout_s >= 0 else None
        self._metadata = metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline_s is None else max(0.0, self._deadline_s - time.monotonic())

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def status_for(exc: BaseException) -> tuple[int, str]:
    """(gRPC status code value, message) for a failed call: an abort's own, else errors.status_of's."""
    if isinstance(exc, Aborted):
        return exc.code.value[0], exc.details
    code, message = status_of(exc)
    return code.value[0], message


def parse_or_abort(parse: Callable[[bytes], Any], body: bytes, what: str) -> Any:
    try:
        return parse(body)
    except DecodeError as exc:
        raise Aborted(grpc.StatusCode.INVALID_ARGUMENT, invalid_message(what, exc)) from None


BytesMethod = Callable[[bytes, Any], Awaitable[bytes]]


def bytes_methods(service: InferenceService) -> list[BytesMethod]:
    """Every method as request bytes -> response bytes, by index in the service descriptor.

    Failures raise (Aborted or the service's own errors), but for ModelStreamInfer, whose errors
    travel inside its response, as on grpcio."""
    methods: list[BytesMethod] = []
    for method in SERVICE.methods:
        parse = getattr(pb, method.input_type.name).FromString
        if method.name == "ModelStreamInfer":
            methods.append(_stream_item(parse, service._stream_one))
        elif method.name in UNARY_METHODS:
            methods.append(_unary(method.name, parse, guarded(method.name, getattr(service, method.name))))
        else:
            methods.append(_unimplemented(method.name))
    return methods


def _unary(name: str, parse: Callable[[bytes], Any], handle: Callable[[Any, Any], Awaitable[Any]]) -> BytesMethod:
    async def call(body: bytes, context: Any) -> bytes:
        response = await handle(parse_or_abort(parse, body, name), context)
        return response.SerializeToString()  # type: ignore[no-any-return]

    return call


def _stream_item(parse: Callable[[bytes], Any], stream_one: Callable[[Any, Any], Awaitable[Any]]) -> BytesMethod:
    async def call(body: bytes, context: Any) -> bytes:
        try:
            request = parse(body)
        except DecodeError as exc:
            response = pb.ModelStreamInferResponse(error_message=invalid_message("ModelStreamInfer", exc))
        else:
            response = await stream_one(request, context)
        return response.SerializeToString()  # type: ignore[no-any-return]

    return call


def _unimplemented(name: str) -> BytesMethod:
    async def call(body: bytes, context: Any) -> bytes:
        raise Aborted(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not supported by infergate")

    return call
