"""The RFC 9113 state machine (server/transports/h2_state.py) driven frame by frame, without a socket or a loop."""

from __future__ import annotations

import struct
import time
from typing import Any

import hpack
import pytest

from infergate.server.transports import h2_state
from infergate.server.transports.h2_limits import DEFAULT_LIMITS, Http2Limits, SlidingWindowBudget
from infergate.server.transports.h2_state import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PING,
    PREFACE,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    H2ServerConnection,
    H2Stream,
    MalformedRequest,
    StreamState,
    frame,
    validate_request_headers,
)

Frame = tuple[int, int, int, bytes]
REQUEST = [(":method", "POST"), (":scheme", "http"), (":path", "/s/M"), (":authority", "x"),
           ("content-type", "application/grpc"), ("te", "trailers")]


class Recorder(H2ServerConnection):
    """The state machine with every hook recorded and a clock the test moves."""

    def __init__(self, limits: Http2Limits = DEFAULT_LIMITS, *, is_consuming: bool = True) -> None:
        self.clock_s = 1000.0
        super().__init__(limits, lambda: self.clock_s, 1 << 24)
        self.out = bytearray()
        self.is_transport_closed = False
        self.is_consuming = is_consuming
        self.events: list[tuple[Any, ...]] = []
        self.encoder = hpack.Encoder()

    def write(self, header: bytes, *parts: bytes) -> None:
        self.out += header
        for part in parts:
            self.out += part

    def close_transport(self) -> None:
        self.is_transport_closed = True

    def _on_request(self, stream: H2Stream, fields: Any, is_end: bool) -> None:
        self.events.append(("request", stream.id, is_end))

    def _on_data(self, stream: H2Stream, data: bytes, is_end: bool) -> None:
        self.events.append(("data", stream.id, data, is_end))
        if self.is_consuming:
            self.consume(stream, len(data))

    def _on_remote_end(self, stream: H2Stream) -> None:
        self.events.append(("end", stream.id))

    def _on_stream_reset(self, stream: H2Stream) -> None:
        self.events.append(("reset", stream.id))

    # -- driving -----------------------------------------------------------------------------

    def start(self, settings: bytes = b"") -> Recorder:
        self.receive(PREFACE + frame(SETTINGS, 0, 0, settings))
        self.frames()
        return self

    def headers(self, stream_id: int, flags: int = END_HEADERS, fields: list[tuple[str, str]] | None = None) -> bytes:
        return frame(HEADERS, flags, stream_id, self.encoder.encode(fields if fields is not None else REQUEST))

    def frames(self) -> list[Frame]:
        out, i, found = self.out, 0, []
        while i + 9 <= len(out):
            length_kind, flags, stream_id = h2_state.FRAME.unpack_from(out, i)
            end = i + 9 + (length_kind >> 8)
            found.append((length_kind & 0xFF, flags, stream_id, bytes(out[i + 9:end])))
            i = end
        self.out.clear()
        return found

    def goaway_code(self) -> int | None:
        codes = [struct.unpack(">I", p[4:8])[0] for kind, _, _, p in self.frames() if kind == GOAWAY]
        return codes[0] if codes else None


def _rst(frames: list[Frame], stream_id: int) -> int | None:
    codes = [struct.unpack(">I", p)[0] for kind, _, sid, p in frames if kind == RST_STREAM and sid == stream_id]
    return codes[0] if codes else None


# -- stream states (section 5.1) ---------------------------------------------------------------


def test_a_request_walks_the_stream_states() -> None:
    c = Recorder().start()
    c.receive(c.headers(1))
    stream = c.streams[1]
    assert stream.state is StreamState.OPEN and c.events == [("request", 1, False)]
    c.receive(frame(DATA, END_STREAM, 1, b"abc"))
    assert stream.state is StreamState.HALF_CLOSED_REMOTE
    c.send_headers(stream, b"\x88", True)
    assert stream.state is StreamState.CLOSED and 1 not in c.streams
    assert c.closed[1] is h2_state.ClosedBy.END_STREAM


def test_our_end_before_the_clients_resets_with_no_error() -> None:
    c = Recorder().start()
    c.receive(c.headers(1))
    c.send_headers(c.streams[1], b"\x88", True)
    frames = c.frames()
    assert _rst(frames, 1) == h2_state.NO_ERROR and 1 not in c.streams
    c.receive(frame(DATA, END_STREAM, 1, b"late"))  # in flight before our RST_STREAM: ignored
    assert not c.frames() and not c.is_closed


