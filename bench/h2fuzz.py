"""Fuzzing material shared by tests/server/test_fuzz.py, bench/fuzz.py and bench/attacks.py.

HTTP/2 frame builders, hypothesis strategies for frame sequences and ModelInferRequest bodies, a
raw-socket peer that sends one case and sums up what the server answered, a normal client that
checks the server still serves, and readers of a server process's memory and CPU in /proc.
Needs hypothesis (the `test` or `bench` extra); nothing in the server imports this module. The wire
constants below are RFC 9113's, written out here rather than imported from the server, so a mistake
in the server's own constants cannot hide from the fuzzer.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import hpack
import numpy as np
from hypothesis import strategies as st

from infergate.proto import grpc_service_pb2 as pb

logger = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME = struct.Struct(">IBI")  # (payload length << 8 | type), flags, stream id
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
ERROR_NAMES = {0x0: "NO_ERROR", 0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR", 0x3: "FLOW_CONTROL_ERROR",
               0x4: "SETTINGS_TIMEOUT", 0x5: "STREAM_CLOSED", 0x6: "FRAME_SIZE_ERROR", 0x7: "REFUSED_STREAM",
               0x8: "CANCEL", 0x9: "COMPRESSION_ERROR", 0xA: "CONNECT_ERROR", 0xB: "ENHANCE_YOUR_CALM",
               0xC: "INADEQUATE_SECURITY", 0xD: "HTTP_1_1_REQUIRED"}
INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
IDENTITY_WIDTH = 64  # the example repository's `identity`: FP32 [-1, 64] in, the same out
SENTINEL = b"fuzzdone"  # the PING payload that marks the end of a case
ACK_WAIT_S = 0.5  # how long a case waits for the server to acknowledge the sentinel PING
CLOSE_WAIT_S = 3.0  # after our end of the connection closes, how long the server may take to close its end
NORMAL_TIMEOUT_S = 10.0  # a normal ModelInfer must be answered within this
# A message a client must never see: a Python traceback or a raw exception type leaking out.
TRACEBACK_LOOKING = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+|\w+Error\(")
BYTES_LENGTH = struct.Struct("<I")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"", length_delta: int = 0) -> bytes:
    """One frame; a non-zero length_delta makes its length field lie by that much (clamped to 24 bits)."""
    length = min(max(len(payload) + length_delta, 0), (1 << 24) - 1)
    return FRAME.pack(length << 8 | (kind & 0xFF), flags & 0xFF, stream_id & 0xFFFFFFFF) + payload


def grpc_message(body: bytes, compressed: int = 0) -> bytes:
    return bytes((compressed,)) + len(body).to_bytes(4, "big") + body


def identity_request(values: np.ndarray | None = None, request_id: str = "") -> pb.ModelInferRequest:
    """A valid ModelInfer call on `identity` with one row (ones, unless values are given)."""
    row = np.ones((1, IDENTITY_WIDTH), np.float32) if values is None else values.astype(np.float32)
    request = pb.ModelInferRequest(model_name="identity", id=request_id)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=list(row.shape))
    request.raw_input_contents.append(row.tobytes())
    return request


def request_headers(encoder: hpack.Encoder, path: str = INFER_PATH,
                    extra: Sequence[tuple[str, str]] = ()) -> bytes:
    return bytes(encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", path),
                                 (":authority", "fuzz"), ("content-type", "application/grpc"),
                                 ("te", "trailers"), *extra]))


# -- frame sequences ---------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One step of a frame-sequence case; `render` turns a list of them into bytes.

    kind names the step; the other fields mean what `_render_op` makes of them for that kind
    (values holds the kind's small integers: a frame type, a header-block variant, padding...)."""

    kind: str
    stream_id: int = 1
    flags: int = 0
    payload: bytes = b""
    values: tuple[int, ...] = ()
    length_delta: int = 0


def render(ops: Sequence[Op]) -> bytes:
    """The bytes of a case after the preface and our SETTINGS; one HPACK encoder for the case."""
    encoder = hpack.Encoder()
    return b"".join(_render_op(op, encoder) for op in ops)


