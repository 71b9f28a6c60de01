"""Errors a request or a model can raise, each carrying the gRPC status it maps to."""

from __future__ import annotations

import enum


class Status(enum.Enum):
    """The subset of gRPC status codes infergate returns; server/ maps them by name."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"


class InferError(Exception):
    """Base of every error a client may see; `status` says which gRPC code it becomes."""

    status = Status.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Relayed(InferError):
    """An error whose status is another error's, or chosen where it is raised, with a message of its own:
    e.g. a cascade's stage failing, said of the cascade.json field that names the stage."""

    def __init__(self, message: str, status: Status) -> None:
        super().__init__(message)
        self.status = status


class InvalidInput(InferError):
    """A request field has a value the model cannot accept."""

    status = Status.INVALID_ARGUMENT


class RowError(InvalidInput):
    """A value in one row of an assembled batch that the model rejects; the batcher fails only the
    request that sent the row, with the error rebuilt at that request's own row (batching/faults.py)."""

    def __init__(self, where: str, row: int, cause: Exception) -> None:
        self.where = where  # what rejected it, e.g. "model 'm' input 'dense'"
        self.row = row  # in the batch the error was raised on
        self.cause = cause  # why, naming the same row (a kernels error keeps its fields as attributes)
        super().__init__(f"{where}: {cause}")


class ModelNotFound(InferError):
    status = Status.NOT_FOUND

    def __init__(self, name: str, version: str = "") -> None:
        where = f"'{name}' version {version}" if version else f"'{name}'"
        super().__init__(f"model {where} is not in the model repository")


class ModelUnavailable(InferError):
    status = Status.UNAVAILABLE

    def __init__(self, name: str, version: str, reason: str) -> None:
        label = f"'{name}' version {version}" if version else f"'{name}'"
        super().__init__(f"model {label} is not ready: {reason}")


class QueueFull(InferError):
    status = Status.RESOURCE_EXHAUSTED

    def __init__(self, model: str, max_queue_size: int,
                 field: str = "dynamic_batching.default_queue_policy.max_queue_size") -> None:
        super().__init__(f"model '{model}' queue is full: {max_queue_size} requests already waiting ({field}); "
                         "retry later")


class TooManyInFlight(InferError):
    """The server-wide limit on inference requests received and not yet answered."""

    status = Status.RESOURCE_EXHAUSTED

    def __init__(self, limit: int) -> None:
        super().__init__(f"the server already has {limit} inference requests in flight (--max-inflight-requests "
                         f"{limit}); retry later or on another server")


class CannotFinish(InferError):
    """Refused at admission: the work queued ahead means the request would miss its deadline anyway."""

    status = Status.DEADLINE_EXCEEDED

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"request to model '{model}' {reason}")


class ExecutionTimeout(InferError):
    """A model execution ran past its limit: its requests fail and the instance is replaced."""

    status = Status.DEADLINE_EXCEEDED

    def __init__(self, model: str, timeout_s: float, requests: int) -> None:
        super().__init__(f"model '{model}' execution ran past its limit of {timeout_s:g} s "
                         "(--model-execution-timeout-s, or the model's parameter model_execution_timeout_s); "
                         f"the batch of {requests} request(s) failed and the instance was replaced")


class DeadlineExceeded(InferError):
    status = Status.DEADLINE_EXCEEDED

    def __init__(self, model: str, waited_us: int) -> None:
        super().__init__(f"request to model '{model}' timed out after {waited_us} us in the queue, before it was run")


class ConfigError(InferError):
    """A config.pbtxt or model file the repository cannot load."""

    status = Status.INVALID_ARGUMENT


class Unsupported(InferError):
    status = Status.UNIMPLEMENTED


class NotAllowed(InferError):
    """The server's mode forbids this call (e.g. model control without explicit mode)."""

    status = Status.FAILED_PRECONDITION


class NotFound(InferError):
    """A named thing other than a model (e.g. a shared-memory region) does not exist."""

    status = Status.NOT_FOUND


class AlreadyExists(InferError):
    status = Status.ALREADY_EXISTS


class TooLarge(InferError):
    """A request the protocol allows but that is above one of the server's size limits."""

    status = Status.RESOURCE_EXHAUSTED

    def __init__(self, what: str, size: int, limit: int, unit: str) -> None:
        super().__init__(f"{what} is {size} {unit}, above the server's limit of {limit} {unit}")
