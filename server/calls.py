"""Running a service method outside grpcio: the method table by index, and the context shim it gets."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from infergate.proto import grpc_service_pb2 as pb
from infergate.server.service import UNARY_METHODS, InferenceService, guarded

OK = grpc.StatusCode.OK.value[0]
METHOD_NAMES = tuple(m.name for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods)


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


@dataclass(frozen=True, slots=True)
class Method:
    parse: Callable[[bytes], Any]
    handle: Callable[[Any, Any], Awaitable[Any]]


def engine_methods(service: InferenceService) -> list[Method]:
    """The handlers by method index, in the service descriptor's order (the index the workers send)."""
    methods = []
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        parse = getattr(pb, method.input_type.name).FromString
        if method.name == "ModelStreamInfer":
            methods.append(Method(parse, service._stream_one))
        elif method.name in UNARY_METHODS:
            methods.append(Method(parse, guarded(method.name, getattr(service, method.name))))
        else:
            methods.append(Method(parse, _unimplemented(method.name)))
    return methods


def _unimplemented(name: str) -> Callable[[Any, Any], Awaitable[Any]]:
    async def call(request: Any, context: Any) -> Any:
        raise Aborted(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not supported by infergate")

    return call
