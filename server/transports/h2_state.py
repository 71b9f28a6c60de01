"""RFC 9113 for a server that never pushes: bytes in, frames out, stream states as section 5.1's table; no I/O, no gRPC.

`H2ServerConnection` parses frames, checks each against the RFC (lengths, stream ids, states, flow
control, SETTINGS values, request header rules of section 8) and against the per-connection budgets
of h2_limits, and answers protocol errors itself: RST_STREAM for a stream error, GOAWAY for a
connection error. What a valid frame means for the application goes to the `_on_*` hooks a
subclass implements (the asyncio protocol in native.py, or a recorder in the tests); what is
written goes through `write`. Time is read once at the start and then moved by `tick(now)`,
which the owner calls a few times a second and which also checks the timeouts: no timers here, and
no clock read per frame.
"""

from __future__ import annotations

import enum
import logging
import re
import struct
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import hpack
from hpack import HPACKError

from infergate.server.transports.h2_limits import Http2Limits, SlidingWindowBudget

logger = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME = struct.Struct(">IBI")  # (payload length << 8 | type), flags, stream id
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
(NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, STREAM_CLOSED, FRAME_SIZE_ERROR,
 REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, ENHANCE_YOUR_CALM, INADEQUATE_SECURITY,
 HTTP_1_1_REQUIRED) = range(14)
ERROR_NAMES = ("no_error", "protocol_error", "internal_error", "flow_control_error", "settings_timeout",
               "stream_closed", "frame_size_error", "refused_stream", "cancel", "compression_error", "connect_error",
               "enhance_your_calm", "inadequate_security", "http_1_1_required")
(SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_INITIAL_WINDOW_SIZE,
 SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE) = range(1, 7)
SETTINGS_ENABLE_CONNECT_PROTOCOL = 0x8  # RFC 8441

DEFAULT_WINDOW_BYTES = 65535  # HTTP/2's initial window, both ways, until SETTINGS change it
MAX_WINDOW_BYTES = 2**31 - 1
MIN_MAX_FRAME_BYTES, MAX_MAX_FRAME_BYTES = 16384, 2**24 - 1  # SETTINGS_MAX_FRAME_SIZE's legal range
HEADER_TABLE_BYTES = 4096  # our decoder's dynamic table (announced; RFC 7541's default)
HEADER_CACHE_ENTRIES = 64  # distinct table-neutral header blocks remembered per connection
HEADER_CACHE_BLOCK_BYTES = 4096  # longest header block cached: a full cache keeps at most 256 KiB of blocks
CLOSED_STREAMS_REMEMBERED = 128  # how each recent stream closed, to answer late frames on it by the RFC
FREE_WINDOW_UPDATES = 16  # WINDOW_UPDATEs our sent frames paid for that may be banked
IDLE_WITHOUT_CALLS_PING_INTERVAL_S = 7200.0  # grpc-core: pings allowed this often with no call and no permit

CONNECTION_SPECIFIC_HEADERS = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                         b"upgrade"))
REQUEST_PSEUDO_HEADERS = frozenset((b":method", b":scheme", b":path", b":authority"))
# RFC 9113 section 8.2.1: no 0x00-0x20, no uppercase, no 0x7f-0xff, and no colon outside a pseudo-header's start.
_BAD_NAME = re.compile(rb"[^\x21-\x39\x3b-\x40\x5b-\x7e]")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")


class StreamState(enum.Enum):
    """RFC 9113 section 5.1. A server that never sends PUSH_PROMISE never enters the reserved states."""

    IDLE = "idle"
    RESERVED_LOCAL = "reserved (local)"
    RESERVED_REMOTE = "reserved (remote)"
    OPEN = "open"
    HALF_CLOSED_LOCAL = "half-closed (local)"
    HALF_CLOSED_REMOTE = "half-closed (remote)"
    CLOSED = "closed"


OPEN, HALF_CLOSED_LOCAL, HALF_CLOSED_REMOTE, CLOSED = (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL,
                                                        StreamState.HALF_CLOSED_REMOTE, StreamState.CLOSED)


class ClosedBy(enum.Enum):
    """How a closed stream got there: it decides what a late frame on it is (section 5.1, "closed")."""

    END_STREAM = "both sides sent END_STREAM"  # late DATA/HEADERS: connection error STREAM_CLOSED
    PEER_RESET = "the client sent RST_STREAM"  # late DATA/HEADERS: stream error STREAM_CLOSED
    OUR_RESET = "we sent RST_STREAM"  # late frames in flight are ignored


