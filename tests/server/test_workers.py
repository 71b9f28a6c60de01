"""`--workers N`: front-end processes (native HTTP/2 or grpcio) on one port, one engine behind them."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from harness import EXTRA_SERVE_ARGS, ServerProcess, start_server

pytestmark = pytest.mark.skipif(bool(EXTRA_SERVE_ARGS), reason="starts its own servers with explicit flags")


def _serve_workers(repository: Path, *args: str) -> ServerProcess:
    return start_server("--model-repository", str(repository), "--workers", "2", "--model-control-mode",
                        "explicit", "--load-model", "classifier", *args)


def _worker_pids(server: ServerProcess) -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                is_worker = b"infergate.server.frontend" in cmdline.read()
        except (OSError, IndexError, ValueError):
            continue
        if parent == server.process.pid and is_worker:
            pids.add(int(entry))
    return pids


def _infer_on_new_connections(address: str, connections: int, calls: int) -> None:
    x = np.random.default_rng(0).random((1, 16), dtype=np.float32)
    for _ in range(connections):
        # A private subchannel pool: each client opens its own TCP connection, so the kernel spreads
        # them over the workers instead of grpc reusing one connection for all.
        with grpcclient.InferenceServerClient(address, channel_args=[("grpc.use_local_subchannel_pool", 1)]) as client:
            tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
            tensor.set_data_from_numpy(x)
            for _ in range(calls):
                assert client.infer("classifier", [tensor]).as_numpy("PROBS").shape == (1, 4)


@pytest.mark.parametrize("transport", ["native", "grpcio"])
def test_workers_share_one_engine(test_repository: Path, transport: str) -> None:
    server = _serve_workers(test_repository, "--transport", transport)
    try:
        assert len(_worker_pids(server)) == 2
        _infer_on_new_connections(server.address, connections=8, calls=5)
        with grpcclient.InferenceServerClient(server.address) as client:
            # Every connection's calls are in the one engine's statistics, whichever worker took them.
            assert client.get_inference_statistics("classifier").model_stats[0].inference_count == 40
            assert client.is_server_ready()
            with pytest.raises(Exception, match="NOT_FOUND"):
                client.get_model_metadata("no_such_model")
    finally:
        assert server.stop() == 0
    assert any(f"2 {transport} worker processes" in line for line in server.log)


def test_a_dead_worker_is_replaced(test_repository: Path) -> None:
    server = _serve_workers(test_repository)
    try:
        before = _worker_pids(server)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = _worker_pids(server)
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.1)
        assert len(now) == 2 and victim not in now, now
        assert any(f"(pid {victim}) exited with code -9; starting a new one" in line for line in server.log)
        time.sleep(0.5)  # the new worker binds the port before it says hello; calls may race that
        _infer_on_new_connections(server.address, connections=6, calls=2)
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("flags", [("--workers", "2"), ()], ids=["workers", "native"])
def test_a_port_in_use_is_refused_clearly(test_repository: Path, flags: tuple[str, ...]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="exited with 2") as info:
            start_server("--model-repository", str(test_repository), "--grpc-address", f"127.0.0.1:{port}",
                         "--model-control-mode", "explicit", *flags)
    assert f"infergate serve: error: --grpc-address 127.0.0.1:{port}: address already in use" in str(info.value)


def test_workers_auto_is_one_process_on_a_small_machine_and_one_per_two_cores_above() -> None:
    from infergate.server.cli import MAX_AUTO_WORKERS, auto_workers

    assert [auto_workers(cores) for cores in (1, 2, 3, 4, 16, 64)] == [1, 1, 1, 2, 8, MAX_AUTO_WORKERS]