CLOSE_1 = b""  # in a sequence: the server answers stream 1 with END_STREAM


@pytest.mark.parametrize(("sequence", "code"), [
    # a lower new stream id is a connection error, not a silent drop
    (lambda c: [c.headers(5), c.headers(3)], h2_state.PROTOCOL_ERROR),
    (lambda c: [c.headers(2)], h2_state.PROTOCOL_ERROR),  # even: a client cannot open it
    (lambda c: [frame(DATA, 0, 1, b"x")], h2_state.PROTOCOL_ERROR),  # idle stream
    (lambda c: [frame(RST_STREAM, 0, 1, struct.pack(">I", 8))], h2_state.PROTOCOL_ERROR),
    (lambda c: [frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 1))], h2_state.PROTOCOL_ERROR),
    (lambda c: [frame(CONTINUATION, END_HEADERS, 1, b"")], h2_state.PROTOCOL_ERROR),
    # closed by both END_STREAMs: a late DATA or HEADERS is a connection error STREAM_CLOSED
    (lambda c: [c.headers(1, END_HEADERS | END_STREAM), CLOSE_1, frame(DATA, 0, 1, b"x")], h2_state.STREAM_CLOSED),
    (lambda c: [c.headers(1, END_HEADERS | END_STREAM), CLOSE_1, c.headers(1, END_HEADERS | END_STREAM)],
     h2_state.STREAM_CLOSED),
    (lambda c: [c.headers(1, 0), frame(PRIORITY, 0, 1, bytes(5))], h2_state.PROTOCOL_ERROR),  # inside a block
    (lambda c: [c.headers(1, 0), c.headers(3)], h2_state.PROTOCOL_ERROR),
    (lambda c: [frame(h2_state.PUSH_PROMISE, END_HEADERS, 1, bytes(4))], h2_state.PROTOCOL_ERROR),
])
def test_connection_errors(sequence: Any, code: int) -> None:
    c = Recorder().start()
    for part in sequence(c):
        if part == CLOSE_1:
            c.send_headers(c.streams[1], b"\x88", True)
            c.frames()
        else:
            c.receive(part)
    assert c.goaway_code() == code and c.is_transport_closed


@pytest.mark.parametrize(("setup", "bad", "code"), [
    (END_HEADERS | END_STREAM, frame(DATA, 0, 1, b"x"), h2_state.STREAM_CLOSED),  # half-closed (remote)
    (END_HEADERS | END_STREAM, None, h2_state.STREAM_CLOSED),  # HEADERS on half-closed (remote)
    (END_HEADERS, frame(PRIORITY, 0, 1, bytes(4)), h2_state.FRAME_SIZE_ERROR),
    (END_HEADERS, frame(PRIORITY, 0, 1, struct.pack(">IB", 1, 16)), h2_state.PROTOCOL_ERROR),  # depends on itself
    (END_HEADERS, frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 0)), h2_state.PROTOCOL_ERROR),
    (END_HEADERS, frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 2**31 - 1)), h2_state.FLOW_CONTROL_ERROR),
    (END_HEADERS, None, h2_state.PROTOCOL_ERROR),  # second HEADERS without END_STREAM
])
def test_stream_errors(setup: int, bad: bytes | None, code: int) -> None:
    c = Recorder().start()
    c.receive(c.headers(1, setup))
    c.receive(bad if bad is not None else c.headers(1, END_HEADERS))
    assert _rst(c.frames(), 1) == code and not c.is_closed and 1 not in c.streams
    c.receive(c.headers(3, END_HEADERS | END_STREAM))  # the connection goes on
    assert 3 in c.streams


def test_data_after_the_clients_reset_is_a_stream_error() -> None:
    c = Recorder().start()
    c.receive(c.headers(1))
    c.receive(frame(RST_STREAM, 0, 1, struct.pack(">I", h2_state.CANCEL)))
    assert ("reset", 1) in c.events
    c.receive(frame(DATA, 0, 1, b"x"))
    assert _rst(c.frames(), 1) == h2_state.STREAM_CLOSED and not c.is_closed


