"""Who may call what: bearer tokens and Triton's restricted protocol groups, checked once per call at the edge.

One policy serves every transport: the native HTTP/2 transport asks `check` with the request's
headers, and grpcio (in-process or in --workers processes) asks it through `AccessInterceptor`.
Secrets (tokens, restricted header values) are kept as SHA-256 digests, compared in constant time,
and never written to a log or a message.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from infergate.server.health import HEALTH_SERVICE
from infergate.server.protocol import METHOD_NAMES, SERVICE_NAME

logger = logging.getLogger(__name__)

AUTHORIZATION = b"authorization"
RESTRICTED_HEADER_PREFIX = "triton-grpc-protocol-"  # Triton's: the header is this prefix + the flag's key
MAX_TOKEN_FILE_BYTES = 1 << 20  # a token file is a short list; a huge one is a mistake, not a token list
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED.value[0]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]  # what Triton answers for a restricted protocol

# Triton's protocol groups (--grpc-restricted-protocol) and the methods each holds. `trace` and
# `logging` exist in Triton; infergate serves neither RPC, so those groups restrict nothing here.
GROUP_METHODS: dict[str, tuple[str, ...]] = {
    "health": ("ServerLive", "ServerReady", "ModelReady"),
    "metadata": ("ServerMetadata", "ModelMetadata"),
    "inference": ("ModelInfer", "ModelStreamInfer"),
    "shared-memory": ("SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
                      "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister"),
    "model-config": ("ModelConfig",),
    "model-repository": ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"),
    "statistics": ("ModelStatistics",),
    "trace": ("TraceSetting",),
    "logging": ("LogSettings",),
}


def _group_of_path() -> dict[bytes, str]:
    paths = {f"/{SERVICE_NAME}/{name}".encode(): group
             for group, names in GROUP_METHODS.items() for name in names if name in METHOD_NAMES}
    # Triton's health group also covers the standard gRPC health checking protocol.
    paths.update({f"/{HEALTH_SERVICE}/{name}".encode(): "health" for name in ("Check", "Watch")})
    # Server reflection, v1alpha and v1 alike, is in no group: it needs a token when
    # tokens are on, and no restriction covers it.
    return paths


GROUP_OF_PATH = _group_of_path()


class AccessConfigError(ValueError):
    """An access flag is unusable; the message names the flag and what was expected."""


@dataclass(frozen=True, slots=True)
class Restriction:
    groups: tuple[str, ...]  # Triton group names this restriction covers
    header: bytes  # the full header name a caller must send (triton-grpc-protocol-<key>)
    value_digest: bytes  # SHA-256 of the value it must carry


def parse_restricted_protocol(text: str) -> Restriction:
    """One --grpc-restricted-protocol value, `<group>[,<group>...]:<key>=<value>` (Triton's syntax)."""
    groups_text, colon, header_text = text.partition(":")
    key, equals, value = header_text.partition("=")
    if not colon or not equals or not groups_text or not key:
        raise AccessConfigError("--grpc-restricted-protocol expects <group>[,<group>...]:<key>=<value>, got "
                                f"{_redacted(text)!r}")
    groups = tuple(group.strip() for group in groups_text.split(","))
    for group in groups:
        if group not in GROUP_METHODS:
            raise AccessConfigError(f"--grpc-restricted-protocol: unknown protocol group {group!r}; expected "
                                    f"one of {', '.join(GROUP_METHODS)}")
    header = (RESTRICTED_HEADER_PREFIX + key.strip()).lower()
    if not all(c.isascii() and (c.isalnum() or c in "-_.") for c in header):
        raise AccessConfigError(f"--grpc-restricted-protocol: header key {key!r} may hold only letters, digits, "
                                "'-', '_' and '.'")
    return Restriction(groups, header.encode(), _digest(value.encode()))


def read_tokens(path: Path) -> frozenset[bytes]:
    """The SHA-256 digests of a token file's tokens: one per line; blank lines and '#' comments skipped."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise AccessConfigError(f"--grpc-auth-token-file {path} cannot be read: {exc.strerror}") from None
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise AccessConfigError(f"--grpc-auth-token-file {path} is larger than {MAX_TOKEN_FILE_BYTES} bytes")
    digests = set()
    for number, line in enumerate(data.splitlines(), 1):
        token = line.strip()
        if not token or token.startswith(b"#"):
            continue
        if not all(0x21 <= b <= 0x7E for b in token):
            raise AccessConfigError(f"--grpc-auth-token-file {path} line {number}: a token must be printable "
                                    "ASCII without spaces")
        digests.add(_digest(token))
    if not digests:
        raise AccessConfigError(f"--grpc-auth-token-file {path} holds no tokens (one per line)")
    return frozenset(digests)


class AccessPolicy:
    """Bearer tokens (every RPC but health) and restricted groups; `check` answers a call's path and headers."""

    def __init__(self, token_file: Path | None = None, restrictions: Iterable[Restriction] = ()) -> None:
        self.token_file = token_file
        self._token_digests = read_tokens(token_file) if token_file is not None else None
        self._restriction_of: dict[bytes, Restriction] = {}
        seen: dict[str, Restriction] = {}
        for restriction in restrictions:
            for group in restriction.groups:
                if group in seen:  # Triton's rule: a protocol belongs to at most one group
                    raise AccessConfigError(f"--grpc-restricted-protocol: protocol group {group!r} is named "
                                            "more than once")
                seen[group] = restriction
        for path, group in GROUP_OF_PATH.items():
            if group in seen:
                self._restriction_of[path] = seen[group]
        names = {AUTHORIZATION} if token_file is not None else set()
        self.header_names = frozenset(names | {r.header for r in seen.values()})

    @property
    def is_open(self) -> bool:
        """No token file and no restriction: every call is allowed, so transports skip the check."""
        return not self.header_names

    def reload_tokens(self) -> None:
        """Re-reads the token file (SIGHUP); on a bad file the old tokens stay and the reason is logged."""
        if self.token_file is None:
            return
        try:
            self._token_digests = read_tokens(self.token_file)
        except AccessConfigError as exc:
            logger.error("%s; keeping the %d tokens read before", exc, len(self._token_digests or ()))
            return
        logger.info("re-read --grpc-auth-token-file %s: %d tokens", self.token_file, len(self._token_digests))

    def check(self, path: bytes, headers: Mapping[bytes, bytes]) -> tuple[int, str] | None:
        """None when the call may go on, else (gRPC status code value, message) to refuse it with."""
        group = GROUP_OF_PATH.get(path)
        if self._token_digests is not None and group != "health":
            refusal = self._check_token(headers.get(AUTHORIZATION))
            if refusal is not None:
                return UNAUTHENTICATED, refusal
        restriction = self._restriction_of.get(path)
        if restriction is not None and not hmac.compare_digest(
                _digest(headers.get(restriction.header, b"")), restriction.value_digest):
            return UNAVAILABLE, f"This protocol is restricted, expecting header '{restriction.header.decode()}'"
        return None

    def _check_token(self, authorization: bytes | None) -> str | None:
        if authorization is None:
            return "missing credentials: this server requires 'authorization: Bearer <token>' metadata"
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return "malformed credentials: expected 'authorization: Bearer <token>' metadata"
        supplied = _digest(token.strip())
        is_valid = False
        assert self._token_digests is not None
        for digest in self._token_digests:  # no early exit: time does not depend on which token matched
            is_valid |= hmac.compare_digest(supplied, digest)
        return None if is_valid else "invalid bearer token"


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


def _redacted(text: str) -> str:
    """A restricted-protocol flag with its value hidden, for error messages."""
    head, equals, _ = text.partition("=")
    return head + (equals + "<redacted>" if equals else "")


# -- grpcio ----------------------------------------------------------------------------


class AccessInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The policy on grpcio servers: a refused call gets the policy's status before its handler runs."""

    def __init__(self, policy: AccessPolicy) -> None:
        self.policy = policy

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                handler_call_details: Any) -> Any:
        method: str = handler_call_details.method
        wanted = self.policy.header_names
        headers = {key.encode(): value.encode() if isinstance(value, str) else value
                   for key, value in handler_call_details.invocation_metadata or ()
                   if key.encode() in wanted}
        refusal = self.policy.check(method.encode(), headers)
        handler = await continuation(handler_call_details)
        if refusal is None or handler is None:
            return handler
        return _refusing_handler(handler, _STATUS_BY_VALUE[refusal[0]], refusal[1])


_STATUS_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def _refusing_handler(handler: Any, code: grpc.StatusCode, message: str) -> Any:
    """A handler of the same streaming shape as the real one, that ends the call with code and message."""

    async def refuse(request: Any, context: Any) -> None:
        await context.abort(code, message)

    async def refuse_stream(request: Any, context: Any) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - abort raises; this makes the function an async generator

    codec = dict(request_deserializer=handler.request_deserializer,
                 response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream, **codec)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **codec)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **codec)
    return grpc.unary_unary_rpc_method_handler(refuse, **codec)
