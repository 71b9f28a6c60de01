"""The native HTTP/2 transport: flow control, framing edge cases and bad peers, over raw sockets and real clients."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Iterator

import grpc
import hpack
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper

from infergate.proto import grpc_service_pb2 as pb
from infergate.server.transports import h2_state, native

from harness import EXTRA_SERVE_ARGS, ServerProcess, start_server

pytestmark = pytest.mark.skipif(bool(EXTRA_SERVE_ARGS), reason="tests the native transport itself")

FRAME = struct.Struct(">IBI")
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def big_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A repository with one model of any length: FP32 [-1] in, the same out (no batching)."""
    root = tmp_path_factory.mktemp("h2repo")
    (root / "echo" / "1").mkdir(parents=True)
    graph = helper.make_graph([helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], "echo",
                              [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, root / "echo" / "1" / "model.onnx")
    (root / "echo" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        'input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ -1 ] } ]\n'
        'output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ -1 ] } ]\n')
    server = start_server("--model-repository", str(root))
    yield server
    assert server.stop() == 0


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return FRAME.pack(len(payload) << 8 | kind, flags, stream_id) + payload


class RawClient:
    """A hand-driven HTTP/2 client: sends exactly the frames a test asks for, reads frames back."""

    def __init__(self, address: str, settings: bytes = b"") -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buffer = b""
        self.sock.sendall(h2_state.PREFACE + _frame(SETTINGS, 0, 0, settings))

    def request_headers(self, path: str = INFER_PATH, content_type: str = "application/grpc") -> bytes:
        return self.encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", path),
                                    (":authority", "test"), ("content-type", content_type), ("te", "trailers")])

    def send(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(frames))

    def read_frame(self, timeout_s: float = 5.0) -> tuple[int, int, int, bytes] | None:
        """(type, flags, stream, payload), or None when nothing arrives in time or the peer closed."""
        self.sock.settimeout(timeout_s)
        while len(self.buffer) < 9 or len(self.buffer) < 9 + (FRAME.unpack_from(self.buffer)[0] >> 8):
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                return None
            if not chunk:
                return None
            self.buffer += chunk
        length_kind, flags, stream_id = FRAME.unpack_from(self.buffer)
        end = 9 + (length_kind >> 8)
        payload, self.buffer = self.buffer[9:end], self.buffer[end:]
        return length_kind & 0xFF, flags, stream_id, payload

    def frames_until_quiet(self, quiet_s: float = 0.3) -> list[tuple[int, int, int, bytes]]:
        frames = []
        while (f := self.read_frame(quiet_s)) is not None:
            frames.append(f)
        return frames

    def close(self) -> None:
        self.sock.close()


def _infer_message(values: np.ndarray) -> bytes:
    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[values.size])
    request.raw_input_contents.append(values.astype(np.float32).tobytes())
    body = request.SerializeToString()
    return b"\x00" + len(body).to_bytes(4, "big") + body


def test_a_small_client_window_is_respected(big_server: ServerProcess) -> None:
    """With a 1 KiB stream window the server sends 1 KiB and waits; WINDOW_UPDATE releases the rest."""
    values = np.arange(40_000, dtype=np.float32)  # a 160 KB response
    client = RawClient(big_server.address, settings=struct.pack(">HI", 0x4, 1024))
    try:
        message = _infer_message(values)
        client.send(_frame(HEADERS, 0x4, 1, client.request_headers()),
                    *[_frame(DATA, 0, 1, message[i:i + 16384]) for i in range(0, len(message), 16384)],
                    _frame(DATA, 0x1, 1))
        first = client.frames_until_quiet()
        sent = sum(len(p) for kind, _, sid, p in first if kind == DATA and sid == 1)
        assert sent == 1024
        assert not any(kind == HEADERS and flags & 0x1 for kind, flags, _, _ in first)  # no trailers yet
        client.send(_frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 1 << 20)),
                    _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 20)))
        rest = client.frames_until_quiet()
        body = b"".join(p for kind, _, sid, p in first + rest if kind == DATA and sid == 1)
        trailers = [p for kind, flags, sid, p in rest if kind == HEADERS and flags & 0x1 and sid == 1]
        assert trailers and (b"grpc-status", b"0") in client.decoder.decode(trailers[0], raw=True)
        response = pb.ModelInferResponse.FromString(body[5:])
        assert np.array_equal(np.frombuffer(response.raw_output_contents[0], np.float32), values)
    finally:
        client.close()


def test_ping_is_acknowledged_with_its_payload(big_server: ServerProcess) -> None:
    client = RawClient(big_server.address)
    try:
        client.send(_frame(PING, 0, 0, b"12345678"))
        frames = client.frames_until_quiet()
        assert (PING, 0x1, 0, b"12345678") in frames
    finally:
        client.close()


def test_headers_split_by_continuation(big_server: ServerProcess) -> None:
    client = RawClient(big_server.address)
    try:
        block = client.request_headers()
        client.send(_frame(HEADERS, 0, 1, block[:5]), _frame(CONTINUATION, 0x4, 1, block[5:]),
                    _frame(DATA, 0x1, 1, _infer_message(np.ones(4))))
        frames = client.frames_until_quiet()
        trailers = [p for kind, flags, _, p in frames if kind == HEADERS and flags & 0x1]
        assert trailers and (b"grpc-status", b"0") in client.decoder.decode(trailers[0], raw=True)
        body = b"".join(p for kind, _, _, p in frames if kind == DATA)
        assert pb.ModelInferResponse.FromString(body[5:]).outputs[0].shape == [4]
    finally:
        client.close()