def test_a_self_dependent_headers_is_a_stream_error() -> None:
    c = Recorder().start()
    block = c.encoder.encode(REQUEST)
    c.receive(frame(HEADERS, END_HEADERS | h2_state.PRIORITY_FLAG, 1, struct.pack(">IB", 1, 16) + block))
    assert _rst(c.frames(), 1) == h2_state.PROTOCOL_ERROR and not c.is_closed
    c.receive(c.headers(3, END_HEADERS | END_STREAM))  # the HPACK table stayed in step
    assert 3 in c.streams


# -- frame validation (section 6) --------------------------------------------------------------


@pytest.mark.parametrize(("bad", "code"), [
    (frame(PING, 0, 0, bytes(7)), h2_state.FRAME_SIZE_ERROR),
    (frame(PING, 0, 1, bytes(8)), h2_state.PROTOCOL_ERROR),
    (frame(RST_STREAM, 0, 1, bytes(3)), h2_state.FRAME_SIZE_ERROR),
    (frame(RST_STREAM, 0, 0, bytes(4)), h2_state.PROTOCOL_ERROR),
    (frame(PRIORITY, 0, 0, bytes(5)), h2_state.PROTOCOL_ERROR),
    (frame(WINDOW_UPDATE, 0, 0, bytes(3)), h2_state.FRAME_SIZE_ERROR),
    (frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)), h2_state.PROTOCOL_ERROR),
    (frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1)), h2_state.FLOW_CONTROL_ERROR),
    (frame(SETTINGS, 0, 0, bytes(5)), h2_state.FRAME_SIZE_ERROR),
    (frame(SETTINGS, 1, 0, bytes(6)), h2_state.FRAME_SIZE_ERROR),  # ACK with a payload
    (frame(SETTINGS, 0, 1, b""), h2_state.PROTOCOL_ERROR),
    (frame(SETTINGS, 0, 0, struct.pack(">HI", 2, 2)), h2_state.PROTOCOL_ERROR),  # ENABLE_PUSH 2
    (frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 2**31)), h2_state.FLOW_CONTROL_ERROR),
    (frame(SETTINGS, 0, 0, struct.pack(">HI", 5, 16383)), h2_state.PROTOCOL_ERROR),
    (frame(SETTINGS, 0, 0, struct.pack(">HI", 5, 2**24)), h2_state.PROTOCOL_ERROR),
    (frame(GOAWAY, 0, 1, bytes(8)), h2_state.PROTOCOL_ERROR),
    (frame(GOAWAY, 0, 0, bytes(7)), h2_state.FRAME_SIZE_ERROR),
    (frame(DATA, 0, 0, b"x"), h2_state.PROTOCOL_ERROR),
    (frame(HEADERS, END_HEADERS, 0, b"\x82"), h2_state.PROTOCOL_ERROR),
    (frame(HEADERS, END_HEADERS | h2_state.PADDED, 1, b"\x05\x82"), h2_state.PROTOCOL_ERROR),
    (frame(HEADERS, END_HEADERS, 1, b"\x80"), h2_state.COMPRESSION_ERROR),  # index 0
    (frame(HEADERS, END_HEADERS, 1, b"\x3f\xe2\x1f"), h2_state.COMPRESSION_ERROR),  # table size 4096+ > ours
    (b"\x10\x00\x01\x00\x00\x00\x00\x00\x00", h2_state.FRAME_SIZE_ERROR),  # 1 MiB + 1 byte frame
])
def test_frame_validation(bad: bytes, code: int) -> None:
    c = Recorder().start()
    c.receive(bad)
    assert c.goaway_code() == code and c.is_transport_closed


def test_the_first_frame_must_be_settings() -> None:
    c = Recorder()
    c.receive(PREFACE + frame(PING, 0, 0, bytes(8)))
    assert c.goaway_code() == h2_state.PROTOCOL_ERROR


def test_a_bad_preface_is_a_protocol_error() -> None:
    c = Recorder()
    c.receive(b"GET / HTTP/1.1\r\n")
    assert c.goaway_code() == h2_state.PROTOCOL_ERROR


def test_ping_is_answered_with_its_payload_and_acks_are_not() -> None:
    c = Recorder().start()
    c.receive(frame(PING, 0, 0, b"12345678") + frame(PING, 1, 0, b"87654321"))
    assert c.frames() == [(PING, 1, 0, b"12345678")]


