"""--strict-readiness (Triton's flag): ServerReady and grpc.health.v1 wait for every model that should load."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from infergate.server.service import is_server_ready

from harness import start_server

INFERENCE = "inference.GRPCInferenceService"
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
TIMEOUT_S = 30.0


@pytest.mark.parametrize(("is_started", "is_strict", "loaded", "ready"), [
    (False, False, {"a", "b"}, False),  # still loading, or shutting down
    (True, False, set(), True),  # not strict: up is ready
    (True, True, {"a", "b"}, True),
    (True, True, {"a"}, False),  # 'b' should be loaded and is not
])
def test_readiness_decision(is_started: bool, is_strict: bool, loaded: set[str], ready: bool) -> None:
    assert is_server_ready(is_started, is_strict, ["a", "b"], loaded.__contains__) is ready


def _health(address: str) -> list[int]:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return [stub.Check(health_pb2.HealthCheckRequest(service=s), timeout=TIMEOUT_S).status
                for s in ("", INFERENCE)]


@pytest.mark.parametrize(("flag", "ready"), [(("--strict-readiness",), False), (("--strict-readiness", "true"), False),
                                             (("--strict-readiness=false",), True)])
def test_a_model_that_failed_to_load(test_repository: Path, flag: tuple[str, ...], ready: bool) -> None:
    # The test repository's broken_config and missing_file fail to load; the rest serve either way.
    server = start_server("--model-repository", str(test_repository), *flag)
    try:
        with grpcclient.InferenceServerClient(server.address) as client:
            assert client.is_server_live()
            assert client.is_server_ready() is ready
            assert client.is_model_ready("classifier")
            index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
            assert index["broken_config"]["state"] == "UNAVAILABLE"
            assert "not a valid ModelConfig" in index["broken_config"]["reason"]
        assert _health(server.address) == [SERVING if ready else NOT_SERVING] * 2
    finally:
        assert server.stop() == 0
    warned = any("not ready: 'broken_config', 'missing_file' did not load" in line for line in server.log)
    assert warned is not ready


@pytest.fixture()
def explicit_server(test_repository: Path) -> Iterator[str]:
    server = start_server("--model-repository", str(test_repository), "--model-control-mode", "explicit",
                          "--load-model", "classifier", "--strict-readiness", "true")
    yield server.address
    assert server.stop() == 0


def test_readiness_follows_loads_and_unloads(explicit_server: str) -> None:
    with grpc.insecure_channel(explicit_server) as channel, \
            grpcclient.InferenceServerClient(explicit_server) as client:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
        assert next(watch).status == SERVING
        assert client.is_server_ready()
        with pytest.raises(InferenceServerException):
            client.load_model("broken_config")  # now it should be loaded, and is not
        assert not client.is_server_ready()
        assert next(watch).status == NOT_SERVING
        client.unload_model("broken_config")  # no longer wanted
        assert client.is_server_ready()
        assert next(watch).status == SERVING
        watch.cancel()
