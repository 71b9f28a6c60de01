"""The one place that maps infergate errors to gRPC status codes."""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc

from infergate.models.errors import InferError

logger = logging.getLogger(__name__)


def code_of(exc: BaseException) -> grpc.StatusCode:
    """The status a failure reaches the client with, without logging it (for counters by status)."""
    if isinstance(exc, InferError):
        return grpc.StatusCode[exc.status.value]
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Returns (code, message) for any exception; unexpected ones become INTERNAL with an id
    to find the traceback in the server log, never the traceback itself."""
    if isinstance(exc, InferError):
        return code_of(exc), exc.message
    error_id = uuid.uuid4().hex[:12]
    logger.error("internal error %s", error_id, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (id {error_id}); the server log has the details"


def invalid_message(what: str, exc: Exception) -> str:
    """The INVALID_ARGUMENT message for a request body that does not parse, on every transport."""
    return f"the {what} request is not a valid protobuf message: {exc}"
