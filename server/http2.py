"""infergate's own HTTP/2 transport for gRPC: frames, HPACK and flow control, one asyncio protocol per connection.

grpcio's Python server costs about 400 us of CPU per unary call on this project's machines, far
more than decoding, batching and encoding a request (see bench/results). This transport speaks the
gRPC-over-HTTP/2 wire protocol directly on the event loop, so a call costs a few frame parses and one
write. It serves inference.GRPCInferenceService, grpc.health.v1.Health and server reflection.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
import zlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

import grpc
import hpack
from hpack import HPACKError

from infergate.server.calls import Aborted, ForwardedContext, status_for
from infergate.server.ipc import FrameWriter

logger = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME = struct.Struct(">IBI")  # (payload length << 8 | type), flags, stream id
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = (
    0x0, 0x1, 0x3, 0x6, 0x7, 0x8, 0x9)
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 0x4, 0x5

MAX_FRAME_BYTES = 1 << 20  # largest frame we accept (announced; HTTP/2 allows 16 KiB to 16 MiB)
MAX_CONCURRENT_STREAMS = 1024  # calls in flight per connection (announced)
MAX_HEADER_LIST_BYTES = 64 * 1024  # decoded request headers per call (announced)
STREAM_WINDOW_BYTES = 8 * 1024 * 1024  # how much a client may send on a call before we read it
CONNECTION_WINDOW_BYTES = 64 * 1024 * 1024  # the same, over all calls of a connection
DEFAULT_WINDOW_BYTES = 65535  # HTTP/2's initial window, for both directions until SETTINGS change it
MAX_WINDOW_BYTES = 2**31 - 1
MAX_GRPC_MESSAGE_BYTES = 4 * 1024  # encoded grpc-message cap: grpc clients refuse big metadata
HEADER_CACHE_ENTRIES = 64  # distinct reference-only header blocks remembered per connection

# (path, is gRPC content-type, grpc-timeout in seconds or -1, grpc-encoding, forwarded trace metadata)
RequestFields = tuple[bytes, bool, float, bytes | None, tuple[tuple[str, str], ...]]

# Our header blocks use HPACK literals without indexing, so they stay valid whatever the peer's table.
RESPONSE_HEADERS = b"\x88" + b"\x0f\x10\x10application/grpc"  # :status 200 (static 8), content-type (static 31)
UNSUPPORTED_MEDIA_HEADERS = b"\x08\x03415"  # :status 415, for a request that is not gRPC
TIMEOUT_UNITS_S = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9}
ZLIB_WBITS = {b"gzip": 31, b"deflate": 15}  # grpc-encoding -> zlib's wbits (gzip wrapper, zlib wrapper)
MAX_STREAM_REPLIES = 256  # a stream's requests in work before it gets no more window (backpressure)


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out, value = bytearray((first | limit,)), value - limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal_header(name: bytes, value: bytes) -> bytes:
    """An HPACK 'literal header field without indexing', new name, no Huffman coding."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


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
SERVER_SETTINGS = b"".join(struct.pack(">HI", key, value) for key, value in (
    (0x3, MAX_CONCURRENT_STREAMS), (SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW_BYTES),
    (SETTINGS_MAX_FRAME_SIZE, MAX_FRAME_BYTES), (0x6, MAX_HEADER_LIST_BYTES)))


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return FRAME.pack(len(payload) << 8 | kind, flags, stream_id) + payload


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


