"""infergate's own gRPC transport: an asyncio protocol per HTTP/2 connection, the gRPC call layer, and the server.

grpcio's Python server costs about 400 us of CPU per unary call on this project's machines, far
more than decoding, batching and encoding a request (see bench/results). This transport speaks the
gRPC-over-HTTP/2 wire protocol directly on the event loop, so a call costs a few frame parses and one
write. HTTP/2 itself (states, validation, budgets, flow control) is h2_state's; what a route sees is
a call's headers, its messages, its end, or its reset.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import resource
import ssl
import struct
import zlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, cast

import grpc

from infergate.server.calls import Aborted, ForwardedContext, status_for
from infergate.server.draining import DRAINING_MESSAGE, is_refused_while_draining
from infergate.server.ipc import FrameWriter
from infergate.server.metrics import HTTP2_GOAWAYS
from infergate.server.transports.h2_limits import DEFAULT_LIMITS, Http2Limits
from infergate.server.transports.h2_state import (
    CLOSED,
    DATA,
    DEFAULT_WINDOW_BYTES,
    FRAME,
    HEADER_TABLE_BYTES,
    MAX_WINDOW_BYTES,
    NO_ERROR,
    OPEN,
    SETTINGS,
    SETTINGS_HEADER_TABLE_SIZE,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE,
    SETTINGS_MAX_HEADER_LIST_SIZE,
    WINDOW_UPDATE,
    H2ServerConnection,
    H2Stream,
    frame,
    literal_header,
)

__all__ = ["Access", "Http2Connection", "Http2Limits", "Http2Server", "Route", "Stream"]

logger = logging.getLogger(__name__)

MAX_GRPC_MESSAGE_BYTES = 4 * 1024  # encoded grpc-message cap: grpc clients refuse big metadata
LOG_INTERVAL_S = 10.0  # at most one log line per this many seconds for GOAWAYs, and for refused connections
MAX_TICK_S = 1.0  # how often a connection checks its timeouts, at most (a quarter of the shortest, if less)
MIN_TICK_S = 0.01

# (path, is gRPC content-type, grpc-timeout in seconds or -1, grpc-encoding, forwarded trace metadata,
#  the values of the headers the access policy reads)
RequestFields = tuple[bytes, bool, float, bytes | None, tuple[tuple[str, str], ...], tuple[tuple[bytes, bytes], ...]]

# Our header blocks use HPACK literals without indexing, so they stay valid whatever the peer's table.
RESPONSE_HEADERS = b"\x88" + b"\x0f\x10\x10application/grpc"  # :status 200 (static 8), content-type (static 31)
UNSUPPORTED_MEDIA_HEADERS = b"\x08\x03415"  # :status 415, for a request that is not gRPC
TIMEOUT_UNITS_S = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9}
ZLIB_WBITS = {b"gzip": 31, b"deflate": 15}  # grpc-encoding -> zlib's wbits (gzip wrapper, zlib wrapper)
CANCELLED, UNIMPLEMENTED, INTERNAL, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, UNAVAILABLE = (
    grpc.StatusCode.CANCELLED.value[0], grpc.StatusCode.UNIMPLEMENTED.value[0], grpc.StatusCode.INTERNAL.value[0],
    grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
    grpc.StatusCode.UNAVAILABLE.value[0])


def status_trailers(code: int, message: str) -> bytes:
    block = literal_header(b"grpc-status", str(code).encode())
    if message:
        encoded = percent_encode(message.encode())
        while len(encoded) > MAX_GRPC_MESSAGE_BYTES:  # cut whole characters, never half of one
            message = message[:len(message) * 3 // 4]
            encoded = percent_encode(message.encode())
        block += literal_header(b"grpc-message", encoded)
    return block


def percent_encode(message: bytes) -> bytes:
    """gRPC's grpc-message encoding: printable ASCII but '%' as is, every other byte as %XX."""
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in message):
        return message
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in message)


def parse_timeout_s(value: bytes) -> float:
    """grpc-timeout ('100m', '5S', ...) in seconds; raises ValueError when malformed."""
    if not 2 <= len(value) <= 9 or value[-1] not in TIMEOUT_UNITS_S or not value[:-1].isdigit():
        raise ValueError(value)
    return int(value[:-1]) * TIMEOUT_UNITS_S[value[-1]]


OK_TRAILERS = status_trailers(0, "")


