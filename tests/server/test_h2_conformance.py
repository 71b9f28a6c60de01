"""HTTP/2 conformance of the native transport against a real `infergate serve`, case by RFC section (h2spec's list).

Each case talks to the server frame by frame (raw frames where a well-behaved library would refuse
to send them, the `h2` library as the peer for well-formed exchanges), asserts the exact answer (a
connection error's GOAWAY code, a stream error's RST_STREAM code, or a normal answer), and ends by
checking that a normal call on a fresh connection is still answered. A PING after the case's frames
tells when the server has processed them all, so no case waits on a clock.

Covered, as h2spec names them:
  RFC 9113: 3.4-3.5 (preface, first SETTINGS); 4.1 (unknown types, flags, reserved bit); 4.2 (frame
  size); 4.3 (header compression and decompression, interleaved header blocks); 5.1 (stream states:
  idle, half-closed (remote), closed after RST_STREAM and after END_STREAM); 5.1.1 (stream ids:
  even, decreasing); 5.1.2 (concurrency limit); 5.3.1 (self-dependency); 5.4.1 (GOAWAY then close);
  5.5 (extension frames); 6.1 DATA; 6.2 HEADERS; 6.3 PRIORITY; 6.4 RST_STREAM; 6.5, 6.5.2, 6.5.3
  SETTINGS; 6.7 PING; 6.8 GOAWAY; 6.9, 6.9.1, 6.9.2 WINDOW_UPDATE and flow control; 6.10
  CONTINUATION; 7 error codes; 8.1 (trailers), 8.1.1 (content-length), 8.2 / 8.2.1 / 8.2.2 (field
  validity, connection-specific fields, te), 8.3 / 8.3.1 (request pseudo-headers); 8.4 (PUSH_PROMISE).
  RFC 7541: 2.3.3 (index out of range), 4.2 and 6.3 (dynamic table size update above our
  SETTINGS_HEADER_TABLE_SIZE; the client's smaller table honoured in our blocks), 5.2 (Huffman EOS
  and padding), 6.1 (index 0).
  Budgets (ENHANCE_YOUR_CALM): rapid reset, CONTINUATION flood, SETTINGS flood, ping strikes; the
  GOAWAY counter on /metrics and the bounded log.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import hpack
import pytest

from infergate.server.transports.h2_state import (
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    frame,
)
from infergate.server.transports.native import Http2Limits, Http2Server, Route

from harness import EXTRA_SERVE_ARGS, ServerProcess, start_server

pytestmark = pytest.mark.skipif(bool(EXTRA_SERVE_ARGS), reason="tests the native transport itself")

LIVE = "/inference.GRPCInferenceService/ServerLive"
WATCH = "/grpc.health.v1.Health/Watch"  # answers, then keeps the stream open: half-closed (remote)
EMPTY_MESSAGE = b"\x00\x00\x00\x00\x00"  # a gRPC message of zero bytes (an empty protobuf)
MAX_FRAME = 1 << 20  # what the server announces
Frame = tuple[int, int, int, bytes]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository: Path = tmp_path_factory.mktemp("h2conformance")
    proc = start_server("--model-repository", str(repository))
    yield proc
    assert proc.stop() == 0


class Peer:
    """A hand-driven client: the preface and SETTINGS exchange, then exactly the frames a case sends."""

    def __init__(self, address: str, settings: bytes = b"") -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buffer = b""
        self.is_eof = False
        self.pings = 0
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0, settings))
        first = self.read_frame()
        assert first is not None and first[0] == SETTINGS
        self.sock.sendall(frame(SETTINGS, 1, 0))

    def headers(self, stream_id: int, flags: int = END_HEADERS, path: str = LIVE,
                fields: list[tuple[str, str]] | None = None, extra: list[tuple[str, str]] | None = None) -> bytes:
        block = self.block(path, fields, extra)
        return frame(HEADERS, flags, stream_id, block)

    def block(self, path: str = LIVE, fields: list[tuple[str, str]] | None = None,
              extra: list[tuple[str, str]] | None = None) -> bytes:
        if fields is None:
            fields = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "t"),
                      ("content-type", "application/grpc"), ("te", "trailers")]
        return self.encoder.encode(fields + (extra or []))

    def send(self, *frames: bytes) -> None:
        try:
            self.sock.sendall(b"".join(frames))
        except (BrokenPipeError, ConnectionResetError):
            self.is_eof = True

    def read_frame(self) -> Frame | None:
        while len(self.buffer) < 9 or len(self.buffer) < 9 + (FRAME.unpack_from(self.buffer)[0] >> 8):
            try:
                chunk = self.sock.recv(1 << 20)
            except (ConnectionResetError, TimeoutError):
                chunk = b""
            if not chunk:
                self.is_eof = True
                return None
            self.buffer += chunk
        length_kind, flags, stream_id = FRAME.unpack_from(self.buffer)
        end = 9 + (length_kind >> 8)
        payload, self.buffer = self.buffer[9:end], self.buffer[end:]
        return length_kind & 0xFF, flags, stream_id, payload

    def sync(self) -> list[Frame]:
        """Every frame up to the answer to a PING sent now (or up to the connection's end)."""
        self.pings += 1
        token = struct.pack(">Q", self.pings)
        self.send(frame(PING, 0, 0, token))
        frames = []
        while (f := self.read_frame()) is not None:
            if f == (PING, 1, 0, token):
                return frames
            frames.append(f)
        return frames

    def until_end(self) -> list[Frame]:
        frames = []
        while (f := self.read_frame()) is not None:
            frames.append(f)
        return frames

    def until_trailers(self, stream_id: int) -> list[Frame]:
        frames = []
        while (f := self.read_frame()) is not None:
            frames.append(f)
            if f[0] == HEADERS and f[2] == stream_id and f[1] & END_STREAM:
                break
        return frames

    def until_response_headers(self, stream_id: int) -> list[Frame]:
        """Frames up to the response's HEADERS: from then on its answer is queued at the server."""
        frames = []
        while (f := self.read_frame()) is not None:
            frames.append(f)
            if f[0] == HEADERS and f[2] == stream_id:
                break
        return frames

    def close(self) -> None:
        self.sock.close()


def goaway_codes(frames: list[Frame]) -> list[int]:
    return [struct.unpack(">I", p[4:8])[0] for kind, _, _, p in frames if kind == GOAWAY]


def rst_codes(frames: list[Frame], stream_id: int) -> list[int]:
    return [struct.unpack(">I", p)[0] for kind, _, sid, p in frames if kind == RST_STREAM and sid == stream_id]


def call_with_h2(address: str, *, header_table_size: int | None = None) -> dict[bytes, bytes]:
    """A whole ServerLive call with python-hyper's h2 as the client; returns the trailers."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        if header_table_size is not None:
            conn.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: header_table_size})
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, [(":method", "POST"), (":scheme", "http"), (":path", LIVE), (":authority", "t"),
                                      ("content-type", "application/grpc"), ("te", "trailers")])
        conn.send_data(stream_id, EMPTY_MESSAGE, end_stream=True)
        sock.sendall(conn.data_to_send())
        trailers: dict[bytes, bytes] = {}
        body = b""
        while True:
            data = sock.recv(65536)
            assert data, "the server closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = dict(event.headers)  # type: ignore[arg-type]
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise AssertionError(f"GOAWAY {event.error_code}")
                elif isinstance(event, h2.events.StreamEnded):
                    assert body[5:] == b"\x08\x01"  # ServerLiveResponse(live=True)
                    return trailers
            sock.sendall(conn.data_to_send())


@pytest.fixture()
def peer(server: ServerProcess) -> Iterator[Peer]:
    client = Peer(server.address)
    yield client
    client.close()
    assert call_with_h2(server.address)[b"grpc-status"] == b"0"  # and the server still serves


# -- connection errors: the answer is GOAWAY(code) and the end of the connection ---------------------

Case = Callable[[Peer], list[bytes]]


def _answered(p: Peer, stream_id: int = 1) -> None:
    """A ServerLive call on stream_id, answered: the stream is closed by both END_STREAMs."""
    p.send(p.headers(stream_id), frame(DATA, END_STREAM, stream_id, EMPTY_MESSAGE))
    p.until_trailers(stream_id)


def _reset(p: Peer, stream_id: int = 1) -> None:
    p.send(p.headers(stream_id), frame(RST_STREAM, 0, stream_id, struct.pack(">I", CANCEL)))


def _watching(p: Peer, stream_id: int = 1) -> None:
    """A health Watch: answered once, then left open by the server, closed by the client (half-closed (remote))."""
    p.send(p.headers(stream_id, path=WATCH), frame(DATA, END_STREAM, stream_id, EMPTY_MESSAGE))
    while (f := p.read_frame()) is not None and f[0] != DATA:
        pass


CONNECTION_ERRORS: list[tuple[str, Callable[[Peer], object], Callable[[Peer], list[bytes]], int]] = [
    ("http2/4.2/2 DATA above SETTINGS_MAX_FRAME_SIZE", lambda p: p.send(p.headers(1)),
     lambda p: [frame(DATA, 0, 1, bytes(MAX_FRAME + 1))], FRAME_SIZE_ERROR),
    ("http2/4.2/3 HEADERS above SETTINGS_MAX_FRAME_SIZE", lambda p: None,
     lambda p: [frame(HEADERS, END_HEADERS, 1, p.block() + bytes(MAX_FRAME))], FRAME_SIZE_ERROR),
    ("http2/4.3/1 invalid header block", lambda p: None,
     lambda p: [frame(HEADERS, END_HEADERS, 1, b"\x00\x85\xf2\xb2\x4a\x87\xff")], COMPRESSION_ERROR),
    ("http2/4.3/2 PRIORITY inside a header block", lambda p: None,
     lambda p: [frame(HEADERS, 0, 1, p.block()), frame(PRIORITY, 0, 1, struct.pack(">IB", 0, 16))],
     PROTOCOL_ERROR),
    ("http2/4.3/3 HEADERS of another stream inside a header block", lambda p: None,
     lambda p: [frame(HEADERS, 0, 1, p.block()), p.headers(3)], PROTOCOL_ERROR),
    ("http2/5.1/1 idle: DATA", lambda p: None, lambda p: [frame(DATA, 0, 1, b"x")], PROTOCOL_ERROR),
    ("http2/5.1/2 idle: RST_STREAM", lambda p: None,
     lambda p: [frame(RST_STREAM, 0, 1, struct.pack(">I", CANCEL))], PROTOCOL_ERROR),
    ("http2/5.1/3 idle: WINDOW_UPDATE", lambda p: None,
     lambda p: [frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 100))], PROTOCOL_ERROR),
    ("http2/5.1/4 idle: CONTINUATION", lambda p: None,
     lambda p: [frame(CONTINUATION, END_HEADERS, 1, p.block())], PROTOCOL_ERROR),
    ("http2/5.1/7 half-closed (remote): CONTINUATION", _watching,
     lambda p: [frame(CONTINUATION, END_HEADERS, 1, p.block())], PROTOCOL_ERROR),
    ("http2/5.1/10 closed after RST_STREAM: CONTINUATION", _reset,
     lambda p: [frame(CONTINUATION, END_HEADERS, 1, p.block())], PROTOCOL_ERROR),
    ("http2/5.1/11 closed after END_STREAM: DATA", _answered,
     lambda p: [frame(DATA, 0, 1, b"x")], STREAM_CLOSED),
    ("http2/5.1/12 closed after END_STREAM: HEADERS", _answered,
     lambda p: [p.headers(1, END_HEADERS | END_STREAM)], STREAM_CLOSED),
    ("http2/5.1/13 closed after END_STREAM: CONTINUATION", _answered,
     lambda p: [frame(CONTINUATION, END_HEADERS, 1, p.block())], PROTOCOL_ERROR),
    ("http2/5.1.1/1 even stream id", lambda p: None, lambda p: [p.headers(2)], PROTOCOL_ERROR),
    ("http2/5.1.1/2 stream id below the previous one", lambda p: None,
     lambda p: [p.headers(5), p.headers(3)], PROTOCOL_ERROR),
    ("http2/5.3.1/2 PRIORITY on an idle stream that depends on itself", lambda p: None,
     lambda p: [frame(PRIORITY, 0, 1, struct.pack(">IB", 1, 16))], PROTOCOL_ERROR),
    ("http2/5.5/2 unknown frame inside a header block", lambda p: None,
     lambda p: [frame(HEADERS, 0, 1, p.block()), frame(0x42, 0, 1, b"x")], PROTOCOL_ERROR),
    ("http2/6.1/1 DATA on stream 0", lambda p: None, lambda p: [frame(DATA, 0, 0, b"x")], PROTOCOL_ERROR),
    ("http2/6.1/3 DATA with too much padding", lambda p: p.send(p.headers(1)),
     lambda p: [frame(DATA, PADDED, 1, b"\x06abcd")], PROTOCOL_ERROR),
    ("http2/6.2/1 HEADERS without END_HEADERS, then PRIORITY", lambda p: None,
     lambda p: [frame(HEADERS, 0, 1, p.block()), frame(PRIORITY, 0, 1, struct.pack(">IB", 0, 1))],
     PROTOCOL_ERROR),
    ("http2/6.2/2 HEADERS without END_HEADERS, then DATA on another stream", lambda p: None,
     lambda p: [frame(HEADERS, 0, 1, p.block()), frame(DATA, 0, 3, b"x")], PROTOCOL_ERROR),
    ("http2/6.2/3 HEADERS on stream 0", lambda p: None,
     lambda p: [frame(HEADERS, END_HEADERS, 0, p.block())], PROTOCOL_ERROR),
    ("http2/6.2/4 HEADERS with too much padding", lambda p: None,
     lambda p: [frame(HEADERS, END_HEADERS | PADDED, 1, b"\xff" + p.block())], PROTOCOL_ERROR),
    ("http2/6.3/1 PRIORITY on stream 0", lambda p: None,
     lambda p: [frame(PRIORITY, 0, 0, struct.pack(">IB", 1, 1))], PROTOCOL_ERROR),
    ("http2/6.4/1 RST_STREAM on stream 0", lambda p: None,
     lambda p: [frame(RST_STREAM, 0, 0, struct.pack(">I", CANCEL))], PROTOCOL_ERROR),
    ("http2/6.4/3 RST_STREAM of 3 bytes", lambda p: p.send(p.headers(1)),
     lambda p: [frame(RST_STREAM, 0, 1, b"\x00\x00\x08")], FRAME_SIZE_ERROR),
    ("http2/6.5/1 SETTINGS ACK with a payload", lambda p: None,
     lambda p: [frame(SETTINGS, 1, 0, struct.pack(">HI", 4, 100))], FRAME_SIZE_ERROR),
    ("http2/6.5/2 SETTINGS on stream 1", lambda p: None,
     lambda p: [frame(SETTINGS, 0, 1, struct.pack(">HI", 4, 100))], PROTOCOL_ERROR),
    ("http2/6.5/3 SETTINGS of 3 bytes", lambda p: None, lambda p: [frame(SETTINGS, 0, 0, b"\x00\x03\x00")],
     FRAME_SIZE_ERROR),
    ("http2/6.5.2/1 SETTINGS_ENABLE_PUSH 2", lambda p: None,
     lambda p: [frame(SETTINGS, 0, 0, struct.pack(">HI", 2, 2))], PROTOCOL_ERROR),
    ("http2/6.5.2/2 SETTINGS_INITIAL_WINDOW_SIZE 2^31", lambda p: None,
     lambda p: [frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 2**31))], FLOW_CONTROL_ERROR),
    ("http2/6.5.2/3 SETTINGS_MAX_FRAME_SIZE 16383", lambda p: None,
     lambda p: [frame(SETTINGS, 0, 0, struct.pack(">HI", 5, 16383))], PROTOCOL_ERROR),
    ("http2/6.5.2/4 SETTINGS_MAX_FRAME_SIZE 2^24", lambda p: None,
     lambda p: [frame(SETTINGS, 0, 0, struct.pack(">HI", 5, 2**24))], PROTOCOL_ERROR),
    ("http2/6.7/3 PING on stream 1", lambda p: None, lambda p: [frame(PING, 0, 1, bytes(8))], PROTOCOL_ERROR),
    ("http2/6.7/4 PING of 7 bytes", lambda p: None, lambda p: [frame(PING, 0, 0, bytes(7))], FRAME_SIZE_ERROR),
    ("http2/6.8/1 GOAWAY on stream 1", lambda p: None,
     lambda p: [frame(GOAWAY, 0, 1, struct.pack(">II", 0, 0))], PROTOCOL_ERROR),
    ("http2/6.9/1 connection WINDOW_UPDATE of 0", lambda p: None,
     lambda p: [frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0))], PROTOCOL_ERROR),
    ("http2/6.9/3 WINDOW_UPDATE of 3 bytes", lambda p: None,
     lambda p: [frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01")], FRAME_SIZE_ERROR),
    ("http2/6.9.1/2 connection window above 2^31-1", lambda p: None,
     lambda p: [frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1))], FLOW_CONTROL_ERROR),
    ("http2/6.9.2/3 SETTINGS_INITIAL_WINDOW_SIZE 2^31", lambda p: None,
     lambda p: [frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 2**31))], FLOW_CONTROL_ERROR),
    ("http2/6.10/2 CONTINUATION, then another frame", lambda p: None,
     lambda p: [frame(HEADERS, 0, 1, p.block()[:3]), frame(CONTINUATION, 0, 1, b""), frame(DATA, 0, 1, b"x")],
     PROTOCOL_ERROR),
    ("http2/6.10/3 CONTINUATION on stream 0", lambda p: None,
     lambda p: [frame(HEADERS, 0, 1, p.block()[:3]), frame(CONTINUATION, END_HEADERS, 0, b"")], PROTOCOL_ERROR),
    ("http2/6.10/4 CONTINUATION after HEADERS with END_HEADERS", lambda p: None,
     lambda p: [p.headers(1), frame(CONTINUATION, END_HEADERS, 1, b"")], PROTOCOL_ERROR),
    ("http2/6.10/5 CONTINUATION after a CONTINUATION with END_HEADERS", lambda p: None,
     lambda p: [frame(HEADERS, 0, 1, (b := p.block())[:3]), frame(CONTINUATION, END_HEADERS, 1, b[3:]),
                frame(CONTINUATION, END_HEADERS, 1, b"")], PROTOCOL_ERROR),
    ("http2/6.10/6 CONTINUATION after DATA", lambda p: p.send(p.headers(1)),
     lambda p: [frame(DATA, 0, 1, EMPTY_MESSAGE), frame(CONTINUATION, END_HEADERS, 1, b"")], PROTOCOL_ERROR),
    ("http2/8.4/1 PUSH_PROMISE from a client", lambda p: p.send(p.headers(1)),
     lambda p: [frame(PUSH_PROMISE, END_HEADERS, 1, struct.pack(">I", 2) + p.block())], PROTOCOL_ERROR),
    ("hpack/2.3.3/1 indexed field beyond the tables", lambda p: None,
     lambda p: [frame(HEADERS, END_HEADERS, 1, b"\xff\x80\x01")], COMPRESSION_ERROR),
    ("hpack/2.3.3/2 literal with an indexed name beyond the tables", lambda p: None,
     lambda p: [frame(HEADERS, END_HEADERS, 1, b"\x0f\xf1\x07\x01x")], COMPRESSION_ERROR),
    ("hpack/4.2/1 and 6.3/1 table size update above SETTINGS_HEADER_TABLE_SIZE", lambda p: None,
     lambda p: [frame(HEADERS, END_HEADERS, 1, b"\x3f\xe2\x1f" + p.block())], COMPRESSION_ERROR),
    ("hpack/5.2/1 Huffman string with EOS", lambda p: None,
     lambda p: [frame(HEADERS, END_HEADERS, 1, b"\x00\x01x\x84\xff\xff\xff\xff")], COMPRESSION_ERROR),
    ("hpack/5.2/2 Huffman padding longer than 7 bits", lambda p: None,
     lambda p: [frame(HEADERS, END_HEADERS, 1, b"\x00\x01x\x82\x1f\xff")], COMPRESSION_ERROR),
    ("hpack/5.2/3 Huffman padding that is not EOS's prefix", lambda p: None,
     lambda p: [frame(HEADERS, END_HEADERS, 1, b"\x00\x01x\x81\x18")], COMPRESSION_ERROR),
    ("hpack/6.1/1 index 0", lambda p: None, lambda p: [frame(HEADERS, END_HEADERS, 1, b"\x80")],
     COMPRESSION_ERROR),
]


@pytest.mark.parametrize(("setup", "case", "code"), [c[1:] for c in CONNECTION_ERRORS],
                         ids=[c[0] for c in CONNECTION_ERRORS])
def test_connection_error(peer: Peer, setup: Callable[[Peer], object], case: Case, code: int) -> None:
    setup(peer)
    peer.send(*case(peer))
    frames = peer.until_end()
    assert goaway_codes(frames) == [code] and peer.is_eof


def test_http2_3_5_an_invalid_preface(server: ServerProcess) -> None:
    host, _, port = server.address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert b"preface" in received
    assert call_with_h2(server.address)[b"grpc-status"] == b"0"


def test_http2_3_4_the_preface_must_end_with_settings(server: ServerProcess) -> None:
    host, _, port = server.address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(PREFACE + frame(PING, 0, 0, bytes(8)))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    goaways = [received[i:] for i in range(len(received)) if received[i + 3:i + 4] == bytes((GOAWAY,))]
    assert goaways and struct.unpack(">I", goaways[0][13:17])[0] == PROTOCOL_ERROR


# -- stream errors: RST_STREAM(code) on the stream, and the connection goes on ------------------------

STREAM_ERRORS: list[tuple[str, Callable[[Peer], object], Case, int]] = [
    ("http2/5.1/5 half-closed (remote): DATA", _watching, lambda p: [frame(DATA, 0, 1, b"x")], STREAM_CLOSED),
    ("http2/5.1/6 half-closed (remote): HEADERS", _watching,
     lambda p: [p.headers(1, END_HEADERS | END_STREAM)], STREAM_CLOSED),
    ("http2/5.1/8 closed after RST_STREAM: DATA", _reset, lambda p: [frame(DATA, 0, 1, b"x")], STREAM_CLOSED),
    ("http2/5.1/9 closed after RST_STREAM: HEADERS", _reset,
     lambda p: [p.headers(1, END_HEADERS | END_STREAM)], STREAM_CLOSED),
    ("http2/5.3.1/1 HEADERS that depends on itself", lambda p: None,
     lambda p: [frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 1, struct.pack(">IB", 1, 16) + p.block())],
     PROTOCOL_ERROR),
    ("http2/5.3.1/2 PRIORITY on an open stream that depends on itself", lambda p: p.send(p.headers(1)),
     lambda p: [frame(PRIORITY, 0, 1, struct.pack(">IB", 1, 16))], PROTOCOL_ERROR),
    ("http2/6.3/2 PRIORITY of 4 bytes", lambda p: p.send(p.headers(1)),
     lambda p: [frame(PRIORITY, 0, 1, struct.pack(">I", 0))], FRAME_SIZE_ERROR),
    ("http2/6.9/2 stream WINDOW_UPDATE of 0", lambda p: p.send(p.headers(1)),
     lambda p: [frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 0))], PROTOCOL_ERROR),
    ("http2/6.9.1/3 stream window above 2^31-1", lambda p: p.send(p.headers(1)),
     lambda p: [frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 2**31 - 1))], FLOW_CONTROL_ERROR),
    ("http2/8.1/1 a second HEADERS without END_STREAM", lambda p: p.send(p.headers(1)),
     lambda p: [frame(DATA, 0, 1, EMPTY_MESSAGE), p.headers(1, END_HEADERS, fields=[("x-trailer", "1")])],
     PROTOCOL_ERROR),
    ("http2/8.1.2.1/3 a pseudo-header in trailers", lambda p: p.send(p.headers(1)),
     lambda p: [frame(DATA, 0, 1, EMPTY_MESSAGE), p.headers(1, END_HEADERS | END_STREAM, fields=[(":path", "/")])],
     PROTOCOL_ERROR),
    ("http2/8.1.2.6/1 content-length against one DATA", lambda p: None,
     lambda p: [p.headers(1, extra=[("content-length", "1")]), frame(DATA, END_STREAM, 1, EMPTY_MESSAGE)],
     PROTOCOL_ERROR),
    ("http2/8.1.2.6/2 content-length against several DATA", lambda p: None,
     lambda p: [p.headers(1, extra=[("content-length", "6")]), frame(DATA, 0, 1, EMPTY_MESSAGE),
                frame(DATA, END_STREAM, 1, b"xy")], PROTOCOL_ERROR),
]
_REQUEST = [(":method", "POST"), (":scheme", "http"), (":path", LIVE), (":authority", "t"),
            ("content-type", "application/grpc")]
MALFORMED = [
    ("http2/8.1.2/1 uppercase header name", _REQUEST + [("X-Upper", "1")]),
    ("http2/8.1.2.1/1 unknown pseudo-header", _REQUEST + [(":foo", "1")]),
    ("http2/8.1.2.1/2 response pseudo-header", _REQUEST + [(":status", "200")]),
    ("http2/8.1.2.1/4 pseudo-header after a regular one", [("x-a", "1")] + _REQUEST),
    ("http2/8.1.2.2/1 connection-specific header", _REQUEST + [("connection", "keep-alive")]),
    ("http2/8.1.2.2/1 keep-alive", _REQUEST + [("keep-alive", "1")]),
    ("http2/8.1.2.2/1 transfer-encoding", _REQUEST + [("transfer-encoding", "chunked")]),
    ("http2/8.1.2.2/1 upgrade", _REQUEST + [("upgrade", "h2c")]),
    ("http2/8.1.2.2/2 te other than trailers", _REQUEST + [("te", "trailers, deflate")]),
    ("http2/8.1.2.3/1 empty :path", [(n, "" if n == ":path" else v) for n, v in _REQUEST]),
    ("http2/8.1.2.3/2 no :method", _REQUEST[1:]),
    ("http2/8.1.2.3/3 no :scheme", [_REQUEST[0]] + _REQUEST[2:]),
    ("http2/8.1.2.3/4 no :path", _REQUEST[:2] + _REQUEST[3:]),
    ("http2/8.1.2.3/5 :method twice", [_REQUEST[0]] + _REQUEST),
    ("http2/8.1.2.3/6 :scheme twice", [_REQUEST[1]] + _REQUEST),
    ("http2/8.1.2.3/7 :path twice", [_REQUEST[2]] + _REQUEST),
    ("gRPC :method GET", [(":method", "GET")] + _REQUEST[1:]),
    ("http2/8.2.1 a value with a newline", _REQUEST + [("x-a", "1\n2")]),
]


@pytest.mark.parametrize(("setup", "case", "code"), [c[1:] for c in STREAM_ERRORS], ids=[c[0] for c in STREAM_ERRORS])
def test_stream_error(peer: Peer, setup: Callable[[Peer], object], case: Case, code: int) -> None:
    setup(peer)
    peer.send(*case(peer))
    frames = peer.sync()
    assert rst_codes(frames, 1)[-1:] == [code] and not goaway_codes(frames) and not peer.is_eof


@pytest.mark.parametrize("fields", [c[1] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_request(peer: Peer, fields: list[tuple[str, str]]) -> None:
    peer.send(peer.headers(1, END_HEADERS | END_STREAM, fields=fields))
    frames = peer.sync()
    assert rst_codes(frames, 1) == [PROTOCOL_ERROR] and not [f for f in frames if f[0] == HEADERS]
    _answered(peer, 3)  # the HPACK table stayed in step: the next call on this connection is served


def test_http2_5_1_2_beyond_max_concurrent_streams_is_refused(peer: Peer) -> None:
    peer.send(*[peer.headers(i) for i in range(1, 2 * 1024, 2)])  # 1,024 calls waiting for their message
    peer.send(peer.headers(2049))
    frames = peer.sync()
    assert rst_codes(frames, 2049) == [REFUSED_STREAM] and not goaway_codes(frames)


# -- frames that must be taken in stride --------------------------------------------------------------


def _serves(p: Peer, stream_id: int = 1, *, flags: int = END_HEADERS) -> dict[bytes, bytes]:
    frames = p.until_trailers(stream_id)
    trailers = [f[3] for f in frames if f[0] == HEADERS and f[2] == stream_id and f[1] & END_STREAM]
    assert trailers, frames
    return dict(p.decoder.decode(trailers[-1], raw=True))  # type: ignore[arg-type]


def test_http2_4_1_unknown_types_flags_and_the_reserved_bit(peer: Peer) -> None:
    peer.send(frame(0x42, 0xFF, 0, b"extension"), frame(PING, 0xFE, 0, bytes(8)))
    assert (PING, 1, 0, bytes(8)) in peer.sync()
    block = peer.block()
    peer.send(frame(HEADERS, END_HEADERS | 0xD2 & ~(PADDED | PRIORITY_FLAG), 1 | 1 << 31, block),
              frame(DATA, END_STREAM | 0xF6 & ~PADDED, 1, EMPTY_MESSAGE))
    assert _serves(peer)[b"grpc-status"] == b"0"


def test_http2_4_2_1_a_data_frame_of_16384_bytes(peer: Peer) -> None:
    peer.send(peer.headers(1), frame(DATA, END_STREAM, 1, b"\x00" + struct.pack(">I", 16379) + bytes(16379)))
    assert _serves(peer)[b"grpc-status"] in (b"0", b"3")  # an answer, whatever ServerLive makes of the bytes


def test_http2_6_10_1_many_continuations(peer: Peer) -> None:
    block = peer.block()
    pieces = [block[i:i + 4] for i in range(0, len(block), 4)]
    peer.send(frame(HEADERS, 0, 1, pieces[0]),
              *[frame(CONTINUATION, END_HEADERS if i == len(pieces) - 1 else 0, 1, piece)
                for i, piece in enumerate(pieces[1:], 1)],
              frame(DATA, END_STREAM, 1, EMPTY_MESSAGE))
    assert _serves(peer)[b"grpc-status"] == b"0"


@pytest.mark.parametrize("settings", [struct.pack(">HI", 4, 1), struct.pack(">HI", 4, 100) + struct.pack(">HI", 4, 1)],
                         ids=["http2/6.9.1/1 window of 1", "http2/6.5.3/1 the last INITIAL_WINDOW_SIZE counts"])
def test_a_window_of_one_byte(server: ServerProcess, settings: bytes) -> None:
    p = Peer(server.address, settings)
    try:
        p.send(p.headers(1), frame(DATA, END_STREAM, 1, EMPTY_MESSAGE))
        frames = p.until_response_headers(1) + p.sync()
        data = [f for f in frames if f[0] == DATA]
        assert [len(f[3]) for f in data] == [1]  # ServerLiveResponse is 7 bytes framed; 1 fits
        p.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 100)))
        rest = p.until_trailers(1)
        assert sum(len(f[3]) for f in rest if f[0] == DATA) == 6
    finally:
        p.close()
    assert call_with_h2(server.address)[b"grpc-status"] == b"0"


def test_http2_6_9_2_window_changes_after_the_stream_opened(server: ServerProcess) -> None:
    p = Peer(server.address, struct.pack(">HI", 4, 0))
    try:
        p.send(p.headers(1), frame(DATA, END_STREAM, 1, EMPTY_MESSAGE))
        assert not [f for f in p.until_response_headers(1) + p.sync() if f[0] == DATA]
        p.send(frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 3)))  # the window goes from 0 to 3
        assert sum(len(f[3]) for f in p.sync() if f[0] == DATA) == 3
        p.send(frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 1)))  # now -2: nothing until WINDOW_UPDATE
        assert not [f for f in p.sync() if f[0] == DATA]
        p.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 6)))
        assert sum(len(f[3]) for f in p.until_trailers(1) if f[0] == DATA) == 4
    finally:
        p.close()
    assert call_with_h2(server.address)[b"grpc-status"] == b"0"


def test_http2_6_5_3_settings_are_acknowledged(peer: Peer) -> None:
    peer.send(frame(SETTINGS, 0, 0, struct.pack(">HI", 0x99, 1)))  # an unknown one too (6.5.2/5)
    assert (SETTINGS, 1, 0, b"") in peer.sync()


def test_http2_6_7_ping_and_ping_ack(peer: Peer) -> None:
    peer.send(frame(PING, 1, 0, b"unasked!"))
    assert not [f for f in peer.sync() if f[0] == PING]


def test_http2_7_unknown_error_codes(peer: Peer) -> None:
    peer.send(peer.headers(1), frame(RST_STREAM, 0, 1, struct.pack(">I", 0xFF)))
    assert not goaway_codes(peer.sync())
    peer.send(frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0xFF)))
    assert not goaway_codes(peer.until_end())  # the server leaves as the client asked, without an error


def test_hpack_a_smaller_client_table_is_honoured(server: ServerProcess) -> None:
    """The client allows our encoder no dynamic table: h2's decoder then insists on the size update."""
    assert call_with_h2(server.address, header_table_size=0)[b"grpc-status"] == b"0"


def test_a_trailers_only_stream_error_answer_on_a_fresh_table_decodes(peer: Peer) -> None:
    peer.send(peer.headers(1, path="/no/such"), frame(DATA, END_STREAM, 1, EMPTY_MESSAGE))
    assert _serves(peer)[b"grpc-status"] == b"12"


# -- budgets: ENHANCE_YOUR_CALM --------------------------------------------------------------------


def test_rapid_reset_gets_enhance_your_calm(peer: Peer) -> None:
    """HEADERS + DATA + RST_STREAM triples (CVE-2023-44487): past 1,000 resets in 10 s the client is told."""
    for start in range(1, 2 * 1200, 2 * 100):
        if peer.is_eof:
            break
        peer.send(*[peer.headers(i) + frame(DATA, 0, i, EMPTY_MESSAGE) + frame(RST_STREAM, 0, i, struct.pack(">I", 8))
                    for i in range(start, start + 2 * 100, 2)])
    assert goaway_codes(peer.until_end()) == [ENHANCE_YOUR_CALM]


def test_a_continuation_flood_gets_enhance_your_calm(peer: Peer) -> None:
    peer.send(frame(HEADERS, 0, 1, peer.block()[:2]), *[frame(CONTINUATION, 0, 1, b"")] * 100)
    assert goaway_codes(peer.until_end()) == [ENHANCE_YOUR_CALM]


def test_a_settings_flood_gets_enhance_your_calm(peer: Peer) -> None:
    peer.send(*[frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 65535))] * 150)
    assert goaway_codes(peer.until_end()) == [ENHANCE_YOUR_CALM]