class Stream:
    """One call: what arrived, what is owed, and the flow-control window for sending."""

    __slots__ = ("id", "route", "connection", "context", "inbox", "request", "encoding", "send_window", "outbox",
                 "trailers", "is_headers_sent", "is_remote_closed", "is_done", "task", "replies", "timer",
                 "unacked_bytes", "is_discarding", "on_close", "is_remote_ending", "recv_window")

    def __init__(self, stream_id: int, route: Route, connection: Http2Connection, context: ForwardedContext,
                 encoding: bytes | None) -> None:
        self.id = stream_id
        self.route = route
        self.connection = connection
        self.context = context
        self.inbox = bytearray()
        self.request: bytes | None = None
        self.encoding = encoding
        self.send_window = connection.peer_initial_window
        self.outbox = bytearray()
        self.trailers: bytes | None = None
        self.is_headers_sent = False
        self.is_remote_closed = False
        self.is_done = False  # our trailers are written (or queued behind the outbox), or the call was dropped
        self.task: asyncio.Future[None] | None = None
        self.replies: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.unacked_bytes = 0
        self.is_discarding = False
        self.is_remote_ending = False  # the frame being read carries END_STREAM
        self.recv_window = STREAM_WINDOW_BYTES  # what the client may still send before our next WINDOW_UPDATE
        self.on_close: Callable[[], None] | None = None

    def send_message(self, body: bytes) -> None:
        """Writes one gRPC message on this stream (headers first, if not sent yet)."""
        self.connection.send_message(self, body)

    def finish(self, code: int = 0, message: str = "") -> None:
        self.connection.finish(self, code, message)