def test_unknown_frames_and_settings_are_ignored() -> None:
    c = Recorder().start()
    c.receive(frame(0x42, 0xFF, 0, b"whatever") + frame(SETTINGS, 0, 0, struct.pack(">HI", 0x99, 7)))
    assert c.frames() == [(SETTINGS, 1, 0, b"")] and not c.is_closed


# -- flow control (section 6.9) ----------------------------------------------------------------


def test_many_initial_window_entries_are_applied_once() -> None:
    """One SETTINGS of 20,000 INITIAL_WINDOW_SIZE entries with 1,000 open streams: the last one
    counts, applied once per stream, not once per entry per stream."""
    c = Recorder().start()
    for stream_id in range(1, 2001, 2):
        c.receive(c.headers(stream_id))
    entries = b"".join(struct.pack(">HI", 4, 1000 + i) for i in range(20000))
    started = time.process_time()
    c.receive(frame(SETTINGS, 0, 0, entries))
    assert time.process_time() - started < 1.0
    assert {s.send_window for s in c.streams.values()} == {1000 + 19999}
    assert c.peer_initial_window == 1000 + 19999


def test_a_window_pushed_above_the_maximum_by_settings_is_a_connection_error() -> None:
    c = Recorder().start()
    c.receive(c.headers(1) + frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 2**31 - 1 - 65535)))
    c.receive(frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 65536)))
    assert c.goaway_code() == h2_state.FLOW_CONTROL_ERROR


def test_window_comes_back_only_for_what_the_application_took() -> None:
    limits = Http2Limits(stream_window_bytes=1000)
    c = Recorder(limits, is_consuming=False).start()
    c.receive(c.headers(1) + frame(DATA, 0, 1, bytes(1000)))
    assert not [f for f in c.frames() if f[0] == WINDOW_UPDATE]  # nothing taken, nothing given back
    c.receive(frame(DATA, 0, 1, b"x"))
    assert _rst(c.frames(), 1) == h2_state.FLOW_CONTROL_ERROR


def test_taken_bytes_are_credited_and_a_large_message_gets_room() -> None:
    limits = Http2Limits(stream_window_bytes=1000)
    c = Recorder(limits, is_consuming=False).start()
    c.receive(c.headers(1) + frame(DATA, 0, 1, bytes(600)))
    c.consume(c.streams[1], 600)
    assert (WINDOW_UPDATE, 0, 1, struct.pack(">I", 600)) in c.frames()
    c.make_room(c.streams[1], 5000)
    assert (WINDOW_UPDATE, 0, 1, struct.pack(">I", 5000 - 1000)) in c.frames()
    assert c.streams[1].recv_window == 5000


def test_padding_is_credited_at_once() -> None:
    limits = Http2Limits(stream_window_bytes=100)
    c = Recorder(limits, is_consuming=False).start()
    c.receive(c.headers(1) + frame(DATA, h2_state.PADDED, 1, b"\x3c" + b"ab" + bytes(60)))
    assert c.events[-1] == ("data", 1, b"ab", False)
    assert (WINDOW_UPDATE, 0, 1, struct.pack(">I", 61)) in c.frames()  # the 61 bytes of padding and its length


def test_content_length_must_match_the_data() -> None:
    c = Recorder().start()
    c.receive(c.headers(1, fields=REQUEST + [("content-length", "3")]) + frame(DATA, END_STREAM, 1, b"ab"))
    assert _rst(c.frames(), 1) == h2_state.PROTOCOL_ERROR