def test_too_many_pings_without_data_is_a_strike_out(peer: Peer) -> None:
    peer.send(*[frame(PING, 0, 0, bytes(8))] * 4)
    frames = peer.until_end()
    assert goaway_codes(frames) == [ENHANCE_YOUR_CALM]
    assert b"too_many_pings" in [f[3] for f in frames if f[0] == GOAWAY][0]


def test_goaways_are_counted_on_metrics_and_logged_sparingly(server: ServerProcess) -> None:
    for _ in range(30):
        p = Peer(server.address)
        p.send(frame(PING, 0, 0, bytes(7)))
        p.until_end()
        p.close()
    assert server.metrics_address is not None
    with urllib.request.urlopen(f"http://{server.metrics_address}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts = {line.split("{")[1].split("}")[0]: float(line.split()[-1]) for line in text.splitlines()
              if line.startswith("infergate_http2_goaways_total{")}
    assert counts['reason="frame_size_error"'] >= 30
    lines = [line for line in server.log if "closing an HTTP/2 connection" in line]
    assert len(lines) <= 5  # one line per 10 s at most, not one per GOAWAY
    assert call_with_h2(server.address)[b"grpc-status"] == b"0"


# -- timeouts, over real sockets, on an in-process server with short limits -------------------------


@pytest.fixture(scope="module")
def short_timeouts() -> Iterator[tuple[str, Http2Server]]:
    """A native server (ServerLive only) whose timeouts are tenths of a second, on its own loop."""
    async def live(body: bytes, context: object) -> bytes:
        return b"\x08\x01"

    limits = Http2Limits(preface_timeout_s=0.2, idle_timeout_s=0.3, message_read_timeout_s=0.2,
                         header_block_timeout_s=0.2)
    server = Http2Server({LIVE.encode(): Route(unary=live)}, 1 << 20, limits=limits)
    loop = asyncio.new_event_loop()
    port = loop.run_until_complete(server.start("127.0.0.1:0"))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{port}", server
    asyncio.run_coroutine_threadsafe(server.stop(1.0), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_a_silent_connection_is_closed_after_the_preface_timeout(short_timeouts: tuple[str, Http2Server]) -> None:
    address, server = short_timeouts
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        received = b""
        while chunk := sock.recv(65536):  # returns when the server closes (the socket timeout bounds it)
            received += chunk
    assert b"no client preface" in received


def test_an_idle_connection_is_sent_away(short_timeouts: tuple[str, Http2Server]) -> None:
    address, _ = short_timeouts
    p = Peer(address)
    try:
        _answered(p)
        frames = p.until_end()
        assert goaway_codes(frames) == [0] and b"no calls for 0.3 s" in [f[3] for f in frames if f[0] == GOAWAY][0]
    finally:
        p.close()


def test_a_message_that_stops_arriving_is_cancelled(short_timeouts: tuple[str, Http2Server]) -> None:
    address, _ = short_timeouts
    p = Peer(address)
    try:
        p.send(p.headers(1), frame(DATA, 0, 1, b"\x00\x00\x00\x00\x10half"))
        trailers = _serves(p)
        assert trailers[b"grpc-status"] == b"1" and b"stopped arriving" in trailers[b"grpc-message"]
    finally:
        p.close()


def test_a_header_block_left_unfinished_ends_the_connection(short_timeouts: tuple[str, Http2Server]) -> None:
    address, server = short_timeouts
    p = Peer(address)
    try:
        p.send(frame(HEADERS, 0, 1, p.block()[:4]))
        assert goaway_codes(p.until_end()) == [ENHANCE_YOUR_CALM]
        assert server.goaways["header_block_timeout"] >= 1
    finally:
        p.close()
