"""The one place that maps infergate errors to gRPC status codes."""

from __future__ import annotations

import logging
import uuid

import grpc

from infergate.models.errors import InferError

logger = logging.getLogger(__name__)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Returns (code, message) for any exception; unexpected ones become INTERNAL with an id
    to find the traceback in the server log, never the traceback itself."""
    if isinstance(exc, InferError):
        return grpc.StatusCode[exc.status.value], exc.message
    error_id = uuid.uuid4().hex[:12]
    logger.error("internal error %s", error_id, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (id {error_id}); the server log has the details"