# -- request headers (section 8) ---------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/a")],
    [(b":scheme", b"http"), (b":path", b"/a")],
    [(b":method", b"POST"), (b":path", b"/a")],
    [(b":method", b"POST"), (b":scheme", b"http")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"")],
    [(b":method", b"POST"), (b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"), (b":path", b"/b")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"), (b":status", b"200")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"), (b":foo", b"x")],
    [(b":method", b"POST"), (b"content-type", b"x"), (b":scheme", b"http"), (b":path", b"/a")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"), (b"Content-Type", b"x")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"), (b"connection", b"close")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"), (b"upgrade", b"h2c")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"), (b"transfer-encoding", b"chunked")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"), (b"te", b"gzip")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"), (b"x", b"a\r\nb")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"), (b"x y", b"1")],
])
def test_malformed_requests_are_refused(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(MalformedRequest):
        validate_request_headers(headers)


def test_a_valid_request_passes() -> None:
    assert validate_request_headers([(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"),
                                     (b":authority", b"x"), (b"te", b"trailers"), (b"content-length", b"5")]) == 5


def test_a_malformed_request_is_a_stream_error_and_the_table_stays_in_step() -> None:
    c = Recorder().start()
    c.receive(c.headers(1, fields=[("connection", "close"), *REQUEST]))
    assert _rst(c.frames(), 1) == h2_state.PROTOCOL_ERROR
    c.receive(c.headers(3, END_HEADERS | END_STREAM))
    assert 3 in c.streams


def test_trailers_with_a_pseudo_header_are_malformed() -> None:
    c = Recorder().start()
    c.receive(c.headers(1) + c.headers(3))
    c.receive(c.headers(1, END_HEADERS | END_STREAM, fields=[(":path", "/x")]))
    c.receive(c.headers(3, END_HEADERS | END_STREAM, fields=[("grpc-foo", "1")]))
    frames = c.frames()
    assert _rst(frames, 1) == h2_state.PROTOCOL_ERROR and _rst(frames, 3) is None
    assert ("end", 3) in c.events


# -- HPACK (RFC 7541) --------------------------------------------------------------------------


def test_a_smaller_client_table_is_signalled_in_our_next_block() -> None:
    c = Recorder().start(struct.pack(">HI", 1, 0))
    c.receive(c.headers(1, END_HEADERS | END_STREAM))
    c.send_headers(c.streams[1], b"\x88", True)
    (kind, _, _, block), = [f for f in c.frames() if f[0] == HEADERS]
    assert block == b"\x20\x88"  # dynamic table size update to 0, then :status 200
    decoder = hpack.Decoder()
    decoder.max_allowed_table_size = 0
    decoder.header_table_size = 0
    assert decoder.decode(block) == [(":status", "200")]


# -- budgets and timeouts ----------------------------------------------------------------------


def test_rapid_reset_ends_in_enhance_your_calm() -> None:
    c = Recorder(Http2Limits(max_resets_per_window=50)).start()
    for stream_id in range(1, 400, 2):
        if c.is_closed:
            break
        c.receive(c.headers(stream_id) + frame(DATA, 0, stream_id, b"x")
                  + frame(RST_STREAM, 0, stream_id, struct.pack(">I", 8)))
    assert c.goaway_code() == h2_state.ENHANCE_YOUR_CALM and stream_id < 110


def test_deadline_cancels_of_older_streams_are_not_budgeted() -> None:
    """A loaded client cancelling calls at their deadline keeps its connection; rapid reset does not."""
    c = Recorder(Http2Limits(max_resets_per_window=50)).start()
    stream_ids = range(1, 400, 2)
    for stream_id in stream_ids:
        c.receive(c.headers(stream_id) + frame(DATA, 0, stream_id, b"x"))
    c.clock_s += 2.0
    c.tick(c.clock_s)
    for stream_id in stream_ids:  # 200 resets, four times the budget, of streams 2 s old
        c.receive(frame(RST_STREAM, 0, stream_id, struct.pack(">I", 8)))
    assert not c.is_closed and c.goaway_code() is None
    for stream_id in range(401, 800, 2):  # the same client turning to rapid reset is still stopped
        if c.is_closed:
            break
        c.receive(c.headers(stream_id) + frame(RST_STREAM, 0, stream_id, struct.pack(">I", 8)))
    assert c.goaway_code() == h2_state.ENHANCE_YOUR_CALM


def test_an_internal_error_ends_only_its_connection_with_internal_error(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Recorder):
        def _on_request(self, stream: H2Stream, fields: Any, is_end: bool) -> None:
            raise RuntimeError("a bug in the call layer")

    c = Broken(Http2Limits()).start()
    c.receive(c.headers(1))
    assert c.goaway_code() == h2_state.INTERNAL_ERROR and c.is_closed
    assert "internal error" in caplog.text and "a bug in the call layer" in caplog.text


def test_refused_streams_count_as_resets() -> None:
    c = Recorder(Http2Limits(max_concurrent_streams=1, max_resets_per_window=5)).start()
    c.receive(c.headers(1))
    for stream_id in range(3, 30, 2):
        if c.is_closed:
            break
        c.receive(c.headers(stream_id))
    frames = c.frames()
    assert _rst(frames, 3) == h2_state.REFUSED_STREAM
    assert [f for f in frames if f[0] == GOAWAY and struct.unpack(">I", f[3][4:8])[0] == 11]


@pytest.mark.parametrize(("limits", "flood"), [
    (Http2Limits(max_pings_per_window=20, max_ping_strikes=0), frame(PING, 0, 0, bytes(8))),
    (Http2Limits(), frame(PING, 0, 0, bytes(8))),  # ping strikes: 3 in a row with nothing sent
    (Http2Limits(max_settings_per_window=20), frame(SETTINGS, 0, 0)),
    (Http2Limits(max_empty_frames_per_window=20), frame(PRIORITY, 0, 3, struct.pack(">IB", 1, 1))),
    (Http2Limits(max_window_updates_per_window=20), frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1))),
    (Http2Limits(max_empty_frames_per_window=20), frame(0x77, 0, 0, b"")),
])
def test_floods_end_in_enhance_your_calm(limits: Http2Limits, flood: bytes) -> None:
    c = Recorder(limits).start()
    for _ in range(100):
        if c.is_closed:
            break
        c.receive(flood)
    assert c.goaway_code() == h2_state.ENHANCE_YOUR_CALM