class Http2Connection(asyncio.Protocol):
    """One client connection: parses frames, starts calls, writes their responses."""

    def __init__(self, routes: dict[bytes, Route], max_message_bytes: int,
                 connections: set[Http2Connection]) -> None:
        self.routes = routes
        self.max_message_bytes = max_message_bytes
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.has_preface = False
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = MAX_HEADER_LIST_BYTES
        self.streams: dict[int, Stream] = {}
        self.blocked: dict[int, Stream] = {}  # streams with bytes waiting for window
        self.last_stream_id = 0
        self.peer_initial_window = DEFAULT_WINDOW_BYTES
        self.peer_max_frame = 16384
        self.send_window = DEFAULT_WINDOW_BYTES
        self.unacked_bytes = 0
        self.recv_window = CONNECTION_WINDOW_BYTES  # what the client may still send on the connection
        self.continuation: tuple[int, int, bytearray] | None = None
        self.header_cache: dict[bytes, RequestFields] = {}
        self.is_going_away = False
        self.drained: asyncio.Future[None] | None = None
        self.writer: FrameWriter | None = None
        self._loop = asyncio.get_running_loop()

    # -- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.writer = FrameWriter(self.transport)
        self.connections.add(self)
        self.write(frame(SETTINGS, 0, 0, SERVER_SETTINGS),
                   frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", CONNECTION_WINDOW_BYTES - DEFAULT_WINDOW_BYTES)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        for stream in list(self.streams.values()):
            self._drop(stream)
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

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

    def _fail(self, error_code: int, reason: str) -> None:
        """A connection error: GOAWAY with the reason, then close."""
        logger.info("closing an HTTP/2 connection: %s", reason)
        self.write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream_id, error_code) + reason.encode()))
        self.flush_writes()
        if self.transport is not None:
            self.transport.close()

    def go_away(self) -> asyncio.Future[None]:
        """Graceful shutdown: no new calls; the future is done when the calls in flight are."""
        self.is_going_away = True
        self.write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream_id, NO_ERROR)))
        self.drained = self._loop.create_future()
        self._close_if_idle()
        return self.drained

    def _close_if_idle(self) -> None:
        if self.is_going_away and not self.streams and self.transport is not None:
            self.flush_writes()
            self.transport.close()

    # -- reading -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.has_preface:
            if len(buffer) < len(PREFACE):
                if not PREFACE.startswith(bytes(buffer)):
                    self._fail(PROTOCOL_ERROR, "expected the HTTP/2 client preface (is the client speaking gRPC?)")
                return
            if buffer[:len(PREFACE)] != PREFACE:
                self._fail(PROTOCOL_ERROR, "expected the HTTP/2 client preface (is the client speaking gRPC?)")
                return
            del buffer[:len(PREFACE)]
            self.has_preface = True
        offset, available = 0, len(buffer)
        while available - offset >= 9:
            length_kind, flags, stream_id = FRAME.unpack_from(buffer, offset)
            length = length_kind >> 8
            if length > MAX_FRAME_BYTES:
                self._fail(FRAME_SIZE_ERROR, f"a frame of {length} bytes is above the {MAX_FRAME_BYTES} announced")
                return
            end = offset + 9 + length
            if end > available:
                break
            payload = bytes(buffer[offset + 9:end])
            offset = end
            self._on_frame(length_kind & 0xFF, flags, stream_id & 0x7FFFFFFF, payload)
            if self.transport is None or self.transport.is_closing():
                return
        if offset:
            del buffer[:offset]

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.continuation is not None and kind != CONTINUATION:
            self._fail(PROTOCOL_ERROR, "a header block was interrupted before END_HEADERS")
        elif kind == DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == HEADERS:
            if stream_id == 0 or stream_id % 2 == 0:
                self._fail(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}, which a client cannot open")
                return
            block = _strip_padding(flags, payload)
            if block is None:
                self._fail(PROTOCOL_ERROR, f"HEADERS on stream {stream_id} has more padding than payload")
                return
            if flags & PRIORITY_FLAG:
                block = block[5:]
            if flags & END_HEADERS:
                self._on_headers(stream_id, flags, block)
            else:
                self.continuation = (stream_id, flags, bytearray(block))
        elif kind == CONTINUATION:
            if self.continuation is None or self.continuation[0] != stream_id:
                self._fail(PROTOCOL_ERROR, "CONTINUATION without the HEADERS it continues")
                return
            self.continuation[2].extend(payload)
            if len(self.continuation[2]) > 2 * MAX_HEADER_LIST_BYTES:
                self._fail(PROTOCOL_ERROR, f"a header block above {2 * MAX_HEADER_LIST_BYTES} bytes")
                return
            if flags & END_HEADERS:
                first_id, first_flags, pieces = self.continuation
                self.continuation = None
                self._on_headers(first_id, first_flags, bytes(pieces))
        elif kind == WINDOW_UPDATE:
            if len(payload) != 4:
                self._fail(FRAME_SIZE_ERROR, f"a WINDOW_UPDATE of {len(payload)} bytes (expected 4)")
                return
            self._on_window_update(stream_id, int.from_bytes(payload, "big") & 0x7FFFFFFF)
        elif kind == SETTINGS:
            if not flags & ACK:
                self._on_settings(payload)
        elif kind == PING:
            if not flags & ACK:
                self.write(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if (stream := self.streams.get(stream_id)) is not None:
                self._drop(stream)
        elif kind == GOAWAY:
            self.is_going_away = True  # the client opens no more calls; finish the ones it has
            self._close_if_idle()
        elif kind == PUSH_PROMISE:
            self._fail(PROTOCOL_ERROR, "a client cannot send PUSH_PROMISE")
        # PRIORITY and unknown frame types are ignored, as HTTP/2 requires.

    def _on_settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            self._fail(FRAME_SIZE_ERROR, f"a SETTINGS frame of {len(payload)} bytes (expected a multiple of 6)")
            return
        for key, value in struct.iter_unpack(">HI", payload):
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW_BYTES:
                    self._fail(FLOW_CONTROL_ERROR, f"SETTINGS_INITIAL_WINDOW_SIZE {value} is above 2^31-1")
                    return
                delta, self.peer_initial_window = value - self.peer_initial_window, value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not 16384 <= value <= 16777215:
                    self._fail(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value} is outside 16384..16777215")
                    return
                self.peer_max_frame = value
        self.write(frame(SETTINGS, ACK, 0))
        if self.blocked:
            self._flush_blocked()

    def _on_window_update(self, stream_id: int, increment: int) -> None:
        if stream_id == 0:
            if increment == 0 or self.send_window + increment > MAX_WINDOW_BYTES:
                self._fail(PROTOCOL_ERROR if increment == 0 else FLOW_CONTROL_ERROR,
                           f"a connection WINDOW_UPDATE of {increment} (window {self.send_window})")
                return
            self.send_window += increment
            self._flush_blocked()
        elif (stream := self.streams.get(stream_id)) is not None:
            if increment == 0 or stream.send_window + increment > MAX_WINDOW_BYTES:
                self._reset(stream, PROTOCOL_ERROR if increment == 0 else FLOW_CONTROL_ERROR)
                return
            stream.send_window += increment
            if stream.id in self.blocked:
                self._flush_stream(stream)

    def _on_headers(self, stream_id: int, flags: int, block: bytes) -> None:
        fields = self._request_fields(block)
        if fields is None:
            return
        if stream_id <= self.last_stream_id:
            if (stream := self.streams.get(stream_id)) is not None and flags & END_STREAM:
                self._on_remote_end(stream)  # trailers from the client end its half of the call
            return
        self.last_stream_id = stream_id
        if self.is_going_away or len(self.streams) >= MAX_CONCURRENT_STREAMS:
            self.write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", REFUSED_STREAM)))
            return
        path, is_grpc, timeout_s, encoding, metadata = fields
        if not is_grpc:
            self.write(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, UNSUPPORTED_MEDIA_HEADERS))
            return
        route = self.routes.get(path)
        stream = Stream(stream_id, route or _NO_ROUTE, self, ForwardedContext(timeout_s, metadata), encoding)
        stream.is_remote_ending = bool(flags & END_STREAM)
        self.streams[stream_id] = stream
        if route is None:
            self.finish(stream, grpc.StatusCode.UNIMPLEMENTED.value[0],
                        f"method {path.decode('latin-1')} is not served here")
        elif timeout_s >= 0:
            stream.timer = self._loop.call_later(timeout_s, self._deadline_passed, stream)
        if flags & END_STREAM:
            self._on_remote_end(stream)

    def _request_fields(self, block: bytes) -> RequestFields | None:
        """What a header block asks for; None after a decoding error (the connection is then closed).

        gRPC clients send each call's headers as HPACK references to entries indexed by earlier
        calls, usually the same few bytes every time. A block of only such references does not
        change the decoder's table, so its meaning is fixed until a block with literals arrives:
        those results are cached, and the cache is emptied whenever the table may have changed."""
        cache = self.header_cache
        if (fields := cache.get(block)) is not None:
            return fields
        try:
            headers = self.decoder.decode(block, raw=True)
        except HPACKError as exc:
            self._fail(COMPRESSION_ERROR, f"the request headers could not be decoded: {exc}")
            return None
        fields = _parse_request_headers(headers)  # type: ignore[arg-type]  # raw=True gives bytes pairs
        is_references_only = bool(block) and min(block) >= 0x80 and max(block) < 0xFF
        if not is_references_only or len(cache) >= HEADER_CACHE_ENTRIES:
            cache.clear()
        if is_references_only:
            cache[block] = fields
        return fields

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            self._fail(PROTOCOL_ERROR, "DATA on stream 0")
            return
        size = len(payload)
        self.recv_window -= size
        if self.recv_window < 0:
            self._fail(FLOW_CONTROL_ERROR, f"DATA beyond the connection window, by {-self.recv_window} bytes")
            return
        self.unacked_bytes += size
        if self.unacked_bytes >= CONNECTION_WINDOW_BYTES // 4:
            self.write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.unacked_bytes)))
            self.recv_window += self.unacked_bytes
            self.unacked_bytes = 0
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # a call we already answered or dropped
        data = _strip_padding(flags, payload)
        if data is None:
            self._fail(PROTOCOL_ERROR, f"DATA on stream {stream_id} has more padding than payload")
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            self._reset(stream, FLOW_CONTROL_ERROR)
            return
        if flags & END_STREAM:
            stream.is_remote_ending = True
        if not stream.is_discarding and not stream.is_done:
            if not flags & END_STREAM:
                stream.unacked_bytes += size
                self._credit(stream)
            self._on_stream_bytes(stream, data)
        if flags & END_STREAM:
            self._on_remote_end(stream)

    def _credit(self, stream: Stream) -> None:
        """Gives a call its window back once half is used, unless its requests pile up unanswered:
        a streaming client faster than the model then waits, as grpcio would make it."""
        if stream.unacked_bytes >= STREAM_WINDOW_BYTES // 2 and len(stream.replies) < MAX_STREAM_REPLIES:
            self.write(frame(WINDOW_UPDATE, 0, stream.id, struct.pack(">I", stream.unacked_bytes)))
            stream.recv_window += stream.unacked_bytes
            stream.unacked_bytes = 0

    def _on_stream_bytes(self, stream: Stream, data: bytes) -> None:
        inbox = stream.inbox
        if (not inbox and len(data) >= 5 and int.from_bytes(data[1:5], "big") == len(data) - 5
                and len(data) - 5 <= self.max_message_bytes):  # the usual case: one whole message in one frame
            self._on_message(stream, data[0], data[5:])
            return
        inbox += data
        while len(inbox) >= 5 and not stream.is_discarding:
            length = int.from_bytes(inbox[1:5], "big")
            if length > self.max_message_bytes:
                stream.is_discarding = True
                self.finish(stream, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                            f"Received message larger than max ({length} vs. {self.max_message_bytes})")
                return
            if len(inbox) < 5 + length:
                return
            flag, message = inbox[0], bytes(inbox[5:5 + length])
            del inbox[:5 + length]
            self._on_message(stream, flag, message)

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
                self.finish(stream, grpc.StatusCode.UNIMPLEMENTED.value[0],
                            "a unary method got more than one request message")
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
            self.finish(stream, grpc.StatusCode.UNIMPLEMENTED.value[0],
                        f"grpc-encoding {(stream.encoding or b'').decode('latin-1')!r} is not supported; "
                        "send identity, gzip or deflate")
            return None
        decompressor = zlib.decompressobj(wbits)
        try:
            message = decompressor.decompress(message, self.max_message_bytes + 1)
        except zlib.error as exc:
            self.finish(stream, grpc.StatusCode.INTERNAL.value[0], f"cannot decompress the request message: {exc}")
            return None
        if len(message) > self.max_message_bytes:
            self.finish(stream, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                        f"Received message larger than max (more than {self.max_message_bytes} bytes decompressed)")
            return None
        if not decompressor.eof:
            self.finish(stream, grpc.StatusCode.INTERNAL.value[0],
                        "cannot decompress the request message: it is truncated")
            return None
        stream.is_discarding = False
        return message

    def _on_remote_end(self, stream: Stream) -> None:
        if stream.is_remote_closed:
            return
        stream.is_remote_closed = True
        if stream.is_done:
            self._forget_if_closed(stream)
        elif stream.route.unary is not None:
            if stream.request is None:
                self.finish(stream, grpc.StatusCode.UNIMPLEMENTED.value[0], "the call carried no request message")
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
        if stream.unacked_bytes and not stream.is_remote_closed:
            self._credit(stream)
        if not replies and stream.is_remote_closed and not stream.is_done:
            self.finish(stream)

    def _deadline_passed(self, stream: Stream) -> None:
        stream.timer = None
        if not stream.is_done:
            self.finish(stream, grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "Deadline Exceeded")
        elif stream.outbox or stream.trailers is not None:
            self._reset(stream, CANCEL)  # the answer is stuck behind the client's window: give up on it

    # -- writing -------------------------------------------------------------------------

    def send_message(self, stream: Stream, body: bytes, trailers: bytes | None = None) -> None:
        """One gRPC message, and the trailers after it when given; respects both send windows."""
        if stream.is_done:
            return
        if not stream.is_headers_sent:
            stream.is_headers_sent = True
            self.write(frame(HEADERS, END_HEADERS, stream.id, RESPONSE_HEADERS))
        data = b"\x00" + len(body).to_bytes(4, "big") + body
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
        limit = self.peer_max_frame
        if len(block) <= limit:
            self.write(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
        else:
            self.write(frame(HEADERS, END_STREAM, stream.id, block[:limit]))
            for start in range(limit, len(block), limit):
                last = start + limit >= len(block)
                self.write(frame(CONTINUATION, END_HEADERS if last else 0, stream.id, block[start:start + limit]))
        stream.trailers = None
        self.blocked.pop(stream.id, None)
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        if not stream.is_remote_closed and not stream.is_remote_ending:
            # The answer is complete: tell the client to stop sending on this call.
            self.write(frame(RST_STREAM, 0, stream.id, struct.pack(">I", NO_ERROR)))
            stream.is_remote_closed = True
        self._forget_if_closed(stream)

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

    def _flush_blocked(self) -> None:
        for stream in list(self.blocked.values()):
            if self.send_window <= 0:
                return
            self._flush_stream(stream)

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
        """The client reset the call, or the connection is gone: stop its work, send nothing more."""
        stream.is_done = stream.is_remote_closed = True
        self._cancel_work(stream)
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        stream.outbox.clear()
        stream.trailers = None
        self.blocked.pop(stream.id, None)
        self._forget_if_closed(stream)

    def _reset(self, stream: Stream, error_code: int) -> None:
        """A stream error: RST_STREAM with the code, and the call is dropped."""
        self.write(frame(RST_STREAM, 0, stream.id, struct.pack(">I", error_code)))
        self._drop(stream)

    def _forget_if_closed(self, stream: Stream) -> None:
        if (stream.is_done and stream.is_remote_closed and not stream.outbox and stream.trailers is None
                and self.streams.pop(stream.id, None) is not None and self.is_going_away):
            self._close_if_idle()


def _parse_request_headers(headers: Iterable[tuple[bytes, bytes]]) -> RequestFields:
    path, is_grpc, timeout_s, encoding = b"", False, -1.0, None
    metadata: list[tuple[str, str]] = []
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
    return path, is_grpc, timeout_s, encoding, tuple(metadata)


def _strip_padding(flags: int, payload: bytes) -> bytes | None:
    """The frame's content without its padding; None when the pad length is impossible."""
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        return None
    return payload[1:len(payload) - payload[0]]


async def _no_such_method(body: bytes, context: Any) -> bytes:
    raise Aborted(grpc.StatusCode.UNIMPLEMENTED, "method not served here")


_NO_ROUTE = Route(unary=_no_such_method)


class Http2Server:
    """Listens on a TCP or Unix address and runs an Http2Connection per client."""

    def __init__(self, routes: dict[bytes, Route], max_message_bytes: int) -> None:
        self.routes = routes
        self.max_message_bytes = max_message_bytes
        self.connections: set[Http2Connection] = set()
        self._server: asyncio.AbstractServer | None = None

    def _connection(self) -> Http2Connection:
        return Http2Connection(self.routes, self.max_message_bytes, self.connections)

    async def start(self, address: str) -> int:
        """Binds HOST:PORT (port 0: any free port) or unix:PATH; returns the TCP port (0 for Unix)."""
        loop = asyncio.get_running_loop()
        if address.startswith("unix:"):
            path = address[len("unix:"):]
            path = path[2:] if path.startswith("//") else path
            self._server = await loop.create_unix_server(self._connection, path, backlog=1024)
            return 0
        host, _, port = address.rpartition(":")
        self._server = await loop.create_server(self._connection, host.strip("[]") or None, int(port), backlog=1024)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, grace_s: float) -> None:
        """Stops accepting, lets calls in flight finish for grace_s, then cancels what is left."""
        if self._server is not None:
            self._server.close()
        drained = [connection.go_away() for connection in list(self.connections)]
        if drained:
            _, late = await asyncio.wait(drained, timeout=grace_s)
            for connection in list(self.connections):
                for stream in list(connection.streams.values()):
                    connection.finish(stream, grpc.StatusCode.UNAVAILABLE.value[0], "the server is shutting down")
                connection.flush_writes()
                if connection.transport is not None:
                    connection.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
