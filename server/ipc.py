"""The frames front-end workers and the engine process exchange over their Unix socket."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import Any, cast

# Front end -> engine: call id, kind, method index, metadata bytes, body bytes, timeout in seconds
# (negative: the client set no deadline). Metadata and body follow the header.
REQUEST = struct.Struct("<QBBHId")
# Engine -> front end: call id, gRPC status code value (0 is OK), body bytes. The body is the
# serialized response, or the error message in UTF-8.
REPLY = struct.Struct("<QBI")

CALL = 0  # a unary RPC; the reply is its response
STREAM_ITEM = 1  # one ModelStreamInfer request; the reply is its ModelStreamInferResponse
CANCEL = 2  # the client went away or its deadline passed: stop working on that call
HELLO = 3  # the first frame of a worker, once it listens; the body is "INDEX PID"
# Engine -> front end: a REPLY with this call id (calls count from 1) is the server's health, its
# code 1 for SERVING and 0 for NOT_SERVING, so each worker's grpc.health.v1 says what ServerReady says.
HEALTH_CALL_ID = 0

NO_TIMEOUT = -1.0
FORWARDED_METADATA = ("traceparent", "tracestate")  # the only client metadata the engine reads


def _address(name: str) -> str:
    """The socket address for a name: '@name' is Linux's abstract namespace (no file to clean up)."""
    return "\0" + name[1:] if name.startswith("@") else name


def listen(name: str) -> socket.socket:
    """The engine's listening socket (made here: uvloop refuses abstract names as paths)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(_address(name))
    sock.listen(64)
    sock.setblocking(False)
    return sock


def connect(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(_address(name))
    sock.setblocking(False)
    return sock


def encode_metadata(pairs: tuple[tuple[str, str], ...]) -> bytes:
    return "\n".join(f"{key}\t{value}" for key, value in pairs).encode()


def decode_metadata(data: bytes) -> tuple[tuple[str, str], ...]:
    if not data:
        return ()
    return tuple(tuple(line.split("\t", 1)) for line in data.decode().split("\n"))  # type: ignore[misc]


class FrameWriter:
    """Gathers the frames written during one event-loop turn into one write (one syscall)."""

    __slots__ = ("transport", "_parts", "_is_scheduled", "_loop")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._parts: list[bytes] = []
        self._is_scheduled = False
        self._loop = asyncio.get_running_loop()

    def write(self, header: bytes, *chunks: bytes) -> None:
        self._parts.append(header)
        self._parts.extend(chunks)
        if not self._is_scheduled:
            self._is_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._is_scheduled = False
        if self._parts and not self.transport.is_closing():
            self.transport.write(b"".join(self._parts))
        self._parts.clear()


class FrameReader:
    """Splits a byte stream into (header fields, trailing bytes) frames.

    `trailing_bytes(fields)` says how many bytes follow a header; `on_frame(fields, data)` gets
    each whole frame, with data a bytes copy of what followed the header."""

    __slots__ = ("header", "trailing_bytes", "on_frame", "_buffer")

    def __init__(self, header: struct.Struct, trailing_bytes: Callable[[tuple[Any, ...]], int],
                 on_frame: Callable[[tuple[Any, ...], bytes], None]) -> None:
        self.header = header
        self.trailing_bytes = trailing_bytes
        self.on_frame = on_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        size = self.header.size
        offset, available = 0, len(buffer)
        while available - offset >= size:
            fields = self.header.unpack_from(buffer, offset)
            end = offset + size + self.trailing_bytes(fields)
            if end > available:
                break
            self.on_frame(fields, bytes(buffer[offset + size:end]))
            offset = end
        if offset:
            del buffer[:offset]


class FramedProtocol(asyncio.Protocol):
    """A socket of frames: incoming ones go to on_frame, outgoing ones through a FrameWriter."""

    def __init__(self, header: struct.Struct, trailing_bytes: Callable[[tuple[Any, ...]], int]) -> None:
        self._reader = FrameReader(header, trailing_bytes, self.on_frame)
        self.writer: FrameWriter | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.writer = FrameWriter(cast(asyncio.Transport, transport))  # uvloop's transport is not a subclass

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)

    def on_frame(self, fields: tuple[Any, ...], data: bytes) -> None:
        raise NotImplementedError
