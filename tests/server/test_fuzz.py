"""Property-based fuzzing of a real server: HTTP/2 frame sequences and ModelInferRequest bodies.

Properties: the server process stays alive, answers every case within a bound, answers a normal
ModelInfer on a fresh connection after every case, ends with bounded memory, and exits 0 on
SIGTERM. The strategies live in infergate.bench.h2fuzz; bench/fuzz.py runs the same ones longer.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from infergate.bench import h2fuzz
from infergate.proto import grpc_service_pb2 as pb

from harness import EXTRA_SERVE_ARGS, ServerProcess, start_server

SHM_DIR = "/dev/shm"
REGISTER_PATH = "/inference.GRPCInferenceService/SystemSharedMemoryRegister"
UNREGISTER_PATH = "/inference.GRPCInferenceService/SystemSharedMemoryUnregister"
MAX_RSS_GROWTH_BYTES = 200 * 1024 * 1024  # over a whole module's cases
FUZZ_SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                HealthCheck.filter_too_much])


class FuzzedServer:
    """The module's server, and the memory it used once warm."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.address = server.address
        self.pid = server.process.pid
        assert h2fuzz.normal_infer_error(self.address) is None
        self.rss_at_start = h2fuzz.rss_bytes(self.pid)
        self.cases = 0

    def assert_serving(self, case: object) -> None:
        """Alive, and a normal call on a fresh connection gets the right answer."""
        self.cases += 1
        assert self.server.process.poll() is None, f"the server died after {case!r}:\n{self.log_tail()}"
        error = h2fuzz.normal_infer_error(self.address, seed=self.cases)
        assert error is None, f"a normal ModelInfer failed after {case!r}: {error}\n{self.log_tail()}"

    def log_tail(self) -> str:
        return "".join(self.server.log[-30:])


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[FuzzedServer]:
    fuzzed = FuzzedServer(start_server())
    yield fuzzed
    growth = h2fuzz.rss_bytes(fuzzed.pid) - fuzzed.rss_at_start
    code = fuzzed.server.stop(signal.SIGTERM)
    assert growth < MAX_RSS_GROWTH_BYTES, f"RSS grew by {growth / 2**20:.0f} MiB over {fuzzed.cases} cases"
    assert code == 0, f"the server exited with {code} on SIGTERM:\n{fuzzed.log_tail()}"


@pytest.fixture(scope="module")
def channel(fuzzed: FuzzedServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzzed.address) as channel:
        yield channel


@pytest.mark.skipif(bool(EXTRA_SERVE_ARGS), reason="fuzzes the native transport's framing")
@FUZZ_SETTINGS
@given(case=h2fuzz.frame_cases)
def test_frame_sequences_never_crash_or_hang_the_server(fuzzed: FuzzedServer, case: list[h2fuzz.Op]) -> None:
    outcome = h2fuzz.run_frames_case(fuzzed.address, h2fuzz.render(case))
    assert not outcome.is_hung, f"the server neither answered nor closed within the bound: {case!r}"
    fuzzed.assert_serving(case)


@FUZZ_SETTINGS
@given(body=h2fuzz.infer_requests())
def test_built_requests_get_a_clean_status(fuzzed: FuzzedServer, channel: grpc.Channel, body: bytes) -> None:
    outcome = h2fuzz.call_infer(channel, body)
    assert outcome.violation() is None, f"{outcome.violation()} for {body!r}\n{fuzzed.log_tail()}"
    fuzzed.assert_serving(body)


@settings(FUZZ_SETTINGS, max_examples=150)
@given(body=h2fuzz.mutated_requests)
def test_mutated_requests_get_a_clean_status(fuzzed: FuzzedServer, channel: grpc.Channel, body: bytes) -> None:
    outcome = h2fuzz.call_infer(channel, body)
    assert outcome.violation() is None, f"{outcome.violation()} for {body!r}\n{fuzzed.log_tail()}"
    fuzzed.assert_serving(body)


# Shared-memory keys: paths made of '..', '.', '', a file outside /dev/shm (PROBE), a symlink in
# /dev/shm that points at it (LINK), and random text. None may reach a file outside /dev/shm.
key_parts = st.one_of(st.sampled_from(["..", "..", ".", "", "PROBE", "LINK", "tmp", "..."]),
                      st.sampled_from(["..", "PROBE", "LINK"]), st.text(max_size=8))
shm_keys = st.tuples(st.sampled_from(["/", "", "//"]), st.lists(key_parts, min_size=1, max_size=6)).map(
    lambda prefix_parts: prefix_parts[0] + "/".join(prefix_parts[1]))


@pytest.fixture(scope="module")
def outside_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A 4 KiB file outside /dev/shm, and the name of a symlink to it inside /dev/shm."""
    probe = tmp_path_factory.mktemp("outside") / "probe.bin"
    probe.write_bytes(bytes(4096))
    link = f"infergate-fuzz-link-{os.getpid()}"
    os.symlink(probe, os.path.join(SHM_DIR, link))
    yield probe, link
    os.unlink(os.path.join(SHM_DIR, link))


@pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="needs /dev/shm")
@settings(FUZZ_SETTINGS, max_examples=150)
@given(template=shm_keys)
@example(template="/../../PROBE")
@example(template="//..//..//PROBE")
@example(template="/LINK")
@example(template="LINK")
def test_shared_memory_keys_never_reach_outside_dev_shm(fuzzed: FuzzedServer, channel: grpc.Channel,
                                                        outside_file: tuple[Path, str], template: str) -> None:
    probe, link = outside_file
    key = template.replace("PROBE", str(probe).lstrip("/")).replace("LINK", link)
    register = channel.unary_unary(
        REGISTER_PATH, request_serializer=pb.SystemSharedMemoryRegisterRequest.SerializeToString,
        response_deserializer=pb.SystemSharedMemoryRegisterResponse.FromString)
    try:
        register(pb.SystemSharedMemoryRegisterRequest(name="fuzz", key=key, offset=0, byte_size=64), timeout=10)
    except grpc.RpcError as exc:
        outcome = h2fuzz.BodyOutcome(exc.code().name, exc.details() or "", 0.0)
        assert outcome.violation() is None, f"{outcome.violation()} for key {key!r}"
        return
    unregister = channel.unary_unary(
        UNREGISTER_PATH, request_serializer=pb.SystemSharedMemoryUnregisterRequest.SerializeToString,
        response_deserializer=pb.SystemSharedMemoryUnregisterResponse.FromString)
    unregister(pb.SystemSharedMemoryUnregisterRequest(name="fuzz"), timeout=10)
    path = os.path.join(SHM_DIR, key.lstrip("/"))
    assert os.path.realpath(path).startswith(SHM_DIR + "/") and not os.path.islink(path), (
        f"key {key!r} registered {os.path.realpath(path)}, outside {SHM_DIR}")