def test_a_client_that_is_not_http2_is_told_and_cut_off(big_server: ServerProcess) -> None:
    host, _, port = big_server.address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert b"client preface" in received  # the GOAWAY's debug data says why
    with grpcclient.InferenceServerClient(big_server.address) as client:
        assert client.is_server_live()  # and the server goes on


def test_a_request_that_is_not_grpc_gets_415(big_server: ServerProcess) -> None:
    client = RawClient(big_server.address)
    try:
        client.send(_frame(HEADERS, 0x5, 1, client.request_headers(content_type="application/json")))
        frames = [f for f in client.frames_until_quiet() if f[0] == HEADERS]
        assert frames and (b":status", b"415") in client.decoder.decode(frames[0][3], raw=True)
    finally:
        client.close()


def test_unknown_method_is_unimplemented(big_server: ServerProcess) -> None:
    with grpc.insecure_channel(big_server.address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "/inference.GRPCInferenceService/NoSuchMethod" in info.value.details()


def test_a_garbled_request_is_invalid_argument(big_server: ServerProcess) -> None:
    with grpc.insecure_channel(big_server.address) as channel:
        call = channel.unary_unary(INFER_PATH)
        with pytest.raises(grpc.RpcError) as info:
            call(b"\xff\xff\xff", timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in info.value.details()


def test_large_tensors_both_ways_and_gzip(big_server: ServerProcess) -> None:
    """24 MiB each way through the stock client (flow control on both sides), then a gzip request."""
    values = np.random.default_rng(0).random(6 * 1024 * 1024, dtype=np.float32)
    with grpcclient.InferenceServerClient(big_server.address) as client:
        tensor = grpcclient.InferInput("INPUT0", [values.size], "FP32")
        tensor.set_data_from_numpy(values)
        assert np.array_equal(client.infer("echo", [tensor]).as_numpy("OUTPUT0"), values)
        small = grpcclient.InferInput("INPUT0", [4], "FP32")
        small.set_data_from_numpy(np.arange(4, dtype=np.float32))
        result = client.infer("echo", [small], compression_algorithm="gzip")
        assert result.as_numpy("OUTPUT0").tolist() == [0.0, 1.0, 2.0, 3.0]


def test_deadline_from_grpc_timeout(big_server: ServerProcess) -> None:
    """A call whose grpc-timeout has already passed when it arrives is answered DEADLINE_EXCEEDED."""
    client = RawClient(big_server.address)
    try:
        headers = client.encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", INFER_PATH),
                                         (":authority", "t"), ("content-type", "application/grpc"),
                                         ("grpc-timeout", "1n")])
        time.sleep(0.01)
        client.send(_frame(HEADERS, 0x4, 1, headers))  # no DATA yet: the deadline passes first
        frames = client.frames_until_quiet()
        trailers = [p for kind, flags, _, p in frames if kind == HEADERS and flags & 0x1]
        assert trailers and (b"grpc-status", b"4") in client.decoder.decode(trailers[0], raw=True)
    finally:
        client.close()


# -- pure helpers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [(b"100m", 0.1), (b"5S", 5.0), (b"2M", 120.0), (b"1H", 3600.0),
                                                 (b"250u", 250e-6), (b"99999999n", 0.099999999)])
def test_parse_timeout(value: bytes, seconds: float) -> None:
    assert native.parse_timeout_s(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"5", b"5x", b"123456789S", b"m"])
def test_parse_timeout_rejects(value: bytes) -> None:
    with pytest.raises(ValueError):
        native.parse_timeout_s(value)


def test_cached_header_blocks_follow_the_decoder_table() -> None:
    """The same reference-only bytes mean a new path once a literal has changed the HPACK table."""
    async def run() -> list[bytes]:
        connection = native.Http2Connection(native.Http2Server({}, 1024))
        literal = b"\x40" + h2_state.literal_header(b":path", b"/x/A")[1:]  # literal with incremental indexing
        content_type = b"\x40" + h2_state.literal_header(b"content-type", b"application/grpc")[1:]
        references = b"\x83\x86\xbf\xbe"  # :method POST, :scheme http (static), then dynamic entries 63, 62
        paths = []
        for block in (literal + b"\x83\x86" + content_type, references, references,
                      literal.replace(b"/x/A", b"/x/B") + b"\x83\x86" + content_type, references):
            fields, _ = connection._request(1, block)
            paths.append(fields[0])
        return paths

    assert asyncio.run(run()) == [b"/x/A", b"/x/A", b"/x/A", b"/x/B", b"/x/B"]


def test_status_trailers_decode_and_percent_encode() -> None:
    block = native.RESPONSE_HEADERS + native.status_trailers(3, "bad 'x': 100% \u00e9\n")
    headers = hpack.Decoder().decode(block, raw=True)
    assert headers == [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"3"),
                       (b"grpc-message", b"bad 'x': 100%25 %C3%A9%0A")]
    long_name = b"x" * 300
    assert hpack.Decoder().decode(h2_state.literal_header(long_name, b"v"), raw=True) == [(long_name, b"v")]
