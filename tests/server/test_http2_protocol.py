"""The native HTTP/2 transport against misbehaving peers, driven frame by frame over a fake transport."""

from __future__ import annotations

import asyncio
import gzip
import struct
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_to_bytes

import hpack
import pytest

from infergate.server.transports import h2_state, native
from infergate.server.transports.h2_state import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
)
from infergate.server.transports.native import Http2Connection, Http2Limits, Http2Server, Route

BIG_REPLY = b"x" * 200_000  # above the default 65,535-byte window


class FakeTransport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str) -> Any:
        return None


def _headers(path: str, *extra: tuple[str, str]) -> bytes:
    return hpack.Encoder().encode([(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "x"),
                                   ("content-type", "application/grpc"), *extra])


def _message(body: bytes, flag: int = 0) -> bytes:
    return bytes((flag,)) + len(body).to_bytes(4, "big") + body


def _call(stream_id: int, path: str, body: bytes, *headers: tuple[str, str], flag: int = 0) -> bytes:
    """A whole unary call from the client: HEADERS, then one message with END_STREAM."""
    return (frame(HEADERS, END_HEADERS, stream_id, _headers(path, *headers))
            + frame(DATA, END_STREAM, stream_id, _message(body, flag)))


def _frames(out: bytes) -> list[tuple[int, int, int, bytes]]:
    frames, i = [], 0
    while i + 9 <= len(out):
        length_kind, flags, stream_id = h2_state.FRAME.unpack_from(out, i)
        end = i + 9 + (length_kind >> 8)
        frames.append((length_kind & 0xFF, flags, stream_id, bytes(out[i + 9:end])))
        i = end
    return frames


def _status(transport: FakeTransport, stream_id: int) -> tuple[bytes, str] | None:
    """(grpc-status, decoded grpc-message) of a stream's trailers, or None if it has none."""
    for kind, flags, sid, payload in _frames(transport.out):
        if kind == HEADERS and sid == stream_id and flags & END_STREAM:
            fields = dict(hpack.Decoder().decode(payload, raw=True))
            return fields[b"grpc-status"], unquote_to_bytes(fields.get(b"grpc-message", b"")).decode()
    return None


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


async def _connect(routes: dict[bytes, Route], max_message_bytes: int = 64 << 20,
                   limits: Http2Limits | None = None) -> tuple[Http2Connection, FakeTransport]:
    server = Http2Server(routes, max_message_bytes, limits=limits or Http2Limits())
    connection, transport = Http2Connection(server), FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    connection.data_received(PREFACE + frame(SETTINGS, 0, 0))
    return connection, transport


async def _big(body: bytes, context: Any) -> bytes:
    return BIG_REPLY


async def _small(body: bytes, context: Any) -> bytes:
    return b"ok:" + body


ROUTES = {b"/big": Route(unary=_big), b"/small": Route(unary=_small)}


def test_a_reset_while_the_answer_waits_for_window_forgets_the_call() -> None:
    async def scenario() -> None:
        connection, _ = await _connect(ROUTES)
        connection.data_received(_call(1, "/big", b"r"))
        await asyncio.sleep(0.01)
        assert connection.streams[1].trailers is not None  # blocked behind the window
        connection.data_received(frame(RST_STREAM, 0, 1, struct.pack(">I", h2_state.CANCEL)))
        assert 1 not in connection.streams and not connection.blocked

    run(scenario)


def test_a_deadline_while_the_answer_waits_for_window_resets_it() -> None:
    async def scenario() -> None:
        connection, transport = await _connect(ROUTES)
        connection.data_received(_call(1, "/big", b"r", ("grpc-timeout", "50m")))
        await asyncio.sleep(0.2)
        connection.flush_writes()
        assert 1 not in connection.streams
        assert (RST_STREAM, 0, 1, struct.pack(">I", h2_state.CANCEL)) in _frames(transport.out)

    run(scenario)


def test_a_truncated_gzip_message_fails_its_call_only() -> None:
    async def scenario() -> None:
        connection, transport = await _connect(ROUTES)
        gzip_header = ("grpc-encoding", "gzip")
        connection.data_received(_call(1, "/small", gzip.compress(b"hello")[:-8], gzip_header, flag=1))
        connection.data_received(_call(3, "/small", gzip.compress(b"hello"), gzip_header, flag=1))
        await asyncio.sleep(0.01)
        connection.flush_writes()
        assert _status(transport, 1) == (b"13", "cannot decompress the request message: it is truncated")
        assert _status(transport, 3) == (b"0", "")
        assert not transport.closed

    run(scenario)