class H2Error(Exception):
    """A protocol error: the RFC's code, what happened, and a short label for counters."""

    def __init__(self, code: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.reason = reason or ERROR_NAMES[code]


class H2ConnectionError(H2Error):
    """Answered with GOAWAY(code) and the connection closed (section 5.4.1)."""


class H2StreamError(H2Error):
    """Answered with RST_STREAM(code) on the stream (section 5.4.2)."""

    def __init__(self, stream_id: int, code: int, message: str) -> None:
        super().__init__(code, message)
        self.stream_id = stream_id


class MalformedRequest(ValueError):
    """A request that breaks section 8's rules: a stream error PROTOCOL_ERROR."""


class H2Stream:
    """One stream's HTTP/2 state: where it is in section 5.1's table and its two flow-control windows."""

    __slots__ = ("id", "state", "send_window", "recv_window", "unacked_bytes", "content_length", "received_bytes",
                 "opened_s")

    def __init__(self, connection: H2ServerConnection, stream_id: int, fields: Any) -> None:
        self.id = stream_id
        self.state = StreamState.IDLE
        self.send_window = connection.peer_initial_window  # what we may send before the client's WINDOW_UPDATE
        self.recv_window = connection.limits.stream_window_bytes  # what the client may send before ours
        self.unacked_bytes = 0  # taken by the application, not yet given back as window
        self.content_length = -1  # the request's content-length, if it sent one
        self.received_bytes = 0  # DATA bytes so far, checked against content_length
        self.opened_s = connection.now  # a client's reset of a younger stream than premature_reset_s is budgeted


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return FRAME.pack(len(payload) << 8 | kind, flags, stream_id) + payload


def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """RFC 7541 section 5.1's integer, with `first`'s bits above the prefix."""
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
    """An HPACK 'literal header field without indexing', new name, no Huffman coding: valid for any table size."""
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def validate_request_headers(headers: Iterable[tuple[bytes, bytes]]) -> int:
    """Section 8's rules for a request's header block; returns its content-length (-1 if none).

    Raises MalformedRequest naming the rule: pseudo-headers first, each of :method (POST, as gRPC
    needs), :scheme and :path exactly once, no other pseudo-header, lowercase valid names and values,
    no connection-specific fields, `te` only "trailers"."""
    pseudo: dict[bytes, bytes] = {}
    is_regular_seen = False
    content_length = -1
    for name, value in headers:
        if not name:
            raise MalformedRequest("a header field with an empty name")
        if name[0] == 0x3A:
            if is_regular_seen:
                raise MalformedRequest(f"pseudo-header {name!r} after a regular header field")
            if name not in REQUEST_PSEUDO_HEADERS:
                raise MalformedRequest(f"pseudo-header {name!r} is not one of a request's")
            if name in pseudo:
                raise MalformedRequest(f"pseudo-header {name!r} twice")
            if _BAD_NAME.search(name, 1):
                raise MalformedRequest(f"header name {name!r} has characters HTTP/2 forbids")
            pseudo[name] = value
        else:
            is_regular_seen = True
            if _BAD_NAME.search(name):
                raise MalformedRequest(f"header name {name!r} has uppercase or other characters HTTP/2 forbids")
            if name in CONNECTION_SPECIFIC_HEADERS:
                raise MalformedRequest(f"connection-specific header {name!r}")
            if name == b"te" and value != b"trailers":
                raise MalformedRequest(f"te: {value!r} (only 'trailers' is allowed)")
            if name == b"content-length":
                if not value.isdigit() or (content_length >= 0 and int(value) != content_length):
                    raise MalformedRequest(f"content-length {value!r}")
                content_length = int(value)
        if _BAD_VALUE.search(value):
            raise MalformedRequest(f"the value of {name!r} has characters HTTP/2 forbids")
    method = pseudo.get(b":method")
    if method != b"POST":
        raise MalformedRequest("no :method" if method is None else f":method {method!r} (gRPC needs POST)")
    if b":scheme" not in pseudo:
        raise MalformedRequest("no :scheme")
    path = pseudo.get(b":path")
    if not path or path[0] != 0x2F:
        raise MalformedRequest("no :path" if path is None else f":path {path!r} does not start with /")
    return content_length


def validate_trailers(headers: Iterable[tuple[bytes, bytes]]) -> None:
    """Section 8.1: trailers carry no pseudo-header, and the same field rules as headers."""
    for name, value in headers:
        if not name or name[0] == 0x3A:
            raise MalformedRequest(f"pseudo-header {name!r} in trailers")
        if _BAD_NAME.search(name) or _BAD_VALUE.search(value) or name in CONNECTION_SPECIFIC_HEADERS:
            raise MalformedRequest(f"trailer {name!r} is not a valid HTTP/2 field")


def strip_padding(flags: int, payload: bytes, stream_id: int, extra: int = 0) -> bytes:
    """A frame's content without its padding (and without `extra` leading bytes, the priority fields)."""
    if not flags & PADDED:
        if len(payload) < extra:
            raise H2ConnectionError(FRAME_SIZE_ERROR, f"a frame on stream {stream_id} too short for its fields")
        return payload[extra:] if extra else payload
    if not payload or payload[0] + 1 + extra > len(payload):
        raise H2ConnectionError(PROTOCOL_ERROR, f"a frame on stream {stream_id} has more padding than payload")
    return payload[1 + extra:len(payload) - payload[0]]


def is_table_neutral_block(block: bytes) -> bool:
    """Whether decoding `block` leaves the HPACK dynamic table as it was (RFC 7541 section 6).

    True for a non-empty block made only of indexed fields (6.1) and literals without indexing
    (6.2.2) or never indexed (6.2.3); False if it holds a literal with incremental indexing (6.2.1),
    a dynamic table size update (6.3), or is cut short. Such a block decodes to the same headers
    for as long as the table is unchanged. Only lengths are read: Huffman-coded strings are skipped
    by their length like any other."""
    size = len(block)
    if not size:
        return False
    if min(block) >= 0x80 and max(block) < 0xFF:
        return True  # indexed fields only, each index in one byte (the usual gRPC block)
    i = 0
    while i < size:
        first = block[i]
        if first & 0x80:  # indexed field: a 7-bit prefix integer
            i = _skip_int(block, i, 0x7F)
        elif first & 0xE0:  # 01xxxxxx: incremental indexing; 001xxxxx: table size update
            return False
        else:  # 0000xxxx / 0001xxxx: without indexing / never indexed, 4-bit name index
            has_literal_name = not first & 0x0F
            i = _skip_int(block, i, 0x0F)
            if has_literal_name:
                i = _skip_string(block, i)
            i = _skip_string(block, i)
        if i < 0:
            return False
    return i == size


def _skip_int(block: bytes, i: int, mask: int) -> int:
    """The offset past the RFC 7541 5.1 integer at i with prefix `mask`, or -1 if the block ends first."""
    size = len(block)
    if i >= size:
        return -1
    if block[i] & mask != mask:
        return i + 1
    i += 1
    while i < size:
        if not block[i] & 0x80:
            return i + 1
        i += 1
    return -1


def _skip_string(block: bytes, i: int) -> int:
    """The offset past the RFC 7541 5.2 string at i (H bit, 7-bit length, octets), or -1 if cut short."""
    if i < 0 or i >= len(block):
        return -1
    start = _skip_int(block, i, 0x7F)
    if start < 0:
        return -1
    mask = 0x7F
    length = block[i] & mask
    if length == mask:
        shift = 0
        for j in range(i + 1, start):
            length += (block[j] & 0x7F) << shift
            shift += 7
    end = start + length
    return end if end <= len(block) else -1


class H2ServerConnection:
    """The server side of one HTTP/2 connection, sans I/O (python-hyper's h2 keeps it the same way)."""

    stream_class: type[H2Stream] = H2Stream  # what a new stream is: (connection, stream id, request fields)
    # Slots: past 30 attributes CPython stops sharing instance-dict keys and every `self.x` costs a
    # dict lookup, which the per-call path cannot afford.
    __slots__ = ("limits", "clock", "buffer", "has_preface", "has_settings", "is_closed", "decoder", "streams",
                 "closed", "last_stream_id", "peer_initial_window", "peer_max_frame", "send_window",
                 "connection_window", "recv_window", "unacked_bytes", "header_block", "header_block_frames",
                 "header_block_started_s", "header_cache", "table_size_update", "encoder_table_bytes",
                 "is_going_away", "is_peer_going_away", "resets", "pings", "settings_frames", "empty_frames",
                 "window_updates", "started_s", "last_read_s", "idle_since_s", "now", "has_read", "sent_count",
                 "ping_strikes",
                 "last_ping_recv_s", "sent_count_at_ping", "keepalive_sent_s", "pings_without_data",
                 "sent_count_at_keepalive", "sent_count_at_window_update", "free_window_updates", "blocked")

    def __init__(self, limits: Http2Limits, clock: Callable[[], float], connection_window_bytes: int) -> None:
        now = clock()
        self.limits = limits
        self.clock = clock
        self.buffer = bytearray()
        self.has_preface = False
        self.has_settings = False  # the client's first SETTINGS arrived (section 3.4: its first frame)
        self.is_closed = False  # a GOAWAY that closes the connection was sent: nothing more is read
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = limits.max_header_list_bytes
        self.decoder.max_allowed_table_size = HEADER_TABLE_BYTES
        self.streams: dict[int, H2Stream] = {}
        self.closed: dict[int, ClosedBy] = {}
        self.last_stream_id = 0
        self.peer_initial_window = DEFAULT_WINDOW_BYTES
        self.peer_max_frame = MIN_MAX_FRAME_BYTES
        self.send_window = DEFAULT_WINDOW_BYTES
        self.connection_window = connection_window_bytes
        self.recv_window = connection_window_bytes  # what the client may still send on the connection
        self.unacked_bytes = 0
        self.header_block: tuple[int, int, bytearray] | None = None  # (stream, first frame's flags, fragments)
        self.header_block_frames = 0
        self.header_block_started_s = now
        self.header_cache: dict[bytes, tuple[Any, int]] = {}
        self.table_size_update = b""  # prefix of our next header block after the client shrank our table
        self.encoder_table_bytes = HEADER_TABLE_BYTES
        self.is_going_away = False  # we sent GOAWAY: no new streams
        self.is_peer_going_away = False
        window_s = limits.budget_window_s
        self.resets = SlidingWindowBudget(limits.max_resets_per_window, window_s, now)
        self.pings = SlidingWindowBudget(limits.max_pings_per_window, window_s, now)
        self.settings_frames = SlidingWindowBudget(limits.max_settings_per_window, window_s, now)
        self.empty_frames = SlidingWindowBudget(limits.max_empty_frames_per_window, window_s, now)
        self.window_updates = SlidingWindowBudget(limits.max_window_updates_per_window, window_s, now)
        # `now` is a coarse clock: set here and by each tick (a fraction of a second apart), so reading
        # frames never asks the time; budgets, deadlines and idleness are all coarser than a tick.
        self.started_s = self.last_read_s = self.idle_since_s = self.now = now
        self.has_read = False  # bytes arrived since the last tick
        self.sent_count = 0  # DATA/HEADERS we sent: keepalive and ping strikes start over after each
        self.ping_strikes = 0
        self.last_ping_recv_s = float("-inf")
        self.sent_count_at_ping = 0
        self.keepalive_sent_s: float | None = None
        self.pings_without_data = 0
        self.sent_count_at_keepalive = 0
        self.sent_count_at_window_update = 0
        self.free_window_updates = 0
        self.blocked: dict[int, H2Stream] = {}  # streams with DATA waiting for send window (the application's)

    # -- hooks -------------------------------------------------------------------------------

    def write(self, header: bytes, *parts: bytes) -> None:
        raise NotImplementedError

    def close_transport(self) -> None:
        raise NotImplementedError

    def _request_fields(self, headers: list[tuple[bytes, bytes]]) -> Any:
        """What the application needs of a valid request's headers (cached with table-neutral blocks)."""
        return headers


    def _on_request(self, stream: H2Stream, fields: Any, is_end: bool) -> None:
        """A new stream's valid request headers (the stream is registered, in its new state)."""

    def _on_data(self, stream: H2Stream, data: bytes, is_end: bool) -> None:
        """DATA on an open stream, padding removed; the application gives the window back with `consume`."""

    def _on_remote_end(self, stream: H2Stream) -> None:
        """The client's trailers ended its side."""

    def _on_stream_reset(self, stream: H2Stream) -> None:
        """The stream was reset by the client or by a stream error: drop its work, send nothing more."""

    def _on_all_streams_closed(self) -> None:
        """The last open stream left the table of a connection that is going away."""

    def _on_send_window(self, stream: H2Stream | None) -> None:
        """A send window grew for streams in `blocked`: the stream's, or with None the connection's or all."""

    def _on_peer_goaway(self) -> None:
        """The client sends no new streams."""

    def _on_goaway(self, code: int, reason: str, message: str) -> None:
        """We sent GOAWAY (counters, logs)."""

    # -- reading -----------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Feeds bytes read from the client; writes what they call for."""
        if self.is_closed:
            return
        self.has_read = True
        buffer = self.buffer
        buffer += data
        if not self.has_preface:
            size = min(len(buffer), len(PREFACE))
            if buffer[:size] != PREFACE[:size]:
                self.go_away(PROTOCOL_ERROR, "expected the HTTP/2 client preface (is the client speaking gRPC?)",
                             "bad_preface")
                return
            if size < len(PREFACE):
                return
            del buffer[:len(PREFACE)]
            self.has_preface = True
        offset, available, max_frame = 0, len(buffer), self.limits.max_frame_bytes
        try:
            while available - offset >= 9:
                length_kind, flags, stream_id = FRAME.unpack_from(buffer, offset)
                length = length_kind >> 8
                if length > max_frame:
                    raise H2ConnectionError(FRAME_SIZE_ERROR, f"a frame of {length} bytes is above the {max_frame} "
                                                              "announced")
                end = offset + 9 + length
                if end > available:
                    break
                payload = bytes(buffer[offset + 9:end])
                offset = end
                try:
                    self._frame(length_kind & 0xFF, flags, stream_id & 0x7FFFFFFF, payload)
                except H2StreamError as error:
                    self._stream_error(error)
                if self.is_closed:
                    return
        except H2ConnectionError as error:
            self.go_away(error.code, error.message, error.reason)
            return
        except Exception:  # a bug of ours: this connection ends with INTERNAL_ERROR; the server and others go on
            error_id = uuid.uuid4().hex[:12]
            logger.exception("an HTTP/2 connection failed on internal error %s", error_id)
            self.go_away(INTERNAL_ERROR, f"internal error (id {error_id}); the server log has the details",
                         "internal_error")
            return
        if offset:
            del buffer[:offset]

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.header_block is not None and kind != CONTINUATION:
            raise H2ConnectionError(PROTOCOL_ERROR, f"a frame of type {kind} inside a header block (section 6.10)")
        if not self.has_settings:
            if kind != SETTINGS or flags & ACK:
                raise H2ConnectionError(PROTOCOL_ERROR, "the client preface must end with a SETTINGS frame")
            self.has_settings = True
        if kind == DATA:
            self._recv_data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._recv_headers(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._recv_window_update(stream_id, payload)
        elif kind == SETTINGS:
            self._recv_settings(flags, stream_id, payload)
        elif kind == PING:
            self._recv_ping(flags, stream_id, payload)
        elif kind == RST_STREAM:
            self._recv_rst_stream(stream_id, payload)
        elif kind == CONTINUATION:
            self._recv_continuation(flags, stream_id, payload)
        elif kind == PRIORITY:
            self._recv_priority(stream_id, payload)
        elif kind == GOAWAY:
            self._recv_goaway(stream_id, payload)
        elif kind == PUSH_PROMISE:
            raise H2ConnectionError(PROTOCOL_ERROR, "a client cannot send PUSH_PROMISE (section 8.4)")
        else:
            self._spend_empty()  # unknown frame types are ignored (section 4.1), within a budget

    def _stream_error(self, error: H2StreamError) -> None:
        stream = self.streams.get(error.stream_id)
        if stream is None and error.stream_id > self.last_stream_id:
            # An idle stream cannot be reset (section 6.4): the error is the connection's (section 5.4.1).
            raise H2ConnectionError(error.code, error.message)
        self.write(frame(RST_STREAM, 0, error.stream_id, struct.pack(">I", error.code)))
        if stream is not None:
            self._close(stream, ClosedBy.OUR_RESET)
            self._on_stream_reset(stream)
        else:
            self.closed[error.stream_id] = ClosedBy.OUR_RESET
        self._spend_reset()

    def _spend_reset(self) -> None:
        if self.resets.spend(self.now):
            raise H2ConnectionError(ENHANCE_YOUR_CALM, f"more than {self.limits.max_resets_per_window} stream resets "
                                                       f"in {self.limits.budget_window_s:g} s", "too_many_resets")

    def _spend_empty(self) -> None:
        if self.empty_frames.spend(self.now):
            raise H2ConnectionError(ENHANCE_YOUR_CALM, f"more than {self.limits.max_empty_frames_per_window} frames "
                                    f"without content in {self.limits.budget_window_s:g} s", "too_many_empty_frames")

    def _late_frame(self, stream_id: int, what: str) -> None:
        """DATA or HEADERS on a stream that is not open: by section 5.1, by how it got there."""
        if stream_id > self.last_stream_id or stream_id % 2 == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, f"{what} on idle stream {stream_id}")
        closed_by = self.closed.get(stream_id)
        if closed_by is ClosedBy.END_STREAM:
            raise H2ConnectionError(STREAM_CLOSED, f"{what} on stream {stream_id} after its END_STREAM")
        if closed_by is ClosedBy.PEER_RESET:
            raise H2StreamError(stream_id, STREAM_CLOSED, f"{what} on stream {stream_id} after its RST_STREAM")
        # Reset by us (the client may have sent it before our RST_STREAM arrived), or long gone: ignored.

    def _recv_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "DATA on stream 0 (section 6.1)")
        size = len(payload)
        self.recv_window -= size
        if self.recv_window < 0:
            raise H2ConnectionError(FLOW_CONTROL_ERROR, f"DATA beyond the connection window, by {-self.recv_window} "
                                                        "bytes")
        data = strip_padding(flags, payload, stream_id) if flags & PADDED else payload
        is_end = bool(flags & END_STREAM)
        if not data and not is_end:
            self._spend_empty()
        stream = self.streams.get(stream_id)
        if stream is None or stream.state is HALF_CLOSED_REMOTE:
            self.consume(None, size)  # nobody will read it: the connection's window comes back at once
            if stream is not None:
                raise H2StreamError(stream_id, STREAM_CLOSED, f"DATA on stream {stream_id} after its END_STREAM")
            self._late_frame(stream_id, "DATA")
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            self.consume(None, size)
            raise H2StreamError(stream_id, FLOW_CONTROL_ERROR, f"DATA beyond stream {stream_id}'s window")
        if size != len(data):
            self.consume(stream, size - len(data))  # padding is read at once
        if stream.content_length >= 0:
            stream.received_bytes += len(data)
            if stream.received_bytes > stream.content_length or (is_end and
                                                                 stream.received_bytes != stream.content_length):
                self.consume(None, len(data))
                raise H2StreamError(stream_id, PROTOCOL_ERROR, f"DATA of {stream.received_bytes} bytes against "
                                                               f"content-length {stream.content_length}")
        if is_end:
            if stream.state is OPEN:
                stream.state = HALF_CLOSED_REMOTE
            else:
                self._end_remote(stream)
        self._on_data(stream, data, is_end)

    def _recv_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0 or stream_id % 2 == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}, which a client cannot open")
        priority = 5 if flags & PRIORITY_FLAG else 0
        block = strip_padding(flags, payload, stream_id, priority) if flags & (PADDED | PRIORITY_FLAG) else payload
        if priority:
            start = 1 if flags & PADDED else 0
            if int.from_bytes(payload[start:start + 4], "big") & 0x7FFFFFFF == stream_id:
                self._check_header_block(stream_id, flags, block)
                self.last_stream_id = max(self.last_stream_id, stream_id)  # opened, then reset
                raise H2StreamError(stream_id, PROTOCOL_ERROR, f"stream {stream_id} depends on itself (section 5.3.1)")
        if flags & END_HEADERS:
            self._on_header_block(stream_id, flags, block)
        else:
            if not block:
                self._spend_empty()
            self.header_block = (stream_id, flags, bytearray(block))
            self.header_block_frames = 0
            self.header_block_started_s = self.now

    def _check_header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        """Decodes a block only to keep the HPACK table in step (the frame is refused anyway)."""
        if flags & END_HEADERS:
            self._decode(block)
        else:
            self.header_block = (stream_id, flags | 0x100, bytearray(block))  # 0x100: decode, then refuse
            self.header_block_frames = 0
            self.header_block_started_s = self.now

    def _recv_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        block = self.header_block
        if block is None or block[0] != stream_id:
            raise H2ConnectionError(PROTOCOL_ERROR, f"CONTINUATION on stream {stream_id} without the HEADERS it "
                                                    "continues (section 6.10)")
        self.header_block_frames += 1
        limit = self.limits.max_continuations_per_block
        if limit and self.header_block_frames > limit:
            raise H2ConnectionError(ENHANCE_YOUR_CALM, f"a header block in more than {limit} CONTINUATION frames",
                                    "too_many_continuations")
        if not payload and not flags & END_HEADERS:
            self._spend_empty()
        pieces = block[2]
        pieces += payload
        if len(pieces) > 2 * self.limits.max_header_list_bytes:
            raise H2ConnectionError(ENHANCE_YOUR_CALM, f"a header block above {2 * self.limits.max_header_list_bytes}"
                                    " bytes", "header_block_too_large")
        if flags & END_HEADERS:
            self.header_block = None
            if block[1] & 0x100:
                self._decode(bytes(pieces))
                self.last_stream_id = max(self.last_stream_id, stream_id)
                raise H2StreamError(stream_id, PROTOCOL_ERROR, f"stream {stream_id} depends on itself "
                                                               "(section 5.3.1)")
            self._on_header_block(stream_id, block[1], bytes(pieces))

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        return self._decode_block(block)[0]

    def _decode_block(self, block: bytes) -> tuple[list[tuple[bytes, bytes]], bool]:
        """The block's headers, and whether it left the table as it was. Every block goes through
        here (requests, trailers, refused streams), so any that may change the table empties the
        header cache, whose entries mean what they mean only under the table they were decoded with."""
        try:
            headers = self.decoder.decode(block, raw=True)
        except HPACKError as exc:
            raise H2ConnectionError(COMPRESSION_ERROR, f"the request headers could not be decoded: {exc}") from None
        is_table_neutral = is_table_neutral_block(block)
        if not is_table_neutral:
            self.header_cache.clear()
        return headers, is_table_neutral  # type: ignore[return-value]  # raw: bytes pairs

    def _request(self, stream_id: int, block: bytes) -> tuple[Any, int]:
        """(application fields, content-length) of a request block; raises for a malformed one.

        gRPC clients send each call's headers as HPACK references to entries indexed by earlier
        calls, usually the same few bytes every time, plus literals that are not indexed (grpc-core
        sends `authorization` as "never indexed"). Such a block does not change the decoder's table,
        so its meaning is fixed until a block that does arrives: those results are cached, and
        `_decode_block` empties the cache whenever the table may have changed."""
        headers, is_table_neutral = self._decode_block(block)
        try:
            content_length = validate_request_headers(headers)
        except MalformedRequest as exc:
            raise H2StreamError(stream_id, PROTOCOL_ERROR, f"malformed request: {exc}") from None
        fields = (self._request_fields(headers), content_length)
        if is_table_neutral and len(block) <= HEADER_CACHE_BLOCK_BYTES:
            cache = self.header_cache
            if len(cache) >= HEADER_CACHE_ENTRIES:
                cache.clear()
            cache[block] = fields
        return fields

    def _on_header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        is_end = bool(flags & END_STREAM)
        if stream_id > self.last_stream_id:
            self.last_stream_id = stream_id
            if self.is_going_away or len(self.streams) >= self.limits.max_concurrent_streams:
                self._decode(block)
                self.write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", REFUSED_STREAM)))
                self._remember_closed(stream_id, ClosedBy.OUR_RESET)
                if not self.is_going_away:
                    self._spend_reset()
                return
            known = self.header_cache.get(block)
            fields, content_length = known if known is not None else self._request(stream_id, block)
            if is_end and content_length > 0:
                raise H2StreamError(stream_id, PROTOCOL_ERROR, f"no DATA against content-length {content_length}")
            new_stream = self.stream_class(self, stream_id, fields)
            new_stream.content_length = content_length
            new_stream.state = HALF_CLOSED_REMOTE if is_end else OPEN
            self.streams[stream_id] = new_stream
            self._on_request(new_stream, fields, is_end)
            return
        stream = self.streams.get(stream_id)
        if stream is None or stream.state is HALF_CLOSED_REMOTE:
            self._decode(block)
            if stream is not None:
                raise H2StreamError(stream_id, STREAM_CLOSED, f"HEADERS on stream {stream_id} after its END_STREAM")
            if self.closed.get(stream_id) is None:
                raise H2ConnectionError(PROTOCOL_ERROR, f"a new stream {stream_id} at or below the last one "
                                                        f"({self.last_stream_id}): stream ids must increase")
            self._late_frame(stream_id, "HEADERS")
            return
        try:
            validate_trailers(self._decode(block))
        except MalformedRequest as exc:
            raise H2StreamError(stream_id, PROTOCOL_ERROR, f"malformed trailers: {exc}") from None
        if not is_end:
            raise H2StreamError(stream_id, PROTOCOL_ERROR, "a second HEADERS without END_STREAM (section 8.1)")
        if stream.content_length >= 0 and stream.received_bytes != stream.content_length:
            raise H2StreamError(stream_id, PROTOCOL_ERROR, f"DATA of {stream.received_bytes} bytes against "
                                                           f"content-length {stream.content_length}")
        self._end_remote(stream)
        self._on_remote_end(stream)

    def _recv_priority(self, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0 (section 6.3)")
        if len(payload) != 5:
            raise H2StreamError(stream_id, FRAME_SIZE_ERROR, f"a PRIORITY frame of {len(payload)} bytes (expected 5)")
        self._spend_empty()
        if int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == stream_id:
            raise H2StreamError(stream_id, PROTOCOL_ERROR, f"stream {stream_id} depends on itself (section 5.3.1)")
        # Otherwise ignored: RFC 9113 deprecates the priority signals, and PRIORITY may name any stream.

    def _recv_rst_stream(self, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "RST_STREAM on stream 0 (section 6.4)")
        if len(payload) != 4:
            raise H2ConnectionError(FRAME_SIZE_ERROR, f"a RST_STREAM frame of {len(payload)} bytes (expected 4)")
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id or stream_id % 2 == 0:
                raise H2ConnectionError(PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
            self._spend_empty()
            return  # closed: ignored (section 5.1), within a budget
        self._close(stream, ClosedBy.PEER_RESET)
        self._on_stream_reset(stream)
        if self.now - stream.opened_s < self.limits.premature_reset_s:
            self._spend_reset()

    def _recv_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise H2ConnectionError(PROTOCOL_ERROR, f"SETTINGS on stream {stream_id} (section 6.5)")
        if flags & ACK:
            if payload:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "a SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise H2ConnectionError(FRAME_SIZE_ERROR, f"a SETTINGS frame of {len(payload)} bytes (a multiple of 6 "
                                                      "expected)")
        if self.settings_frames.spend(self.now):
            raise H2ConnectionError(ENHANCE_YOUR_CALM, f"more than {self.limits.max_settings_per_window} SETTINGS "
                                    f"frames in {self.limits.budget_window_s:g} s", "too_many_settings")
        initial_window, table_bytes = -1, -1
        for key, value in struct.iter_unpack(">HI", payload):
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW_BYTES:
                    raise H2ConnectionError(FLOW_CONTROL_ERROR, f"SETTINGS_INITIAL_WINDOW_SIZE {value} is above 2^31-1")
                initial_window = value  # only the last one counts: applied once below
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not MIN_MAX_FRAME_BYTES <= value <= MAX_MAX_FRAME_BYTES:
                    raise H2ConnectionError(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value} is outside "
                                                            f"{MIN_MAX_FRAME_BYTES}..{MAX_MAX_FRAME_BYTES}")
                self.peer_max_frame = value
            elif key in (SETTINGS_ENABLE_PUSH, SETTINGS_ENABLE_CONNECT_PROTOCOL):
                if value > 1:
                    raise H2ConnectionError(PROTOCOL_ERROR, f"SETTINGS {key:#x} = {value} (0 or 1 expected)")
            elif key == SETTINGS_HEADER_TABLE_SIZE:
                table_bytes = value if table_bytes < 0 else min(table_bytes, value)
            # MAX_CONCURRENT_STREAMS bounds pushes, which we never send; unknown settings are ignored.
        if 0 <= table_bytes < self.encoder_table_bytes:
            # Our blocks never index, but the client's decoder must hear our table shrink (RFC 7541 4.2).
            self.encoder_table_bytes = table_bytes
            self.table_size_update = hpack_int(table_bytes, 5, 0x20)
        self.write(frame(SETTINGS, ACK, 0))
        if initial_window >= 0 and initial_window != self.peer_initial_window:
            delta, self.peer_initial_window = initial_window - self.peer_initial_window, initial_window
            for stream in self.streams.values():  # once per frame, however many entries it had
                stream.send_window += delta
                if stream.send_window > MAX_WINDOW_BYTES:
                    raise H2ConnectionError(FLOW_CONTROL_ERROR, f"SETTINGS_INITIAL_WINDOW_SIZE takes stream "
                                                                f"{stream.id}'s window above 2^31-1")
            if delta > 0 and self.blocked:
                self._on_send_window(None)

    def _recv_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise H2ConnectionError(PROTOCOL_ERROR, f"PING on stream {stream_id} (section 6.7)")
        if len(payload) != 8:
            raise H2ConnectionError(FRAME_SIZE_ERROR, f"a PING frame of {len(payload)} bytes (expected 8)")
        if flags & ACK:
            if self.keepalive_sent_s is not None:
                self.keepalive_sent_s = None
            return
        limits = self.limits
        # As grpc-core sees it, only PINGs with no DATA or HEADERS sent since the last one can be
        # abuse (BDP probes follow our answers): those count, against both the budget and the strikes.
        if self.sent_count == self.sent_count_at_ping and self.pings.spend(self.now):
            raise H2ConnectionError(ENHANCE_YOUR_CALM, f"more than {limits.max_pings_per_window} PINGs in "
                                    f"{limits.budget_window_s:g} s", "too_many_pings")
        if self._is_ping_strike_out():
            raise H2ConnectionError(ENHANCE_YOUR_CALM, "too_many_pings", "ping_strikes")
        self.write(frame(PING, ACK, 0, payload))

    def _is_ping_strike_out(self) -> bool:
        """grpc-core's ping abuse policy: a PING sooner than allowed after the last is a strike."""
        limits = self.limits
        if self.sent_count != self.sent_count_at_ping:  # we sent DATA or HEADERS since: the clock starts over
            self.sent_count_at_ping = self.sent_count
            self.ping_strikes = 0
            self.last_ping_recv_s = float("-inf")
        is_idle = not self.streams and not limits.keepalive_permit_without_calls
        interval_s = IDLE_WITHOUT_CALLS_PING_INTERVAL_S if is_idle else limits.min_recv_ping_interval_without_data_s
        is_early = self.now < self.last_ping_recv_s + interval_s
        self.last_ping_recv_s = self.now
        if not is_early:
            return False
        self.ping_strikes += 1
        return limits.max_ping_strikes != 0 and self.ping_strikes > limits.max_ping_strikes

    def _recv_goaway(self, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise H2ConnectionError(PROTOCOL_ERROR, f"GOAWAY on stream {stream_id} (section 6.8)")
        if len(payload) < 8:
            raise H2ConnectionError(FRAME_SIZE_ERROR, f"a GOAWAY frame of {len(payload)} bytes (at least 8 expected)")
        self.is_peer_going_away = True
        self._on_peer_goaway()

    def _recv_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2ConnectionError(FRAME_SIZE_ERROR, f"a WINDOW_UPDATE of {len(payload)} bytes (expected 4)")
        # Clients give window back as our answers arrive (grpc-core: one or two per call), so each
        # DATA or HEADERS frame we sent pays for one WINDOW_UPDATE (up to FREE_WINDOW_UPDATES banked);
        # only the rest count against the budget.
        sent_count = self.sent_count
        if sent_count != self.sent_count_at_window_update:
            free = self.free_window_updates + sent_count - self.sent_count_at_window_update
            self.free_window_updates = free if free < FREE_WINDOW_UPDATES else FREE_WINDOW_UPDATES
            self.sent_count_at_window_update = sent_count
        if self.free_window_updates:
            self.free_window_updates -= 1
        elif self.window_updates.spend(self.now):
            raise H2ConnectionError(ENHANCE_YOUR_CALM, f"more than {self.limits.max_window_updates_per_window} "
                                    f"WINDOW_UPDATEs in {self.limits.budget_window_s:g} s", "too_many_window_updates")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise H2ConnectionError(PROTOCOL_ERROR, "a connection WINDOW_UPDATE of 0 (section 6.9)")
            if self.send_window + increment > MAX_WINDOW_BYTES:
                raise H2ConnectionError(FLOW_CONTROL_ERROR, f"a connection WINDOW_UPDATE of {increment} takes the "
                                                            "window above 2^31-1")
            self.send_window += increment
            if self.blocked:
                self._on_send_window(None)
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id or stream_id % 2 == 0:
                raise H2ConnectionError(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            return  # closed: may arrive for a while, ignored (section 5.1)
        if increment == 0:
            raise H2StreamError(stream_id, PROTOCOL_ERROR, f"a WINDOW_UPDATE of 0 on stream {stream_id}")
        if stream.send_window + increment > MAX_WINDOW_BYTES:
            raise H2StreamError(stream_id, FLOW_CONTROL_ERROR, f"a WINDOW_UPDATE takes stream {stream_id}'s window "
                                                               "above 2^31-1")
        stream.send_window += increment
        if stream_id in self.blocked:
            self._on_send_window(stream)

    # -- stream states -----------------------------------------------------------------------

    def _end_remote(self, stream: H2Stream) -> None:
        """The client's END_STREAM: open -> half-closed (remote); half-closed (local) -> closed."""
        if stream.state is OPEN:
            stream.state = HALF_CLOSED_REMOTE
        elif stream.state is HALF_CLOSED_LOCAL:
            self._close(stream, ClosedBy.END_STREAM)

    def _close(self, stream: H2Stream, closed_by: ClosedBy) -> None:
        stream.state = CLOSED
        closed = self.closed
        closed[stream.id] = closed_by
        if len(closed) > 2 * CLOSED_STREAMS_REMEMBERED:
            self._remember_closed(stream.id, closed_by)
        if self.streams.pop(stream.id, None) is not None and not self.streams:
            self.idle_since_s = self.now
            if self.is_going_away or self.is_peer_going_away:
                self._on_all_streams_closed()

    def _remember_closed(self, stream_id: int, closed_by: ClosedBy) -> None:
        closed = self.closed
        closed[stream_id] = closed_by
        if len(closed) > 2 * CLOSED_STREAMS_REMEMBERED:  # forget the oldest half at once, not one per stream
            self.closed = dict(list(closed.items())[-CLOSED_STREAMS_REMEMBERED:])

    # -- writing -----------------------------------------------------------------------------

    def send_headers(self, stream: H2Stream, block: bytes, is_end: bool) -> None:
        """A header block (split at the client's frame size); END_STREAM moves the stream on, and a
        client still sending is told to stop with RST_STREAM(NO_ERROR) (section 8.1)."""
        self.sent_count += 1
        if self.table_size_update:
            block = self.table_size_update + block
            self.table_size_update = b""
        limit = self.peer_max_frame
        flags = END_STREAM if is_end else 0
        if len(block) <= limit:
            self.write(FRAME.pack(len(block) << 8 | HEADERS, flags | END_HEADERS, stream.id), block)
        else:
            self.write(frame(HEADERS, flags, stream.id, block[:limit]))
            for start in range(limit, len(block), limit):
                last = start + limit >= len(block)
                self.write(frame(CONTINUATION, END_HEADERS if last else 0, stream.id, block[start:start + limit]))
        if is_end:
            if stream.state is HALF_CLOSED_REMOTE:
                self._close(stream, ClosedBy.END_STREAM)
            elif stream.state is OPEN:
                stream.state = HALF_CLOSED_LOCAL
                self.reset_stream(stream, NO_ERROR)

    def send_answer(self, stream: H2Stream, headers: bytes, data: bytes, trailers: bytes) -> bool:
        """Response HEADERS, one DATA frame and the trailers in one write (a unary call's whole answer),
        when both send windows and the client's frame size take them at once; False, with nothing
        sent, when not. The stream moves on as `send_headers` with END_STREAM moves it."""
        size, limit, prefix = len(data), self.peer_max_frame, self.table_size_update
        if (size > self.send_window or size > stream.send_window or size > limit or len(trailers) > limit
                or len(headers) + len(prefix) > limit or stream.state is CLOSED):
            return False
        if prefix:
            headers = prefix + headers
            self.table_size_update = b""
        self.sent_count += 3
        self.send_window -= size
        stream.send_window -= size
        stream_id = stream.id
        self.write(FRAME.pack(len(headers) << 8 | HEADERS, END_HEADERS, stream_id), headers,
                   FRAME.pack(size << 8 | DATA, 0, stream_id), data,
                   FRAME.pack(len(trailers) << 8 | HEADERS, END_HEADERS | END_STREAM, stream_id), trailers)
        if stream.state is HALF_CLOSED_REMOTE:
            self._close(stream, ClosedBy.END_STREAM)
        elif stream.state is OPEN:
            stream.state = HALF_CLOSED_LOCAL
            self.reset_stream(stream, NO_ERROR)
        return True

    def reset_stream(self, stream: H2Stream, code: int) -> None:
        """RST_STREAM from our side: the stream is closed (the caller drops its work)."""
        self.write(frame(RST_STREAM, 0, stream.id, struct.pack(">I", code)))
        self._close(stream, ClosedBy.OUR_RESET)

    def consume(self, stream: H2Stream | None, size: int) -> None:
        """The application took `size` bytes of DATA: the client may send that much more."""
        self.unacked_bytes += size
        if self.unacked_bytes >= self.connection_window >> 2:
            self._credit_connection()
        if stream is not None and (stream.state is OPEN or stream.state is HALF_CLOSED_LOCAL):
            stream.unacked_bytes += size
            if stream.unacked_bytes >= self.limits.stream_window_bytes >> 1:
                self.write(frame(WINDOW_UPDATE, 0, stream.id, struct.pack(">I", stream.unacked_bytes)))
                stream.recv_window += stream.unacked_bytes
                stream.unacked_bytes = 0

    def _credit_connection(self) -> None:
        if self.unacked_bytes:
            self.write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.unacked_bytes)))
            self.recv_window += self.unacked_bytes
            self.unacked_bytes = 0

    def make_room(self, stream: H2Stream, needed: int) -> None:
        """Lets the client send `needed` more bytes on the stream at once (a message larger than the
        window: grpc-core grows the window to the message being read the same way)."""
        if self.recv_window < needed:
            self._credit_connection()
        if stream.state is OPEN and stream.recv_window < needed:
            increment = needed - stream.recv_window
            self.write(frame(WINDOW_UPDATE, 0, stream.id, struct.pack(">I", increment)))
            stream.recv_window = needed

    def go_away(self, code: int, message: str, reason: str | None = None, *, is_closing: bool = True) -> None:
        """GOAWAY with our last stream; a connection error (is_closing) also ends the connection."""
        label = reason or ERROR_NAMES[code]
        debug = message.encode("utf-8", "replace")[:256]
        self.write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream_id, code) + debug))
        self.is_going_away = True
        self._on_goaway(code, label, message)
        if is_closing:
            self.is_closed = True
            self.close_transport()

    # -- time --------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Checks the connection's timeouts and sends keepalive pings; call it every fraction of a second."""
        if self.is_closed:
            return
        self.now = now
        if self.has_read:
            self.has_read = False
            self.last_read_s = now
        limits = self.limits
        if not self.has_settings:
            if limits.preface_timeout_s and now - self.started_s >= limits.preface_timeout_s:
                self.go_away(PROTOCOL_ERROR, f"no client preface and SETTINGS within {limits.preface_timeout_s:g} s",
                             "preface_timeout")
            return
        if (self.header_block is not None and limits.header_block_timeout_s
                and now - self.header_block_started_s >= limits.header_block_timeout_s):
            self.go_away(ENHANCE_YOUR_CALM, f"a header block left unfinished for {limits.header_block_timeout_s:g} s",
                         "header_block_timeout")
        elif not self.streams and limits.idle_timeout_s and now - self.idle_since_s >= limits.idle_timeout_s:
            self.go_away(NO_ERROR, f"no calls for {limits.idle_timeout_s:g} s", "idle")
        elif self.keepalive_sent_s is not None:
            if now - self.keepalive_sent_s >= limits.keepalive_timeout_s:
                self.go_away(NO_ERROR, f"keepalive PING not acknowledged in {limits.keepalive_timeout_s:g} s",
                             "keepalive_timeout")
        elif (limits.keepalive_time_s and now - self.last_read_s >= limits.keepalive_time_s
              and (self.streams or limits.keepalive_permit_without_calls)):
            if self.sent_count != self.sent_count_at_keepalive:
                self.sent_count_at_keepalive = self.sent_count
                self.pings_without_data = 0
            if not limits.max_pings_without_data or self.pings_without_data < limits.max_pings_without_data:
                self.pings_without_data += 1
                self.keepalive_sent_s = now
                self.write(frame(PING, 0, 0, b"keepaliv"))
