"""grpc.health.v1 end to end through grpcio's health stubs, on the transport INFERGATE_TEST_SERVE_ARGS picks."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness import start_server

INFERENCE = "inference.GRPCInferenceService"
SERVING, NOT_SERVING, SERVICE_UNKNOWN = (health_pb2.HealthCheckResponse.SERVING,
                                         health_pb2.HealthCheckResponse.NOT_SERVING,
                                         health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
TIMEOUT_S = 30.0
NOT_A_MESSAGE = b"\x0a\x05ab"  # field 1 says 5 bytes follow; 2 do


def _request(service: str = "") -> health_pb2.HealthCheckRequest:
    return health_pb2.HealthCheckRequest(service=service)


def test_check_serving_and_unknown(url: str) -> None:
    with grpc.insecure_channel(url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", INFERENCE):
            assert health.Check(_request(service), timeout=TIMEOUT_S).status == SERVING
        with pytest.raises(grpc.RpcError) as info:
            health.Check(_request("no.such.Service"), timeout=TIMEOUT_S)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert info.value.details() == "unknown service 'no.such.Service'"


def test_watch_of_an_unknown_service_stays_open(url: str) -> None:
    with grpc.insecure_channel(url) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(_request("no.such.Service"), timeout=TIMEOUT_S)
        assert next(watch).status == SERVICE_UNKNOWN
        watch.cancel()
        assert watch.code() == grpc.StatusCode.CANCELLED
        # The server is unharmed by the client leaving.
        assert health_pb2_grpc.HealthStub(channel).Check(_request(), timeout=TIMEOUT_S).status == SERVING


@pytest.mark.parametrize("method", ["Check", "Watch"])
def test_a_body_that_does_not_parse_is_invalid_argument(url: str, method: str) -> None:
    try:
        health_pb2.HealthCheckRequest.FromString(NOT_A_MESSAGE)
    except DecodeError as exc:
        expected = f"the health {method} request is not a valid protobuf message: {exc}"
    path = f"/grpc.health.v1.Health/{method}"
    with grpc.insecure_channel(url) as channel, pytest.raises(grpc.RpcError) as info:
        if method == "Check":
            channel.unary_unary(path)(NOT_A_MESSAGE, timeout=TIMEOUT_S)
        else:
            list(channel.unary_stream(path)(NOT_A_MESSAGE, timeout=TIMEOUT_S))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == expected


def test_watch_needs_no_token_and_sees_not_serving_on_sigterm(test_repository: Path, tmp_path: Path) -> None:
    """Watch streams SERVING, then NOT_SERVING when the server is told to stop, then ends with OK."""
    token_file = tmp_path / "tokens"
    token_file.write_text("tok-health-watch-7c1e\n")
    server = start_server("--model-repository", str(test_repository), "--grpc-auth-token-file", str(token_file))
    try:
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watches = [health.Watch(_request(service), timeout=TIMEOUT_S) for service in ("", INFERENCE)]
            assert [next(watch).status for watch in watches] == [SERVING, SERVING]
            server.process.send_signal(signal.SIGTERM)
            for watch in watches:
                assert [reply.status for reply in watch] == [NOT_SERVING]
                assert watch.code() == grpc.StatusCode.OK
            # The drain after the Watch ends takes a moment; stop() now would be a second SIGTERM (exit at once).
            server.process.wait(30)
    finally:
        code = server.stop()
    assert code == 0


def test_grpcio_watch_unsubscribes_when_the_client_leaves() -> None:
    """The grpcio adapter in-process: a cancelled Watch leaves no subscription behind in the health state."""
    from infergate.server.health import HealthState
    from infergate.server.transports.grpcio import health_handler

    async def run() -> tuple[int, int]:
        state = HealthState()
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((health_handler(state),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                watch = health_pb2_grpc.HealthStub(channel).Watch(_request(), timeout=TIMEOUT_S)
                first = (await watch.read()).status
                watching = len(state.watchers[""])
                watch.cancel()
                deadline_s = asyncio.get_running_loop().time() + TIMEOUT_S
                while state.watchers[""] and asyncio.get_running_loop().time() < deadline_s:
                    await asyncio.sleep(0.01)  # the server hears of the cancel a moment later
            return first, watching - len(state.watchers[""])
        finally:
            await server.stop(0)

    assert asyncio.run(run()) == (NOT_SERVING, 1)
