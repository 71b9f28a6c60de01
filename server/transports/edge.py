"""What every transport applies at the edge, written once: TLS, the access policy, message and HTTP/2 limits."""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from infergate.server.access import AccessPolicy, parse_restricted_protocol
from infergate.server.tls import TlsOptions, ssl_context
from infergate.server.transports.h2_limits import DEFAULT_LIMITS, Http2Limits

WORKER_EDGE_ENV = "INFERGATE_WORKER_EDGE"  # how the engine hands its edge options to --workers processes


class Transport(Protocol):
    """One way of serving gRPC: start on an address, report health, stop in order (uvicorn's protocols)."""

    async def start(self, address: str) -> int:
        """Binds HOST:PORT (port 0: a free one) or unix:PATH and serves; returns the TCP port (0 for Unix)."""

    async def set_serving(self, is_serving: bool) -> None:
        """grpc.health.v1 status of the server and its service: SERVING or NOT_SERVING."""

    async def stop(self, grace_s: float) -> None:
        """Stops accepting, lets calls in flight finish for grace_s, then cancels what is left."""


@dataclass(slots=True)
class Edge:
    max_message_bytes: int
    tls: TlsOptions | None = None  # None: plaintext
    token_file: Path | None = None  # --grpc-auth-token-file
    restricted_protocols: tuple[str, ...] = ()  # --grpc-restricted-protocol values, as given
    limits: Http2Limits = DEFAULT_LIMITS  # HTTP/2 budgets and timeouts; grpcio gets the keepalive ones
    access: AccessPolicy = field(init=False)
    ssl_context: ssl.SSLContext | None = field(init=False)  # the native transport's, made (and checked) once

    def __post_init__(self) -> None:
        self.access = AccessPolicy(self.token_file,
                                   [parse_restricted_protocol(text) for text in self.restricted_protocols])
        self.ssl_context = ssl_context(self.tls) if self.tls is not None else None

    def to_environment(self) -> dict[str, str]:
        """The options for a worker process, through its environment (never its command line: `ps` shows
        that to every user, and restricted-protocol values are secrets)."""
        tls = self.tls
        return {WORKER_EDGE_ENV: json.dumps({
            "max_message_bytes": self.max_message_bytes,
            "tls": None if tls is None else [str(tls.cert_file), str(tls.key_file),
                                             str(tls.root_cert_file) if tls.root_cert_file else None, tls.is_mutual],
            "token_file": str(self.token_file) if self.token_file else None,
            "restricted_protocols": list(self.restricted_protocols),
            "limits": dataclasses.asdict(self.limits),
        })}


def edge_from_environment() -> Edge:
    """The engine's edge options, in a worker process."""
    fields: dict[str, Any] = json.loads(os.environ.pop(WORKER_EDGE_ENV))
    tls = fields["tls"]
    return Edge(max_message_bytes=int(fields["max_message_bytes"]),
                tls=None if tls is None else TlsOptions(Path(tls[0]), Path(tls[1]),
                                                        Path(tls[2]) if tls[2] else None, bool(tls[3])),
                token_file=Path(fields["token_file"]) if fields["token_file"] else None,
                restricted_protocols=tuple(fields["restricted_protocols"]), limits=Http2Limits(**fields["limits"]))