class Access(Protocol):
    """The access policy a server may check each call against (server/access.py implements it)."""

    @property
    def header_names(self) -> frozenset[bytes]:
        """The request header names `check` reads."""

    def check(self, path: bytes, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        """None to let the call through, else (gRPC status code value, message) to answer it with."""


class Route:
    """What a path does. Exactly one of the three is set.

    unary(body, context) -> response bytes; per_message(body, context) -> one response per request
    message, sent in order (ModelStreamInfer, reflection); watch(body, stream) registers a stream
    that the route itself writes to until the client leaves (health Watch)."""

    __slots__ = ("unary", "per_message", "watch")

    def __init__(self, *, unary: Callable[[bytes, Any], Awaitable[bytes]] | None = None,
                 per_message: Callable[[bytes, Any], Awaitable[bytes]] | None = None,
                 watch: Callable[[bytes, Stream], None] | None = None) -> None:
        self.unary, self.per_message, self.watch = unary, per_message, watch


class Stream(H2Stream):
    """One call: what arrived, what is owed, and its HTTP/2 state and windows."""

    __slots__ = ("route", "connection", "context", "inbox", "request", "encoding", "outbox", "trailers",
                 "is_headers_sent", "is_done", "task", "replies", "timer", "is_discarding", "on_close",
                 "is_partial", "last_data_s")

    def __init__(self, connection: Http2Connection, stream_id: int, fields: RequestFields) -> None:  # type: ignore[override]
        path, _, timeout_s, encoding, metadata, _ = fields
        # H2Stream's fields, set here rather than through its __init__: one call less per request.
        self.id = stream_id
        self.state = OPEN
        self.send_window = connection.peer_initial_window
        self.recv_window = connection.limits.stream_window_bytes
        self.unacked_bytes = 0
        self.content_length = -1
        self.received_bytes = 0
        self.opened_s = connection.now
        self.route = connection.routes.get(path) or _NO_ROUTE
        self.connection = connection
        self.context = ForwardedContext(timeout_s, metadata)
        self.inbox = bytearray()  # request bytes not yet taken as messages
        self.request: bytes | None = None
        self.encoding = encoding
        self.outbox = bytearray()
        self.trailers: bytes | None = None
        self.is_headers_sent = False
        self.is_done = False  # our trailers are written (or queued behind the outbox), or the call was dropped
        self.task: asyncio.Future[None] | None = None
        self.replies: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.is_discarding = False
        self.on_close: Callable[[], None] | None = None
        self.is_partial = False  # the inbox ends inside a message the client has not finished sending
        self.last_data_s = connection.now

    def send_message(self, body: bytes) -> None:
        """Writes one gRPC message on this stream (headers first, if not sent yet)."""
        self.connection.send_message(self, body)

    def finish(self, code: int = 0, message: str = "") -> None:
        self.connection.finish(self, code, message)


class Http2Connection(H2ServerConnection, asyncio.Protocol):
    """One client connection: HTTP/2 from h2_state, calls started on the routes, their answers written."""

    stream_class = Stream
    __slots__ = ("server", "routes", "max_message_bytes", "access", "transport", "writer", "drained", "ticker", "_loop")

    def __init__(self, server: Http2Server) -> None:
        loop = asyncio.get_running_loop()
        H2ServerConnection.__init__(self, server.limits, loop.time, server.connection_window_bytes)
        self.server = server
        self.routes = server.routes
        self.max_message_bytes = server.max_message_bytes
        self.access = server.access
        self.transport: asyncio.Transport | None = None
        self.writer: FrameWriter | None = None
        self.drained: asyncio.Future[None] | None = None
        self.ticker: asyncio.TimerHandle | None = None
        self._loop = loop

    # -- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.writer = FrameWriter(self.transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
            self.server.note_refusal("a TLS client that did not negotiate h2 by ALPN")
            self.is_closed = True
            self.transport.close()
            return
        if not self.server.admit(self):
            self.is_closed = True
            self.transport.close()
            return
        limits = self.limits
        settings = b"".join(struct.pack(">HI", key, value) for key, value in (
            (SETTINGS_HEADER_TABLE_SIZE, HEADER_TABLE_BYTES),
            (SETTINGS_MAX_CONCURRENT_STREAMS, limits.max_concurrent_streams),
            (SETTINGS_INITIAL_WINDOW_SIZE, limits.stream_window_bytes),
            (SETTINGS_MAX_FRAME_SIZE, limits.max_frame_bytes),
            (SETTINGS_MAX_HEADER_LIST_SIZE, limits.max_header_list_bytes)))
        self.write(frame(SETTINGS, 0, 0, settings))
        if self.connection_window > DEFAULT_WINDOW_BYTES:
            self.write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.connection_window - DEFAULT_WINDOW_BYTES)))
        self.ticker = self._loop.call_later(self.server.tick_s, self._on_tick)

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_closed = True
        self.server.connections.discard(self)
        if self.ticker is not None:
            self.ticker.cancel()
            self.ticker = None
        for stream in list(self.streams.values()):
            self._drop(cast(Stream, stream))
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    data_received = H2ServerConnection.receive

    def pause_writing(self) -> None:
        # The client is not reading what we send: stop reading from it, so a peer that floods
        # PINGs or calls without reading answers cannot make the server buffer without bound.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def write(self, header: bytes, *parts: bytes) -> None:
        assert self.writer is not None
        self.writer.write(header, *parts)

    def flush_writes(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close_transport(self) -> None:
        self.flush_writes()
        if self.transport is not None:
            self.transport.close()

    def _on_goaway(self, code: int, reason: str, message: str) -> None:
        self.server.count_goaway(code, reason, message)

    def go_away_gracefully(self) -> asyncio.Future[None]:
        """Shutdown: no new calls; the future is done when the calls in flight are."""
        self.drained = self._loop.create_future()
        if self.is_closed:
            self.drained.set_result(None)
        else:
            self.go_away(NO_ERROR, "the server is shutting down", "shutdown", is_closing=False)
            self._close_if_idle()
        return self.drained

    def _on_peer_goaway(self) -> None:
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if (self.is_going_away or self.is_peer_going_away) and not self.streams and self.transport is not None:
            self.is_closed = True
            self.close_transport()

    def _on_tick(self) -> None:
        self.ticker = None
        self.tick(self._loop.time())
        if not self.is_closed:
            self.flush_writes()
            self.ticker = self._loop.call_later(self.server.tick_s, self._on_tick)

    def tick(self, now: float) -> None:
        super().tick(now)
        timeout_s = self.limits.message_read_timeout_s
        if self.is_closed or not timeout_s or not self.streams:
            return
        for h2_stream in list(self.streams.values()):
            stream: Stream = h2_stream  # type: ignore[assignment]
            if (not stream.is_done and stream.state is OPEN and now - stream.last_data_s >= timeout_s
                    and (stream.is_partial or (stream.route.unary is not None and stream.request is None))):
                self.finish(stream, CANCELLED, f"the request message stopped arriving: nothing for {timeout_s:g} s")

    # -- requests ------------------------------------------------------------------------

    def _request_fields(self, headers: list[tuple[bytes, bytes]]) -> RequestFields:
        access_names = self.access.header_names if self.access is not None else frozenset()
        return _parse_request_headers(headers, access_names)

    def _on_request(self, h2_stream: H2Stream, fields: RequestFields, is_end: bool) -> None:
        stream: Stream = h2_stream  # type: ignore[assignment]
        path, is_grpc, timeout_s, _, _, access_values = fields
        if not is_grpc:
            stream.is_done = True
            self.send_headers(stream, UNSUPPORTED_MEDIA_HEADERS, True)
            return
        if self.access is not None:
            denied = self.access.check(path, dict(access_values))
            if denied is not None:
                self.finish(stream, *denied)
                return
        if stream.route is _NO_ROUTE:
            self.finish(stream, UNIMPLEMENTED, f"method {path.decode('latin-1')} is not served here")
            return
        if self.server.is_draining and is_refused_while_draining(path.decode("latin-1")):
            # A call on a connection opened during the drain (the GOAWAY'd ones refuse new streams).
            self.finish(stream, UNAVAILABLE, DRAINING_MESSAGE)
            return
        if timeout_s >= 0:
            stream.timer = self._loop.call_later(timeout_s, self._deadline_passed, stream)
        if is_end:
            self._on_remote_end(stream)

    def _on_data(self, h2_stream: H2Stream, data: bytes, is_end: bool) -> None:
        stream: Stream = h2_stream  # type: ignore[assignment]  # stream_class makes every stream a Stream
        stream.last_data_s = self.now
        size = len(data)
        if not size:
            pass
        elif stream.is_discarding or stream.is_done:
            self.consume(stream, size)
        elif (not stream.inbox and size >= 5 and int.from_bytes(data[1:5], "big") == size - 5
                and size - 5 <= self.max_message_bytes
                and len(stream.replies) < (self.limits.max_messages_in_flight_per_stream or 1 << 62)):
            # The usual case: one whole message in one frame, often with END_STREAM (then only the
            # connection's window is owed).
            if stream.state is OPEN:
                self.consume(stream, size)
            else:
                self.unacked_bytes += size
                if self.unacked_bytes >= self.connection_window >> 2:
                    self._credit_connection()
            self._on_message(stream, data[0], data[5:])
        else:
            stream.inbox += data
            self._take_messages(stream)
        if is_end:
            self._on_remote_end(stream)

    def _take_messages(self, stream: Stream) -> None:
        """Takes the whole messages in the inbox, while the stream has room for more work; the window
        is given back only for what was taken, so what waits is bounded by the window."""
        inbox, cap = stream.inbox, self.limits.max_messages_in_flight_per_stream
        stream.is_partial = False
        while len(inbox) >= 5 and not stream.is_discarding and not stream.is_done:
            if cap and stream.route.per_message is not None and len(stream.replies) >= cap:
                return  # backpressure: the client waits for window until replies finish
            length = int.from_bytes(inbox[1:5], "big")
            if length > self.max_message_bytes:
                stream.is_discarding = True
                self.consume(stream, len(inbox))
                inbox.clear()
                self.finish(stream, RESOURCE_EXHAUSTED,
                            f"Received message larger than max ({length} vs. {self.max_message_bytes})")
                return
            if len(inbox) < 5 + length:
                stream.is_partial = True
                self.make_room(stream, 5 + length - len(inbox))
                return
            flag, message = inbox[0], bytes(inbox[5:5 + length])
            del inbox[:5 + length]
            self.consume(stream, 5 + length)
            self._on_message(stream, flag, message)
        stream.is_partial = 0 < len(inbox) < 5

    def _on_message(self, stream: Stream, flag: int, message: bytes) -> None:
        if flag:
            decompressed = self._decompress(stream, message)
            if decompressed is None:
                return
            message = decompressed
        route = stream.route
        if route.unary is not None:
            if stream.request is not None:
                stream.is_discarding = True
                self.finish(stream, UNIMPLEMENTED, "a unary method got more than one request message")
                return
            stream.request = message
        elif route.per_message is not None:
            reply = asyncio.ensure_future(route.per_message(message, stream.context))
            stream.replies.append(reply)
            reply.add_done_callback(lambda _: self._send_replies(stream))
        elif route.watch is not None:
            route.watch(message, stream)

    def _decompress(self, stream: Stream, message: bytes) -> bytes | None:
        """A compressed message's bytes, never more than max_message_bytes; None when the call was failed."""
        stream.is_discarding = True  # until it decompresses cleanly
        wbits = ZLIB_WBITS.get(stream.encoding or b"")
        if wbits is None:
            self.finish(stream, UNIMPLEMENTED, f"grpc-encoding {(stream.encoding or b'').decode('latin-1')!r} is not "
                                               "supported; send identity, gzip or deflate")
            return None
        decompressor = zlib.decompressobj(wbits)
        try:
            message = decompressor.decompress(message, self.max_message_bytes + 1)
        except zlib.error as exc:
            self.finish(stream, INTERNAL, f"cannot decompress the request message: {exc}")
            return None
        if len(message) > self.max_message_bytes:
            self.finish(stream, RESOURCE_EXHAUSTED,
                        f"Received message larger than max (more than {self.max_message_bytes} bytes decompressed)")
            return None
        if not decompressor.eof:
            self.finish(stream, INTERNAL, "cannot decompress the request message: it is truncated")
            return None
        stream.is_discarding = False
        return message

    def _on_remote_end(self, h2_stream: H2Stream) -> None:
        stream: Stream = h2_stream  # type: ignore[assignment]
        if stream.is_done:
            return
        if stream.route.unary is not None:
            if stream.request is None:
                self.finish(stream, UNIMPLEMENTED if not stream.inbox else INTERNAL,
                            "the call carried no request message" if not stream.inbox
                            else "the request ended inside a message")
            else:
                stream.task = asyncio.ensure_future(self._run_unary(stream, stream.route.unary, stream.request))
        elif stream.route.per_message is not None:
            self._send_replies(stream)

    # -- calls ---------------------------------------------------------------------------

    async def _run_unary(self, stream: Stream, unary: Callable[[bytes, Any], Awaitable[bytes]], request: bytes) -> None:
        try:
            body = await unary(request, stream.context)
        except asyncio.CancelledError:
            return
        except Exception as exc:
            self.finish(stream, *status_for(exc))
        else:
            self.send_message(stream, body, OK_TRAILERS)

    def _send_replies(self, stream: Stream) -> None:
        """Writes the finished replies at the head of a stream's queue, in request order."""
        replies = stream.replies
        while replies and replies[0].done() and not stream.is_done:
            reply = replies.popleft()
            if reply.cancelled():
                continue
            if (exc := reply.exception()) is not None:
                self.finish(stream, *status_for(exc))
                return
            self.send_message(stream, reply.result())
        if stream.is_done:
            return
        if stream.inbox and not stream.is_discarding:
            self._take_messages(stream)  # room for work again: take what waited
        if not replies and stream.state is not OPEN and not stream.is_done:
            if stream.inbox:
                self.finish(stream, INTERNAL, "the request stream ended inside a message")
            else:
                self.finish(stream)

    def _deadline_passed(self, stream: Stream) -> None:
        stream.timer = None
        if not stream.is_done:
            self.finish(stream, DEADLINE_EXCEEDED, "Deadline Exceeded")
        elif stream.outbox or stream.trailers is not None:
            self._reset(stream, 0x8)  # CANCEL: the answer is stuck behind the client's window, give up on it
        self.flush_writes()

    # -- writing -------------------------------------------------------------------------

    def send_message(self, stream: Stream, body: bytes, trailers: bytes | None = None) -> None:
        """One gRPC message, and the trailers after it when given; respects both send windows."""
        if stream.is_done:
            return
        data = b"\x00" + len(body).to_bytes(4, "big") + body
        if (trailers is not None and not stream.is_headers_sent and not stream.outbox
                and self.send_answer(stream, RESPONSE_HEADERS, data, trailers)):
            stream.is_headers_sent = stream.is_done = True  # the usual unary answer, sent whole
            if stream.timer is not None:
                stream.timer.cancel()
                stream.timer = None
            return
        if not stream.is_headers_sent:
            stream.is_headers_sent = True
            self.send_headers(stream, RESPONSE_HEADERS, False)
        self.sent_count += 1
        size = len(data)
        if trailers is not None:
            stream.is_done = True
        if (not stream.outbox and size <= self.send_window and size <= stream.send_window
                and size <= self.peer_max_frame):
            self.send_window -= size
            stream.send_window -= size
            self.write(FRAME.pack(size << 8 | DATA, 0, stream.id), data)
            if trailers is not None:
                self._write_trailers(stream, trailers)
            return
        stream.outbox += data
        if trailers is not None:
            stream.trailers = trailers
        self._flush_stream(stream)

    def finish(self, stream: Stream, code: int = 0, message: str = "") -> None:
        """Ends the call with a status: trailers after any queued data, or trailers-only."""
        if stream.is_done:
            return
        stream.is_done = True
        self._cancel_work(stream)
        if stream.inbox:
            self._release_inbox(stream)
        block = status_trailers(code, message) if code or message else OK_TRAILERS
        if not stream.is_headers_sent:
            stream.is_headers_sent = True
            block = RESPONSE_HEADERS + block
        if stream.outbox:
            stream.trailers = block
            self._flush_stream(stream)
        else:
            self._write_trailers(stream, block)

    def _write_trailers(self, stream: Stream, block: bytes) -> None:
        stream.trailers = None
        self.blocked.pop(stream.id, None)
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        if stream.state is CLOSED:
            return
        self.send_headers(stream, block, True)

    def _flush_stream(self, stream: Stream) -> None:
        outbox = stream.outbox
        while outbox:
            size = min(len(outbox), self.send_window, stream.send_window, self.peer_max_frame)
            if size <= 0:
                self.blocked[stream.id] = stream
                return
            self.write(FRAME.pack(size << 8 | DATA, 0, stream.id), bytes(outbox[:size]))
            del outbox[:size]
            self.send_window -= size
            stream.send_window -= size
        self.blocked.pop(stream.id, None)
        if stream.trailers is not None:
            self._write_trailers(stream, stream.trailers)

    def _on_send_window(self, h2_stream: H2Stream | None) -> None:
        if h2_stream is None:
            for stream in list(self.blocked.values()):
                if self.send_window <= 0:
                    return
                self._flush_stream(stream)  # type: ignore[arg-type]  # blocked holds only Streams
        elif h2_stream.id in self.blocked:
            self._flush_stream(cast(Stream, h2_stream))

    # -- ending calls --------------------------------------------------------------------

    def _cancel_work(self, stream: Stream) -> None:
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        for reply in stream.replies:
            reply.cancel()
        stream.replies.clear()
        if stream.on_close is not None:
            stream.on_close()
            stream.on_close = None

    def _drop(self, stream: Stream) -> None:
        """The call was reset, or the connection is gone: stop its work, send nothing more."""
        stream.is_done = True
        self._cancel_work(stream)
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        stream.outbox.clear()
        if stream.inbox:
            self._release_inbox(stream)
        stream.trailers = None
        self.blocked.pop(stream.id, None)

    def _release_inbox(self, stream: Stream) -> None:
        """Request bytes no call will take: the connection's window gets them back."""
        self.consume(None, len(stream.inbox))
        stream.inbox.clear()

    def _on_stream_reset(self, h2_stream: H2Stream) -> None:
        self._drop(cast(Stream, h2_stream))

    def _reset(self, stream: Stream, error_code: int) -> None:
        """A stream error of ours: RST_STREAM with the code, and the call is dropped."""
        self._drop(stream)
        if stream.id in self.streams:
            self.reset_stream(stream, error_code)

    def _on_all_streams_closed(self) -> None:
        self._close_if_idle()


def _parse_request_headers(headers: Iterable[tuple[bytes, bytes]], access_names: frozenset[bytes]) -> RequestFields:
    path, is_grpc, timeout_s, encoding = b"", False, -1.0, None
    metadata: list[tuple[str, str]] = []
    access: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name == b":path":
            path = value
        elif name == b"content-type":
            is_grpc = value.startswith(b"application/grpc")
        elif name == b"grpc-timeout":
            try:
                timeout_s = parse_timeout_s(value)
            except ValueError:
                timeout_s = 0.0  # grpcio treats an unreadable timeout as one already passed
        elif name == b"grpc-encoding":
            encoding = value
        elif name == b"traceparent" or name == b"tracestate":
            metadata.append((name.decode(), value.decode("latin-1")))
        if name in access_names:
            access.append((name, value))
    return path, is_grpc, timeout_s, encoding, tuple(metadata), tuple(access)


async def _no_such_method(body: bytes, context: Any) -> bytes:
    raise Aborted(grpc.StatusCode.UNIMPLEMENTED, "method not served here")


_NO_ROUTE = Route(unary=_no_such_method)


def _descriptor_budget(reserved_fds: int) -> int:
    """Connections this process can hold and still have reserved_fds file descriptors for everything else."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1, (soft if soft != resource.RLIM_INFINITY else 1 << 20) - reserved_fds)


class _ThrottledLog:
    """One log line per interval at most; what was held back is counted in the next line."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.last_s = float("-inf")
        self.held: collections.Counter[str] = collections.Counter()

    def log(self, now: float, level: int, key: str, message: str) -> None:
        if now - self.last_s < self.interval_s:
            self.held[key] += 1
            return
        held = f" ({sum(self.held.values())} more in the last {self.interval_s:g} s: " \
               f"{', '.join(f'{k} x{n}' for k, n in self.held.most_common())})" if self.held else ""
        logger.log(level, "%s%s", message, held)
        self.last_s = now
        self.held.clear()


class Http2Server:
    """Listens on a TCP or Unix address and runs an Http2Connection per client."""

    def __init__(self, routes: dict[bytes, Route], max_message_bytes: int, *, limits: Http2Limits = DEFAULT_LIMITS,
                 ssl_context: ssl.SSLContext | None = None, access: Access | None = None) -> None:
        self.routes = routes
        self.max_message_bytes = max_message_bytes
        self.limits = limits
        self.ssl_context = ssl_context
        self.access = access
        self.connections: set[Http2Connection] = set()
        self.is_draining = False  # stop() began: new calls get UNAVAILABLE while the listener stays open
        self.goaways: collections.Counter[str] = collections.Counter()  # GOAWAYs sent, by reason
        self.refused_connections = 0
        # One whole largest message must fit in the connection's window, or it could never arrive.
        self.connection_window_bytes = min(MAX_WINDOW_BYTES, max(
            limits.connection_window_bytes, max_message_bytes + 5 + limits.stream_window_bytes))
        timeouts = [t for t in (limits.preface_timeout_s, limits.header_block_timeout_s, limits.message_read_timeout_s,
                                limits.idle_timeout_s, limits.keepalive_time_s, limits.keepalive_timeout_s) if t > 0]
        self.tick_s = max(MIN_TICK_S, min([MAX_TICK_S] + [t / 4 for t in timeouts]))
        self.max_connections = limits.max_connections or _descriptor_budget(limits.reserved_fds)
        self._goaway_log = _ThrottledLog(LOG_INTERVAL_S)
        self._refusal_log = _ThrottledLog(LOG_INTERVAL_S)
        self._server: asyncio.AbstractServer | None = None

    def _connection(self) -> Http2Connection:
        return Http2Connection(self)

    async def start(self, address: str, is_port_shared: bool = False) -> int:
        """Binds HOST:PORT (port 0: any free port) or unix:PATH; returns the TCP port (0 for Unix).
        `is_port_shared`: SO_REUSEPORT, so --workers processes accept on one port (the kernel spreads them)."""
        loop = asyncio.get_running_loop()
        tls: dict[str, Any] = {}
        if self.ssl_context is not None:
            tls = {"ssl": self.ssl_context, "ssl_handshake_timeout": self.limits.ssl_handshake_timeout_s}
        if address.startswith("unix:"):
            path = address[len("unix:"):]
            path = path[2:] if path.startswith("//") else path
            self._server = await loop.create_unix_server(self._connection, path, backlog=1024, **tls)
            return 0
        host, _, port = address.rpartition(":")
        self._server = await loop.create_server(self._connection, host.strip("[]") or None, int(port), backlog=1024,
                                                reuse_port=is_port_shared or None, **tls)
        return int(self._server.sockets[0].getsockname()[1])

    def admit(self, connection: Http2Connection) -> bool:
        """Room for one more connection: beyond the cap, the longest-idle connection without calls
        makes way (GOAWAY NO_ERROR), else the new one is refused, so file descriptors stay in reserve."""
        if len(self.connections) >= self.max_connections:
            idle = [c for c in self.connections if not c.streams and not c.is_closed]
            if not idle:
                self.note_refusal(f"{len(self.connections)} connections open, the most allowed")
                return False
            oldest = min(idle, key=lambda c: c.idle_since_s)
            oldest.go_away(NO_ERROR, "too many connections: closing an idle one", "evicted_idle")
        self.connections.add(connection)
        return True

    def note_refusal(self, why: str) -> None:
        self.refused_connections += 1
        self._refusal_log.log(asyncio.get_running_loop().time(), logging.WARNING, why,
                              f"refused an HTTP/2 connection: {why}")

    def count_goaway(self, code: int, reason: str, message: str) -> None:
        self.goaways[reason] += 1
        HTTP2_GOAWAYS.labels(reason=reason).inc()
        if reason != "shutdown":
            level = logging.DEBUG if code == NO_ERROR else logging.INFO
            self._goaway_log.log(asyncio.get_running_loop().time(), level, reason,
                                 f"closing an HTTP/2 connection ({reason}): {message}")

    async def stop(self, grace_s: float) -> None:
        """Drains: GOAWAY (last stream: the highest processed) to every connection, calls in flight finish for
        grace_s, and the listener stays open meanwhile so a new call gets UNAVAILABLE with a reason rather
        than a refused connection; then cancels what is left and stops listening."""
        self.is_draining = True
        drained = [connection.go_away_gracefully() for connection in list(self.connections)]
        if drained:
            _, late = await asyncio.wait(drained, timeout=grace_s)
            if late:
                logger.warning("%d connections still have calls after --exit-timeout-s %g; ending them with "
                               "UNAVAILABLE", len(late), grace_s)
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            for stream in list(connection.streams.values()):
                connection.finish(cast(Stream, stream), UNAVAILABLE, DRAINING_MESSAGE)
            if connection.is_going_away:
                connection.close_transport()
            else:  # opened during the drain
                connection.go_away(NO_ERROR, DRAINING_MESSAGE, "shutdown")
        if self._server is not None:
            await self._server.wait_closed()