def test_a_decompression_bomb_stops_at_the_message_limit() -> None:
    async def scenario() -> None:
        connection, transport = await _connect(ROUTES, max_message_bytes=1 << 20)
        bomb = gzip.compress(b"\0" * (200 << 20))
        tracemalloc.start()
        connection.data_received(_call(1, "/small", bomb, ("grpc-encoding", "gzip"), flag=1))
        peak_bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        connection.flush_writes()
        assert peak_bytes < 16 << 20
        assert _status(transport, 1) == (b"8", "Received message larger than max (more than 1048576 bytes "
                                                "decompressed)")

    run(scenario)


def test_an_unknown_encoding_is_unimplemented() -> None:
    async def scenario() -> None:
        connection, transport = await _connect(ROUTES)
        connection.data_received(_call(1, "/small", b"x", ("grpc-encoding", "snappy"), flag=1))
        connection.flush_writes()
        assert _status(transport, 1) == (b"12", "grpc-encoding 'snappy' is not supported; send identity, gzip or "
                                                "deflate")

    run(scenario)


def test_a_continuation_flood_closes_the_connection() -> None:
    async def scenario() -> None:
        connection, transport = await _connect(ROUTES)
        connection.data_received(frame(HEADERS, 0, 1, _headers("/small")))
        for _ in range(50):
            if transport.closed:
                break
            connection.data_received(frame(CONTINUATION, 0, 1, b"\x00" * 16384))
        assert transport.closed
        assert any(kind == GOAWAY for kind, _, _, _ in _frames(transport.out))

    run(scenario)


def test_no_reset_after_the_client_already_ended_its_side() -> None:
    async def scenario() -> None:
        connection, transport = await _connect(ROUTES)
        connection.data_received(frame(HEADERS, END_HEADERS | END_STREAM, 1, _headers("/nope")))
        connection.flush_writes()
        assert _status(transport, 1) is not None
        assert not any(kind == RST_STREAM for kind, _, _, _ in _frames(transport.out))
        assert 1 not in connection.streams

    run(scenario)


@pytest.mark.parametrize(("bad", "code"), [
    (frame(DATA, h2_state.PADDED, 1, b"\x09abc"), h2_state.PROTOCOL_ERROR),  # pad length beyond the payload
    (frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)), h2_state.PROTOCOL_ERROR),
    (frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1)), h2_state.FLOW_CONTROL_ERROR),
])
def test_protocol_violations_end_the_connection(bad: bytes, code: int) -> None:
    async def scenario() -> None:
        connection, transport = await _connect(ROUTES)
        connection.data_received(frame(HEADERS, END_HEADERS, 1, _headers("/small")) + bad)
        goaways = [p for kind, _, _, p in _frames(transport.out) if kind == GOAWAY]
        assert transport.closed and goaways and struct.unpack(">I", goaways[0][4:8])[0] == code

    run(scenario)