def test_empty_data_frames_are_a_flood() -> None:
    c = Recorder(Http2Limits(max_empty_frames_per_window=20)).start()
    c.receive(c.headers(1))
    c.receive(frame(DATA, 0, 1) * 100)
    assert c.goaway_code() == h2_state.ENHANCE_YOUR_CALM


def test_continuations_are_counted_even_when_empty() -> None:
    c = Recorder(Http2Limits(max_continuations_per_block=16, max_empty_frames_per_window=0)).start()
    c.receive(frame(HEADERS, 0, 1, c.encoder.encode(REQUEST)) + frame(CONTINUATION, 0, 1) * 100)
    assert c.goaway_code() == h2_state.ENHANCE_YOUR_CALM


def test_budgets_slide() -> None:
    budget = SlidingWindowBudget(10, 1.0, 0.0)
    assert not any(budget.spend(0.5) for _ in range(10))
    assert budget.spend(0.5)
    assert not budget.spend(2.6)  # two windows later the old count is gone
    fresh = SlidingWindowBudget(10, 1.0, 0.0)
    for _ in range(10):
        fresh.spend(0.9)
    fresh.spend(1.1)
    assert fresh.spend(1.1)  # just past the window edge most of the old count still weighs


def test_no_preface_in_time_is_closed() -> None:
    c = Recorder(Http2Limits(preface_timeout_s=5))
    c.tick(c.clock_s + 4)
    assert not c.is_closed
    c.tick(c.clock_s + 5)
    assert c.goaway_code() == h2_state.PROTOCOL_ERROR


def test_an_unfinished_header_block_is_closed() -> None:
    c = Recorder(Http2Limits(header_block_timeout_s=2)).start()
    c.receive(frame(HEADERS, 0, 1, c.encoder.encode(REQUEST)))
    c.tick(c.clock_s + 2)
    assert c.goaway_code() == h2_state.ENHANCE_YOUR_CALM


def test_an_idle_connection_is_told_no_error() -> None:
    c = Recorder(Http2Limits(idle_timeout_s=60)).start()
    c.receive(c.headers(1))
    c.tick(c.clock_s + 100)
    assert not c.is_closed  # a call is open
    c.clock_s += 100
    c.reset_stream(c.streams[1], h2_state.CANCEL)
    c.tick(c.clock_s + 59)
    assert not c.is_closed
    c.tick(c.clock_s + 60)
    assert c.goaway_code() == h2_state.NO_ERROR and c.is_transport_closed


def test_keepalive_pings_and_closes_a_silent_peer() -> None:
    c = Recorder(Http2Limits(keepalive_time_s=10, keepalive_timeout_s=5, idle_timeout_s=0)).start()
    c.tick(c.clock_s + 20)
    assert not c.frames()  # no call open, and pings without calls are not permitted
    c.receive(c.headers(1))
    c.tick(c.clock_s + 20)  # the tick after the read notes it
    c.tick(c.clock_s + 30)
    assert [f[0] for f in c.frames()] == [PING]
    c.receive(frame(PING, 1, 0, b"keepaliv"))  # acknowledged
    c.clock_s += 30
    c.tick(c.clock_s)
    c.tick(c.clock_s + 10)
    assert [f[0] for f in c.frames()] == [PING]
    c.tick(c.clock_s + 15)
    assert c.goaway_code() == h2_state.NO_ERROR and c.is_transport_closed