def _header_block(variant: int, payload: bytes, encoder: hpack.Encoder) -> bytes:
    if variant == 0:  # a valid ModelInfer call's headers
        return request_headers(encoder)
    if variant == 1:  # valid HPACK, a path made of the payload
        return request_headers(encoder, "/" + payload.decode("latin-1"))
    if variant == 2:  # valid HPACK, not a valid request: no pseudo-headers, odd fields, a bad grpc-timeout
        return bytes(encoder.encode([("content-type", "application/grpc"), ("grpc-timeout", payload.hex()[:12] or "x"),
                                     (":path", INFER_PATH), ("grpc-encoding", "gzip")]))
    if variant == 3:  # valid HPACK, a big header value
        return request_headers(encoder, extra=[("x-big", "v" * (len(payload) * 997 % 100_000))])
    return payload  # random bytes as a header block


def _render_op(op: Op, encoder: hpack.Encoder) -> bytes:
    v = op.values
    if op.kind == "frame":
        return frame(v[0], op.flags, op.stream_id, op.payload, op.length_delta)
    if op.kind == "call":  # a whole valid call: the server must answer it
        return (frame(HEADERS, END_HEADERS, op.stream_id, request_headers(encoder))
                + frame(DATA, END_STREAM, op.stream_id, grpc_message(identity_request().SerializeToString())))
    if op.kind == "headers":
        variant, pad, pieces, is_unfinished = v
        block = _header_block(variant, op.payload, encoder)
        flags = op.flags & (END_STREAM | PRIORITY_FLAG)
        if op.flags & PRIORITY_FLAG:
            block = struct.pack(">IB", op.stream_id & 0x7FFFFFFF, 15) + block
        chunks = [block[i * len(block) // pieces:(i + 1) * len(block) // pieces] for i in range(pieces)]
        if pad >= 0:
            flags |= PADDED
            chunks[0] = bytes((pad & 0xFF,)) + chunks[0] + bytes(pad % 40)  # the pad length may lie
        out = [frame(HEADERS, flags | (END_HEADERS if pieces == 1 and not is_unfinished else 0),
                     op.stream_id, chunks[0], op.length_delta)]
        for i, chunk in enumerate(chunks[1:], start=2):
            last = i == pieces and not is_unfinished
            out.append(frame(CONTINUATION, END_HEADERS if last else 0, op.stream_id, chunk))
        return b"".join(out)
    if op.kind == "data":
        variant, pad = v
        body = identity_request().SerializeToString()
        data = (grpc_message(body), op.payload, grpc_message(body)[:5] + op.payload,
                grpc_message(op.payload, compressed=1))[variant]
        flags = op.flags & END_STREAM
        if pad >= 0:
            flags |= PADDED
            data = bytes((pad & 0xFF,)) + data + bytes(pad % 40)
        return frame(DATA, flags, op.stream_id, data, op.length_delta)
    if op.kind == "settings":
        entries = b"".join(struct.pack(">HI", key, value) for key, value in zip(v[::2], v[1::2]))
        return frame(SETTINGS, op.flags, op.stream_id, entries + op.payload, op.length_delta)
    if op.kind == "window_update":
        return frame(WINDOW_UPDATE, op.flags, op.stream_id, struct.pack(">I", v[0])[:v[1]], op.length_delta)
    if op.kind == "rst":
        return frame(RST_STREAM, op.flags, op.stream_id, struct.pack(">I", v[0])[:v[1]], op.length_delta)
    if op.kind == "ping":
        return frame(PING, op.flags, op.stream_id, op.payload, op.length_delta)
    if op.kind == "goaway":
        return frame(GOAWAY, op.flags, op.stream_id, struct.pack(">II", v[0], v[1]) + op.payload, op.length_delta)
    if op.kind == "continuation":
        return frame(CONTINUATION, op.flags, op.stream_id, op.payload, op.length_delta)
    raise ValueError(f"unknown op kind {op.kind!r}")


def is_complete(data: bytes) -> bool:
    """Whether the bytes end on a frame boundary (else the server waits for the rest of a frame)."""
    offset = 0
    while offset + 9 <= len(data):
        offset += 9 + (FRAME.unpack_from(data, offset)[0] >> 8)
    return offset == len(data)


_U31 = (1 << 31) - 1
stream_ids = st.one_of(st.sampled_from([1, 1, 3, 5, 0, 2, 4, _U31, 1 << 31 | 1]), st.integers(0, (1 << 32) - 1))
small_bytes = st.binary(max_size=64)
length_lies = st.one_of(st.just(0), st.just(0), st.just(0), st.just(0), st.integers(-8, 8),
                        st.sampled_from([(1 << 24) - 1, 1 << 20, (1 << 20) + 1, 16385]))
flags_any = st.integers(0, 255)
u32 = st.one_of(st.sampled_from([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 65535, 65536, 16384, 1 << 24]),
                st.integers(0, (1 << 32) - 1))
# A pad length of -1: no PADDED flag; 0..39 a true pad length; above, one that lies.
paddings = st.one_of(st.just(-1), st.just(-1), st.integers(0, 39), st.integers(-1, 300))
settings_keys = st.one_of(st.integers(1, 8), st.integers(0, 0xFFFF))


def _op(kind: str, **fields: Any) -> st.SearchStrategy[Op]:
    return st.builds(Op, kind=st.just(kind), **fields)


frame_ops: st.SearchStrategy[Op] = st.one_of(
    _op("frame", values=st.tuples(st.integers(0, 255)), flags=flags_any, stream_id=stream_ids,
        payload=small_bytes, length_delta=length_lies),
    _op("call", stream_id=st.sampled_from([1, 3, 5, 7, 9, 101])),
    _op("headers", stream_id=stream_ids, flags=flags_any, payload=small_bytes, length_delta=length_lies,
        values=st.tuples(st.integers(0, 4), paddings, st.integers(1, 4), st.sampled_from([0, 0, 1]))),
    _op("data", stream_id=stream_ids, flags=flags_any, payload=st.binary(max_size=300), length_delta=length_lies,
        values=st.tuples(st.integers(0, 3), paddings)),
    _op("settings", stream_id=st.sampled_from([0, 0, 0, 1]), flags=st.sampled_from([0, 0, 1, 0xFF]),
        payload=st.sampled_from([b"", b"", b"\x00", b"\x00\x04\x00"]), length_delta=length_lies,
        values=st.lists(st.tuples(settings_keys, u32), max_size=12).map(lambda kv: tuple(x for p in kv for x in p))),
    _op("window_update", stream_id=stream_ids, flags=flags_any, length_delta=length_lies,
        values=st.tuples(u32, st.sampled_from([4, 4, 4, 0, 3]))),
    _op("rst", stream_id=stream_ids, flags=flags_any, length_delta=length_lies,
        values=st.tuples(u32, st.sampled_from([4, 4, 0, 2]))),
    _op("ping", stream_id=st.sampled_from([0, 0, 1]), flags=st.sampled_from([0, 0, 1, 0xFE]),
        payload=st.one_of(st.binary(min_size=8, max_size=8), st.binary(max_size=20)), length_delta=length_lies),
    _op("goaway", stream_id=st.sampled_from([0, 0, 1]), flags=flags_any, payload=small_bytes,
        length_delta=length_lies, values=st.tuples(u32, u32)),
    _op("continuation", stream_id=stream_ids, flags=st.sampled_from([0, 0, END_HEADERS, 0xFF]),
        payload=st.one_of(st.just(b""), small_bytes), length_delta=length_lies),
)
# A case: up to 12 steps, valid and invalid mixed.
frame_cases: st.SearchStrategy[list[Op]] = st.lists(frame_ops, min_size=1, max_size=12)


@dataclass
class FrameOutcome:
    """What the server did with one frame-sequence case."""

    goaways: list[tuple[str, str]] = field(default_factory=list)  # (error code name, debug text)
    resets: list[str] = field(default_factory=list)  # RST_STREAM error code names
    grpc_statuses: list[int] = field(default_factory=list)  # grpc-status of every trailer block
    is_closed: bool = False  # the server closed the connection (after our end closed, or by itself)
    is_hung: bool = False  # the server neither closed nor answered within the bounds
    elapsed_s: float = 0.0

    def labels(self) -> list[str]:
        out = [f"GOAWAY {code}: {_normalized(debug)}" for code, debug in self.goaways]
        out += [f"RST_STREAM {code}" for code in self.resets]
        out += [f"grpc-status {status}" for status in self.grpc_statuses]
        return out or ["nothing (closed quietly)" if self.is_closed else "nothing"]


def _normalized(text: str) -> str:
    """A message with its quoted values and numbers replaced, so outcomes group by kind, not by value."""
    return re.sub(r"\d+", "N", re.sub(r"'[^']*'", "'...'", text))[:120]


def error_name(code: int) -> str:
    return ERROR_NAMES.get(code, f"0x{code:x}")


def read_frames(sock: socket.socket, buffer: bytearray) -> list[tuple[int, int, int, bytes]]:
    """Whole frames at the head of buffer (removed from it)."""
    frames = []
    while len(buffer) >= 9:
        length_kind, flags, stream_id = FRAME.unpack_from(buffer)
        end = 9 + (length_kind >> 8)
        if len(buffer) < end:
            break
        frames.append((length_kind & 0xFF, flags, stream_id & 0x7FFFFFFF, bytes(buffer[9:end])))
        del buffer[:end]
    return frames


def connect(address: str, timeout_s: float = 5.0) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def run_frames_case(address: str, case: bytes) -> FrameOutcome:
    """Sends the preface, an empty SETTINGS, the case and a sentinel PING; reads until the server
    acknowledges the PING (then a short while longer for answers), closes our sending side and
    reads until the server closes. is_hung when it did not close within CLOSE_WAIT_S."""
    outcome = FrameOutcome()
    started = time.monotonic()
    sock = connect(address)
    decoder = hpack.Decoder()
    buffer = bytearray()
    try:
        complete = is_complete(case)
        try:
            sock.sendall(PREFACE + frame(SETTINGS, 0, 0) + case + (frame(PING, 0, 0, SENTINEL) if complete else b""))
        except OSError:
            pass  # the server may close while we still send
        # A case that ends inside a frame cannot be followed by anything the server would read.
        phase_end = started + (ACK_WAIT_S if complete else 0.0)
        has_ack, is_write_shut = not complete, False
        while True:
            now = time.monotonic()
            if now >= phase_end and not is_write_shut:
                is_write_shut = True
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                phase_end = now + CLOSE_WAIT_S
            elif now >= phase_end:
                outcome.is_hung = True
                break
            sock.settimeout(max(phase_end - now, 0.001))
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                outcome.is_closed = True
                break
            buffer += chunk
            for kind, flags, _, payload in read_frames(sock, buffer):
                _note_frame(outcome, decoder, kind, flags, payload)
                if kind == PING and flags & ACK and payload == SENTINEL and not has_ack:
                    has_ack = True
                    phase_end = time.monotonic() + 0.05  # answers to calls in the case may still come
    finally:
        sock.close()
    outcome.elapsed_s = time.monotonic() - started
    return outcome


def _note_frame(outcome: FrameOutcome, decoder: hpack.Decoder, kind: int, flags: int, payload: bytes) -> None:
    if kind == GOAWAY and len(payload) >= 8:
        outcome.goaways.append((error_name(struct.unpack_from(">I", payload, 4)[0]),
                                payload[8:].decode("utf-8", "replace")))
    elif kind == RST_STREAM and len(payload) == 4:
        outcome.resets.append(error_name(struct.unpack(">I", payload)[0]))
    elif kind == HEADERS and flags & END_STREAM:
        try:
            fields = dict(decoder.decode(payload, raw=True))
        except Exception:  # a trailer split over CONTINUATION frames; the status is then not counted
            return
        if (status := fields.get(b"grpc-status")) is not None:
            outcome.grpc_statuses.append(int(status))


# -- ModelInferRequest bodies ------------------------------------------------------------

DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
             "FP64", "BF16", "BYTES")
SHM_KEYS = ("shared_memory_region", "shared_memory_offset", "shared_memory_byte_size")
dims = st.one_of(st.sampled_from([-1, 0, 1, 2, 64, 63, 65, 1 << 31, 1 << 62, -(1 << 63), (1 << 63) - 1]),
                 st.integers(-(1 << 63), (1 << 63) - 1))
texts = st.one_of(st.sampled_from(["", "identity", "digits_small", "digits_large", "INPUT0", "OUTPUT0", "1",
                                   "-1", "/../../etc/hostname", "../../../../proc/self/environ", "\x00", "é" * 40]),
                  st.text(max_size=40))


def _parameters(target: Any, entries: list[tuple[str, Any]]) -> None:
    for key, value in entries:
        param = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            if value < 0 or value < (1 << 63):
                param.int64_param = max(value, -(1 << 63))
            else:
                param.uint64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = value


param_entries = st.lists(st.tuples(st.one_of(st.sampled_from(SHM_KEYS + ("priority", "timeout", "classification",
                                                                           "sequence_id", "binary_data"))),
                                   st.one_of(st.booleans(), st.integers(-(1 << 63), (1 << 64) - 1), texts,
                                             st.floats(allow_nan=True))), max_size=4)


def bytes_tensor(items: list[bytes], lies: list[int]) -> bytes:
    """BYTES elements with 4-byte length prefixes; each lie is added to the matching prefix."""
    out = b""
    for i, item in enumerate(items):
        out += BYTES_LENGTH.pack((len(item) + (lies[i] if i < len(lies) else 0)) % (1 << 32)) + item
    return out


def _often(valid: list[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A valid value three times in four, so cases get past the first check to the later ones."""
    return st.one_of(st.sampled_from(valid), st.sampled_from(valid), st.sampled_from(valid), other)


model_names = _often(["identity", "identity", "digits_small", "digits_large"], texts)
model_versions = _often(["", "1"], st.sampled_from(["2", "-1", "0", "01", "1 ", "/../1", "9" * 30]))
input_names = _often(["INPUT0", "INPUT__0"], texts)
datatypes = _often(["FP32"], st.one_of(st.sampled_from(DATATYPES), texts))
shapes = st.one_of(st.tuples(_often([1, 2, 3], dims), _often([IDENTITY_WIDTH], dims)).map(list),
                   st.lists(dims, max_size=5))


def _byte_count(shape: list[int], datatype: str) -> int | None:
    """The raw size a shape needs at 4 bytes an element, when it is small enough to send."""
    count = 1
    for dim in shape:
        if not 0 <= dim <= 4096:
            return None
        count *= dim
    return count * 4 if count * 4 <= 1 << 20 and datatype != "BYTES" else None


@st.composite
def infer_requests(draw: st.DrawFn) -> bytes:
    """A hypothesis-built ModelInferRequest, serialized: mostly near-valid, every field may be off."""
    request = pb.ModelInferRequest(model_name=draw(model_names), model_version=draw(model_versions), id=draw(texts))
    _parameters(request.parameters, draw(param_entries))
    for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2, 3]))):
        tensor = request.inputs.add(name=draw(input_names), datatype=draw(datatypes), shape=draw(shapes))
        _parameters(tensor.parameters, draw(st.one_of(st.just([]), param_entries)))
        contents = draw(st.sampled_from([0, 0, 0, 1, 2, 3]))
        if contents == 1:
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=70)))
        elif contents == 2:
            tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=20), max_size=5)))
        elif contents == 3:
            tensor.contents.int64_contents.extend(draw(st.lists(st.integers(-(1 << 63), (1 << 63) - 1), max_size=9)))
        kind = draw(st.sampled_from([0, 0, 0, 1, 2, 3]))  # what raw_input_contents gets for this input
        needed = _byte_count(list(tensor.shape), tensor.datatype)
        if kind == 0 and needed is not None:
            request.raw_input_contents.append(bytes(needed))
        elif kind == 1:
            request.raw_input_contents.append(draw(st.binary(max_size=300)))
        elif kind == 2:
            request.raw_input_contents.append(
                bytes_tensor(draw(st.lists(st.binary(max_size=12), max_size=4)),
                             draw(st.lists(st.sampled_from([0, 1, -1, 1 << 31, -5]), max_size=4))))
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        output = request.outputs.add(name=draw(_often(["OUTPUT0", "OUTPUT__0", "LOGITS"], texts)))
        _parameters(output.parameters, draw(st.one_of(st.just([]), param_entries)))
    return bytes(request.SerializeToString())


def _base_request() -> bytes:
    request = identity_request(request_id="base")
    request.parameters["priority"].int64_param = 1
    request.outputs.add(name="OUTPUT0")
    return bytes(request.SerializeToString())


BASE_REQUEST = _base_request()  # the valid request that mutations start from
mutations = st.lists(st.tuples(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]),
                               st.integers(0, len(BASE_REQUEST)), st.integers(0, 7), st.binary(min_size=1, max_size=9)),
                     min_size=1, max_size=6)


def mutate(base: bytes, steps: Sequence[tuple[str, int, int, bytes]]) -> bytes:
    data = bytearray(base)
    for kind, position, bit, chunk in steps:
        at = position % (len(data) + 1)
        if kind == "flip" and data:
            data[at % len(data)] ^= 1 << bit
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = chunk
        elif kind == "delete":
            del data[at:at + bit + 1]
        elif kind == "overwrite":
            data[at:at + len(chunk)] = chunk
    return bytes(data)


mutated_requests: st.SearchStrategy[bytes] = mutations.map(lambda steps: mutate(BASE_REQUEST, steps))


@dataclass
class BodyOutcome:
    code: str  # "OK" or the gRPC status code's name
    details: str
    elapsed_s: float

    def violation(self) -> str | None:
        """Why this answer breaks the property (a clean status, never UNKNOWN, a traceback or a hang)."""
        if self.code in ("UNKNOWN", "DEADLINE_EXCEEDED", "UNAVAILABLE"):
            return f"{self.code}: {self.details}"
        if TRACEBACK_LOOKING.search(self.details):
            return f"a traceback-looking message: {self.code}: {self.details}"
        return None

    def label(self) -> str:
        return f"{self.code}: {_normalized(self.details)[:100]}" if self.code != "OK" else "OK"


def call_infer(channel: grpc.Channel, body: bytes, timeout_s: float = NORMAL_TIMEOUT_S) -> BodyOutcome:
    """Sends body as a ModelInfer request over grpcio, as is."""
    call = channel.unary_unary(INFER_PATH, request_serializer=None, response_deserializer=None)
    started = time.monotonic()
    try:
        call(body, timeout=timeout_s)
    except grpc.RpcError as exc:
        return BodyOutcome(exc.code().name, exc.details() or "", time.monotonic() - started)
    return BodyOutcome("OK", "", time.monotonic() - started)


def normal_infer_error(address: str, seed: int = 0, timeout_s: float = NORMAL_TIMEOUT_S) -> str | None:
    """None when a normal ModelInfer on `identity`, on a fresh connection, is answered correctly."""
    values = np.random.default_rng(seed).random((1, IDENTITY_WIDTH), dtype=np.float32)
    # grpc-core shares connections between channels to one address unless told not to: a local
    # subchannel pool makes this call open its own.
    with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        call = channel.unary_unary(INFER_PATH, request_serializer=None, response_deserializer=None)
        try:
            body = call(identity_request(values).SerializeToString(), timeout=timeout_s)
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
    response = pb.ModelInferResponse.FromString(body)
    got = np.frombuffer(response.raw_output_contents[0], np.float32) if response.raw_output_contents else None
    if got is None or not np.array_equal(got, values.ravel()):
        return f"a wrong answer: {response}"
    return None


# -- the server process ------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS in /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_s(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat utime + stime)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def host_load() -> dict[str, Any]:
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "nproc": os.cpu_count()}


READY_LINE = re.compile(r"gRPC on (\S+?)(?:;|\s|$)")
START_TIMEOUT_S = 90.0


@dataclass
class Server:
    """An `infergate serve` this tool started: its process, address and log."""

    process: subprocess.Popen[str]
    address: str
    log: list[str]
    reader: threading.Thread

    @property
    def pid(self) -> int:
        return self.process.pid

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within timeout_s; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout_s)
        self.reader.join(timeout_s)
        return code


def start_server(*args: str, max_open_files: int | None = None) -> Server:
    """Starts `python -m infergate.server serve` on a free port (optionally with a lower
    RLIMIT_NOFILE) and waits for its ready line."""
    def limit_files() -> None:
        if max_open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max_open_files, max_open_files))

    command = [sys.executable, "-m", "infergate.server", "serve", "--grpc-address", "127.0.0.1:0",
               "--metrics-address", "none", *args]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                               preexec_fn=limit_files)
    log: list[str] = []
    ready = threading.Event()
    found: list[str] = []

    def drain() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            log.append(line)
            if not found and (match := READY_LINE.search(line)):
                found.append(match.group(1))
                ready.set()
        ready.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    if not ready.wait(START_TIMEOUT_S) or not found:
        process.kill()
        process.wait()
        raise RuntimeError("the server did not start:\n" + "".join(log[-30:]))
    return Server(process, found[0], log, reader)


def code_identity(note: str = "") -> dict[str, Any]:
    """The git commit, how many files under server/ differ from it, which server code runs, and a
    note on where that code came from when it is not the working tree."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"

    import infergate.server as server_package

    return {"git_commit": git("rev-parse", "HEAD"),
            "server_files_changed_since_commit": len(git("status", "--porcelain", "--", "server").splitlines()),
            "server_code": str(Path(server_package.__file__).resolve().parent),
            "python": sys.version.split()[0], "code_note": note}