def test_data_beyond_the_window_is_a_flow_control_error() -> None:
    async def scenario() -> None:
        never = asyncio.Event()

        async def stuck(body: bytes, context: Any) -> bytes:
            await never.wait()
            return b""

        # One message in work at a time, and it never ends: no window is given back after the first.
        connection, transport = await _connect({b"/stream": Route(per_message=stuck)},
                                               limits=Http2Limits(max_messages_in_flight_per_stream=1))
        connection.data_received(frame(HEADERS, END_HEADERS, 1, _headers("/stream")))
        chunk = frame(DATA, 0, 1, _message(b"\0" * (512 << 10)))
        for _ in range(Http2Limits().stream_window_bytes // (512 << 10) + 1):
            connection.data_received(chunk)
        connection.flush_writes()
        assert (RST_STREAM, 0, 1, struct.pack(">I", h2_state.FLOW_CONTROL_ERROR)) in _frames(transport.out)
        assert 1 not in connection.streams

    run(scenario)


def test_a_streaming_client_faster_than_the_model_gets_no_more_window() -> None:
    gate = asyncio.Event

    async def scenario() -> None:
        opened = gate()

        async def slow(body: bytes, context: Any) -> bytes:
            await opened.wait()
            return b"done"

        connection, transport = await _connect({b"/stream": Route(per_message=slow)},
                                               limits=Http2Limits(max_messages_in_flight_per_stream=4))
        connection.data_received(frame(HEADERS, END_HEADERS, 1, _headers("/stream")))
        message = frame(DATA, 0, 1, _message(b"\0" * (512 << 10)))
        for _ in range(10):  # 5 MiB, past the half-window credit point, with 10 requests unanswered
            connection.data_received(message)
        connection.flush_writes()
        assert not [f for f in _frames(transport.out) if f[0] == WINDOW_UPDATE and f[2] == 1]
        opened.set()
        await asyncio.sleep(0.01)
        connection.flush_writes()
        assert [f for f in _frames(transport.out) if f[0] == WINDOW_UPDATE and f[2] == 1]

    run(scenario)


def test_long_error_messages_are_cut_whole_characters_under_the_cap() -> None:
    block = native.status_trailers(3, "\u00e9" * 10_000)
    message = dict(hpack.Decoder().decode(block, raw=True))[b"grpc-message"]
    assert len(message) <= native.MAX_GRPC_MESSAGE_BYTES
    assert set(unquote_to_bytes(message).decode()) == {"\u00e9"}


# -- budgets, timeouts and limits of the connection ------------------------------------------------


def _goaway(transport: FakeTransport) -> tuple[int, bytes] | None:
    goaways = [p for kind, _, _, p in _frames(transport.out) if kind == GOAWAY]
    return (struct.unpack(">I", goaways[0][4:8])[0], goaways[0][8:]) if goaways else None


def test_a_request_message_that_stops_arriving_is_cancelled() -> None:
    async def scenario() -> None:
        connection, transport = await _connect(ROUTES, limits=Http2Limits(message_read_timeout_s=5))
        connection.data_received(frame(HEADERS, END_HEADERS, 1, _headers("/small"))
                                 + frame(DATA, 0, 1, b"\0\0\0\0\x09ab"))
        connection.tick(connection.now + 4)
        assert _status(transport, 1) is None
        connection.tick(connection.now + 5)
        connection.flush_writes()
        assert _status(transport, 1) == (b"1", "the request message stopped arriving: nothing for 5 s")
        assert (RST_STREAM, 0, 1, struct.pack(">I", h2_state.NO_ERROR)) in _frames(transport.out)

    run(scenario)


def test_an_idle_connection_gets_goaway_no_error() -> None:
    async def scenario() -> None:
        connection, transport = await _connect(ROUTES, limits=Http2Limits(idle_timeout_s=60))
        connection.tick(connection.now + 61)
        assert _goaway(transport) == (h2_state.NO_ERROR, b"no calls for 60 s") and transport.closed

    run(scenario)


def test_no_preface_in_time_closes_the_connection() -> None:
    async def scenario() -> None:
        server = Http2Server(ROUTES, 1024, limits=Http2Limits(preface_timeout_s=1))
        connection, transport = Http2Connection(server), FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        connection.data_received(PREFACE[:10])
        connection.tick(connection.now + 1)
        assert transport.closed and server.goaways["preface_timeout"] == 1

    run(scenario)


def test_beyond_the_connection_cap_an_idle_connection_makes_way_or_the_new_one_is_refused() -> None:
    async def scenario() -> None:
        server = Http2Server(ROUTES, 1024, limits=Http2Limits(max_connections=2))
        pairs = []
        for _ in range(3):
            connection, transport = Http2Connection(server), FakeTransport()
            connection.connection_made(transport)  # type: ignore[arg-type]
            connection.data_received(PREFACE + frame(SETTINGS, 0, 0))
            pairs.append((connection, transport))
        assert pairs[0][1].closed and _goaway(pairs[0][1]) is not None  # the longest idle made way
        assert not pairs[1][1].closed and not pairs[2][1].closed
        for connection, _ in pairs[1:]:
            connection.data_received(frame(HEADERS, END_HEADERS, 1, _headers("/small")))  # busy now
        late, transport = Http2Connection(server), FakeTransport()
        late.connection_made(transport)  # type: ignore[arg-type]
        assert transport.closed and not transport.out and server.refused_connections == 1

    run(scenario)


def test_a_tls_client_without_h2_by_alpn_is_refused() -> None:
    class TlsTransport(FakeTransport):
        def get_extra_info(self, name: str) -> Any:
            return type("SslObject", (), {"selected_alpn_protocol": lambda self: "http/1.1"})() \
                if name == "ssl_object" else None

    async def scenario() -> None:
        connection, transport = Http2Connection(Http2Server(ROUTES, 1024)), TlsTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        assert transport.closed and not transport.out

    run(scenario)


def test_the_access_policy_answers_a_refused_call_trailers_only() -> None:
    class Deny:
        header_names = frozenset((b"authorization",))

        def __init__(self) -> None:
            self.seen: list[tuple[bytes, dict[bytes, bytes]]] = []

        def check(self, path: bytes, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
            self.seen.append((path, headers))
            return None if headers.get(b"authorization") == b"Bearer ok" else (16, "no valid token")

    async def scenario() -> None:
        access = Deny()
        server = Http2Server(ROUTES, 1024, access=access)
        connection, transport = Http2Connection(server), FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        connection.data_received(PREFACE + frame(SETTINGS, 0, 0))
        connection.data_received(_call(1, "/small", b"x", ("authorization", "Bearer no")))
        connection.data_received(_call(3, "/small", b"x", ("authorization", "Bearer ok")))
        await asyncio.sleep(0.01)
        connection.flush_writes()
        assert _status(transport, 1) == (b"16", "no valid token")
        assert _status(transport, 3) == (b"0", "")
        assert access.seen == [(b"/small", {b"authorization": b"Bearer no"}),
                               (b"/small", {b"authorization": b"Bearer ok"})]

    run(scenario)


def test_unfinished_messages_are_bounded_by_the_connection_window() -> None:
    """Six calls each declaring a 14 MiB message and sending part of it: the connection's window is
    not given back for bytes no call has taken, so the client cannot make the server hold more."""
    async def scenario() -> None:
        connection, transport = await _connect(ROUTES, max_message_bytes=16 << 20,
                                               limits=Http2Limits(connection_window_bytes=1 << 20))
        window = connection.connection_window
        assert window == (16 << 20) + 5 + Http2Limits().stream_window_bytes  # one largest message fits
        chunk = bytes(512 << 10)
        sent = 0
        for stream_id in range(1, 13, 2):
            connection.data_received(frame(HEADERS, END_HEADERS, stream_id, _headers("/small"))
                                     + frame(DATA, 0, stream_id, b"\0" + (14 << 20).to_bytes(4, "big") + chunk))
            sent += 5 + len(chunk)
        while sent + len(chunk) <= window and not transport.closed:
            connection.data_received(frame(DATA, 0, 1 + 2 * (sent // len(chunk) % 6), chunk))
            sent += len(chunk)
        connection.flush_writes()
        updates = [p for kind, _, sid, p in _frames(transport.out) if kind == WINDOW_UPDATE and sid == 0]
        assert len(updates) == 1  # the initial one only: nothing was credited back
        connection.data_received(frame(DATA, 0, 1, chunk))
        connection.flush_writes()
        goaway = _goaway(transport)
        assert goaway is not None and goaway[0] == h2_state.FLOW_CONTROL_ERROR

    run(scenario)


def test_a_stream_of_tiny_messages_starts_no_more_tasks_than_the_cap() -> None:
    async def scenario() -> None:
        started = 0
        never = asyncio.Event()

        async def stuck(body: bytes, context: Any) -> bytes:
            nonlocal started
            started += 1
            await never.wait()
            return b""

        connection, transport = await _connect({b"/stream": Route(per_message=stuck)})
        connection.data_received(frame(HEADERS, END_HEADERS, 1, _headers("/stream")))
        connection.data_received(frame(DATA, 0, 1, _message(b"x") * 100_000))
        await asyncio.sleep(0.01)
        assert started == Http2Limits().max_messages_in_flight_per_stream
        assert len(connection.streams[1].inbox) == (100_000 - started) * 6  # the rest waits, unparsed
        for stream in list(connection.streams.values()):
            connection._reset(stream, h2_state.CANCEL)  # type: ignore[arg-type]
        await asyncio.sleep(0)

    run(scenario)


@pytest.mark.parametrize("ending", ["client reset", "read timeout"])
def test_a_call_that_ends_with_a_partial_message_gives_its_bytes_back(ending: str) -> None:
    async def scenario() -> None:
        connection, transport = await _connect(ROUTES, limits=Http2Limits(message_read_timeout_s=5))
        window = connection.connection_window
        connection.data_received(frame(HEADERS, END_HEADERS, 1, _headers("/small"))
                                 + frame(DATA, 0, 1, b"\0" + (1 << 20).to_bytes(4, "big") + bytes(300_000)))
        assert connection.recv_window + connection.unacked_bytes == window - 300_005
        if ending == "client reset":
            connection.data_received(frame(RST_STREAM, 0, 1, struct.pack(">I", h2_state.CANCEL)))
        else:
            connection.tick(connection.now + 5)
        assert connection.recv_window + connection.unacked_bytes == window and 1 not in connection.streams

    run(scenario)