def test_keepalive_stops_after_max_pings_without_data() -> None:
    c = Recorder(Http2Limits(keepalive_time_s=10, keepalive_timeout_s=5, max_pings_without_data=1,
                             keepalive_permit_without_calls=True, idle_timeout_s=0)).start()
    c.tick(c.clock_s)  # the tick after the preface notes the read
    c.tick(c.clock_s + 10)
    c.receive(frame(PING, 1, 0, b"keepaliv"))
    c.tick(c.clock_s + 11)
    c.tick(c.clock_s + 21)
    assert [f[0] for f in c.frames()] == [PING]  # one, then none until we send data
    c.sent_count += 1
    c.tick(c.clock_s + 31)
    assert [f[0] for f in c.frames()] == [PING]


def test_window_updates_and_pings_that_follow_our_answers_are_free() -> None:
    """grpc-core clients return window (and send BDP PINGs) as answers arrive: at 5,000 calls/s that
    is tens of thousands a window, none of which is a flood."""
    c = Recorder(Http2Limits(max_window_updates_per_window=20, max_pings_per_window=5)).start()
    c.receive(c.headers(1))
    for _ in range(200):
        c.sent_count += 1  # a DATA frame of ours
        c.receive(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 10)) + frame(PING, 0, 0, bytes(8)))
    assert not c.is_closed
    c.receive(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 10)) * 40)  # with nothing sent, they count
    assert c.goaway_code() == h2_state.ENHANCE_YOUR_CALM


# -- the header cache (RFC 7541 section 6) ---------------------------------------------------------


def _table(decoder: hpack.Decoder) -> tuple[Any, ...]:
    return tuple(decoder.header_table.dynamic_entries), decoder.header_table.maxsize


@pytest.mark.parametrize(("block", "is_neutral"), [
    (b"\x83\x86\xbe", True),  # indexed fields, one byte each
    (b"\x83\xff\x00", True),  # indexed field 127: a two-byte integer
    (b"\x83\xff\x81\x01", True),  # a three-byte integer
    (b"\x83\xff", False),  # cut inside the integer
    (b"\x1f\x08\x88" + bytes(8), True),  # never indexed, name index 23 (two bytes), Huffman value of 8 bytes
    (b"\x0f\x10\x03abc", True),  # without indexing, name index 31
    (b"\x00\x03abc\x01x", True),  # without indexing, new name
    (b"\x10\x83" + bytes(3) + b"\x81" + bytes(1), True),  # never indexed, new Huffman name and value
    (b"\x00\x7f\x01" + bytes(128) + b"\x00", True),  # a name length of 128: a two-byte length
    (b"\x00\x03ab", False),  # cut inside the name
    (b"\x0f\x10\x05abc", False),  # cut inside the value
    (b"\x83\x40\x01a\x01b", False),  # incremental indexing, new name
    (b"\x41\x01a", False),  # incremental indexing, name index 1
    (b"\x20\x83", False),  # dynamic table size update first
    (b"\x83\x3f\xe1\x1f", False),  # a size update later in the block
    (b"", False),
])
def test_table_neutral_blocks(block: bytes, is_neutral: bool) -> None:
    assert h2_state.is_table_neutral_block(block) is is_neutral


def test_table_neutral_matches_the_decoder_on_encoder_output() -> None:
    """Blocks as a real encoder writes them (Huffman, never-indexed, indexed): neutral exactly when
    decoding them leaves the table as it was."""
    rng = __import__("random").Random(7)
    encoder, decoder = hpack.Encoder(), hpack.Decoder()
    for _ in range(300):
        fields: list[Any] = [(":method", "POST"), (":path", f"/s/{rng.randrange(4)}")]
        for _ in range(rng.randrange(4)):
            name = rng.choice(["authorization", "x-a", "x-" + "b" * rng.randrange(1, 200), "te"])
            value = "v" * rng.randrange(0, 300)
            fields.append((name, value, True) if rng.random() < 0.4 else (name, value))
        block = encoder.encode(fields, huffman=rng.random() < 0.5)
        before = _table(decoder)
        decoder.decode(block, raw=True)
        assert h2_state.is_table_neutral_block(block) is (_table(decoder) == before), block.hex()


def test_the_cache_holds_blocks_with_unindexed_literals_until_the_table_changes() -> None:
    c = Recorder().start()
    token_request = REQUEST + [("authorization", "Bearer s3cret", True)]  # never indexed, as grpc-core sends it
    reference = hpack.Decoder()
    blocks = []
    for stream_id in (1, 3, 5):
        block = c.encoder.encode(token_request)
        blocks.append(block)
        expected = reference.decode(block, raw=True)
        c.receive(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block))
        # The first block indexes the request's fields, so it is not kept; the ones after are.
        assert c.header_cache.get(block, (None,))[0] == (expected if stream_id > 1 else None)
    assert blocks[1] == blocks[2] and blocks[1][-1:] != b"\x00" and b"\x1f\x08" in blocks[1]
    cached = c.header_cache[blocks[1]]
    c.receive(frame(HEADERS, END_HEADERS | END_STREAM, 7, blocks[1]))
    assert c.events[-1] == ("request", 7, True) and c.header_cache[blocks[1]] is cached
    # A block that adds to the table empties the cache: the same bytes may now mean something else.
    adding = c.encoder.encode(REQUEST + [("x-new", "1")])
    reference.decode(adding, raw=True)
    c.receive(frame(HEADERS, END_HEADERS | END_STREAM, 9, adding))
    assert blocks[1] not in c.header_cache
    again = c.encoder.encode(token_request)
    c.receive(frame(HEADERS, END_HEADERS | END_STREAM, 11, again))
    assert c.header_cache[again][0] == reference.decode(again, raw=True)


def test_trailers_that_add_to_the_table_empty_the_cache() -> None:
    c = Recorder().start()
    block = c.encoder.encode(REQUEST)
    c.receive(frame(HEADERS, END_HEADERS, 1, block))
    block = c.encoder.encode(REQUEST)
    c.receive(frame(HEADERS, END_HEADERS, 3, block))
    assert block in c.header_cache
    c.receive(frame(HEADERS, END_HEADERS | END_STREAM, 1, c.encoder.encode([("x-trailer", "t")])))
    assert not c.header_cache and c.events[-1] == ("end", 1)


def test_the_cache_is_bounded() -> None:
    c = Recorder().start()
    stream_id = 1
    for i in range(h2_state.HEADER_CACHE_ENTRIES + 5):
        c.receive(frame(HEADERS, END_HEADERS | END_STREAM, stream_id,
                        c.encoder.encode(REQUEST + [("x-n", str(i), True)])))
        stream_id += 2
        assert len(c.header_cache) <= h2_state.HEADER_CACHE_ENTRIES
    big = c.encoder.encode(REQUEST + [("x-big", "v" * h2_state.HEADER_CACHE_BLOCK_BYTES, True)], huffman=False)
    c.receive(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, big))
    assert c.events[-1] == ("request", stream_id, True) and big not in c.header_cache


def test_a_whole_answer_in_one_write_or_none_of_it() -> None:
    c = Recorder().start()
    c.receive(c.headers(1) + frame(DATA, END_STREAM, 1, b"abc"))
    stream = c.streams[1]
    sent_count, window = c.sent_count, c.send_window
    assert c.send_answer(stream, b"\x88", b"\x00" * 10, b"\x00\x01a\x011")
    assert [(kind, flags) for kind, flags, _, _ in c.frames()] == [(HEADERS, END_HEADERS), (DATA, 0),
                                                                   (HEADERS, END_HEADERS | END_STREAM)]
    assert c.sent_count == sent_count + 3 and c.send_window == window - 10
    assert 1 not in c.streams and c.closed[1] is h2_state.ClosedBy.END_STREAM
    c.receive(c.headers(3) + frame(DATA, END_STREAM, 3, b"abc"))
    stream = c.streams[3]
    stream.send_window = 9
    assert not c.send_answer(stream, b"\x88", b"\x00" * 10, b"\x00\x01a\x011")
    assert not c.frames() and c.sent_count == sent_count + 3 and stream.state is StreamState.HALF_CLOSED_REMOTE
