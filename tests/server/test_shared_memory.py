"""System shared memory: tensors in and out through regions the client registers, and only those."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from infergate.models.errors import InvalidInput
from infergate.server.shared_memory import NAME_MAX, SHM_DIR, SharedMemoryRegions, key_problem

from harness import start_server

X = np.random.default_rng(9).standard_normal((3, 16)).astype(np.float32)
IDENTITY_TYPES = ("BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES")  # identity_all's
SECRET = b"TOPSECRET-42"  # 12 bytes: an identity_all UINT8 input of shape [4, 3] would echo it back
TRUNCATION_S = 2.0  # how long a client truncates and regrows its region while inferences use it
TRUNCATION_CALLS = 2000  # at most this many inferences meanwhile


@pytest.fixture()
def regions(client: grpcclient.InferenceServerClient) -> Iterator[tuple[object, object, str]]:
    key = f"/infergate-test-{uuid.uuid4().hex[:8]}"
    handle_in = shm.create_shared_memory_region("in", key + "-in", X.nbytes)
    handle_out = shm.create_shared_memory_region("out", key + "-out", 256)
    shm.set_shared_memory_region(handle_in, [X])
    client.register_system_shared_memory("in", key + "-in", X.nbytes)
    client.register_system_shared_memory("out", key + "-out", 256)
    yield handle_in, handle_out, key
    client.unregister_system_shared_memory()
    shm.destroy_shared_memory_region(handle_in)
    shm.destroy_shared_memory_region(handle_out)


@pytest.fixture()
def shm_name() -> Iterator[str]:
    """A fresh name in /dev/shm, whatever the test puts there removed afterwards."""
    name = f"infergate-test-{uuid.uuid4().hex[:8]}"
    yield name
    path = Path(SHM_DIR, name)
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        path.unlink(missing_ok=True)


@pytest.fixture()
def secret_file(tmp_path: Path) -> Path:
    """A file outside /dev/shm whose bytes must never come back through the server."""
    path = tmp_path / "secret.txt"
    path.write_bytes(SECRET)
    return path


def _error(call: object, *args: object, **kwargs: object) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    return info.value.status(), info.value.message()


def _uint8_from(region: str, byte_size: int, offset: int = 0, rows: int = 4) -> list[grpcclient.InferInput]:
    """identity_all's inputs: IN_UINT8 from a region, every other one zeros sent inline."""
    tensor = grpcclient.InferInput("IN_UINT8", [rows, 3], "UINT8")
    tensor.set_shared_memory(region, byte_size, offset)
    return [tensor, *_others(rows)]


def _others(rows: int) -> list[grpcclient.InferInput]:
    tensors = []
    for datatype in IDENTITY_TYPES:
        if datatype != "UINT8":
            tensor = grpcclient.InferInput(f"IN_{datatype}", [rows, 3], datatype)
            tensor.set_data_from_numpy(np.full((rows, 3), b"", object) if datatype == "BYTES" else
                                       np.zeros((rows, 3), triton_to_np_dtype(datatype)))
            tensors.append(tensor)
    return tensors


def _plain(rows: int = 4, value: int = 0) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("IN_UINT8", [rows, 3], "UINT8")
    tensor.set_data_from_numpy(np.full((rows, 3), value, np.uint8))
    return [tensor, *_others(rows)]


def _echo_attempts(client: grpcclient.InferenceServerClient, region: str) -> list[object]:
    """Everything the server answers when asked to echo a region through identity_all."""
    answers: list[object] = []
    for rows in (4, 1):
        try:
            result = client.infer("identity_all", _uint8_from(region, rows * 3, rows=rows))
        except InferenceServerException as error:
            answers.append(error.message())
        else:
            answers.append(result.get_response().SerializeToString())
    status = client.get_system_shared_memory_status()
    answers.append(status.SerializeToString())
    return answers


def test_inputs_and_outputs_through_shared_memory(client: grpcclient.InferenceServerClient,
                                                  regions: tuple[object, object, str]) -> None:
    _, handle_out, key = regions
    status = client.get_system_shared_memory_status()
    assert {r.name: (r.key, r.byte_size) for r in status.regions.values()} == {
        "in": (key + "-in", X.nbytes), "out": (key + "-out", 256)}
    tensor = grpcclient.InferInput("INPUT0", list(X.shape), "FP32")
    tensor.set_shared_memory("in", X.nbytes)
    in_memory = grpcclient.InferRequestedOutput("PROBS")
    in_memory.set_shared_memory("out", 256)
    result = client.infer("classifier", [tensor], outputs=[in_memory, grpcclient.InferRequestedOutput("LOGITS")])
    plain = grpcclient.InferInput("INPUT0", list(X.shape), "FP32")
    plain.set_data_from_numpy(X)
    expected = client.infer("classifier", [plain])
    probs = shm.get_contents_as_numpy(handle_out, np.float32, [3, 4])
    np.testing.assert_array_equal(probs, expected.as_numpy("PROBS"))
    np.testing.assert_array_equal(result.as_numpy("LOGITS"), expected.as_numpy("LOGITS"))
    assert result.get_output("PROBS").parameters["shared_memory_byte_size"].int64_param == 48


def test_one_region_for_input_and_output(client: grpcclient.InferenceServerClient, shm_name: str) -> None:
    """A region used for an output too becomes writable; input at offset 0, output at offset 16."""
    handle = shm.create_shared_memory_region("both", "/" + shm_name, 32)
    try:
        data = np.arange(12, dtype=np.uint8).reshape(4, 3)
        shm.set_shared_memory_region(handle, [data])
        client.register_system_shared_memory("both", "/" + shm_name, 32)
        out = grpcclient.InferRequestedOutput("OUT_UINT8")
        out.set_shared_memory("both", 12, 16)
        result = client.infer("identity_all", _uint8_from("both", 12), outputs=[out])
        assert result.get_output("OUT_UINT8").parameters["shared_memory_byte_size"].int64_param == 12
        np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.uint8, [4, 3], offset=16), data)
    finally:
        client.unregister_system_shared_memory("both")
        shm.destroy_shared_memory_region(handle)


def test_shared_memory_errors(client: grpcclient.InferenceServerClient, regions: tuple[object, object, str]) -> None:
    tensor = grpcclient.InferInput("INPUT0", list(X.shape), "FP32")
    tensor.set_shared_memory("nope", X.nbytes)
    assert _error(client.infer, "classifier", [tensor]) == (
        "StatusCode.INVALID_ARGUMENT", "input 'INPUT0' names shared memory region 'nope', which is not registered")
    tensor.set_shared_memory("in", X.nbytes + 4)
    assert _error(client.infer, "classifier", [tensor]) == (
        "StatusCode.INVALID_ARGUMENT",
        f"input 'INPUT0': shared memory offset 0 + byte_size {X.nbytes + 4} exceeds region 'in' of {X.nbytes} bytes")
    assert _error(client.register_system_shared_memory, "in", regions[2] + "-in", 8) == (
        "StatusCode.ALREADY_EXISTS", "shared memory region 'in' is already registered")
    assert _error(client.register_system_shared_memory, "other", "/no-such-key", 8) == (
        "StatusCode.INVALID_ARGUMENT", "Unable to open shared memory region: '/no-such-key': No such file or directory")
    assert _error(client.get_system_shared_memory_status, "other")[0] == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize(("key", "rule"), [
    ("/../../etc/hostname", "a key must have no '/' after its leading one"),
    ("/../../tmp/x", "a key must have no '/' after its leading one"),
    ("a/b", "a key must start with '/'"),
    ("/a/b", "a key must have no '/' after its leading one"),
    ("..", "a key must start with '/'"),
    ("/..", "a key must name a file after its '/', not '', '.' or '..'"),
    ("/.", "a key must name a file after its '/', not '', '.' or '..'"),
    ("/", "a key must name a file after its '/', not '', '.' or '..'"),
    ("", "a key must start with '/'"),
    ("/a\0b", "a key must not contain NUL"),
    ("/" + "a" * (NAME_MAX + 1), f"a key may have at most {NAME_MAX} bytes after its '/' (NAME_MAX); this one has "
                                 f"{NAME_MAX + 1}"),
])
def test_key_outside_shm_rules_is_refused(client: grpcclient.InferenceServerClient, key: str, rule: str) -> None:
    assert key_problem(key) == rule
    shown = repr(key) if "\0" in key else f"'{key[:80]}...'" if len(key) > 80 else f"'{key}'"
    assert _error(client.register_system_shared_memory, "bad", key, 8) == (
        "StatusCode.INVALID_ARGUMENT", f"shared memory key {shown} is not valid: {rule} (the rules of shm_open)")
    assert client.get_system_shared_memory_status().regions == {}


def test_longest_key_is_allowed() -> None:
    assert key_problem("/" + "a" * NAME_MAX) is None
    assert key_problem("/" + "\u00e9" * 128) == (  # 256 bytes of UTF-8 in 128 characters
        f"a key may have at most {NAME_MAX} bytes after its '/' (NAME_MAX); this one has 256")


def test_files_outside_shm_cannot_be_read(client: grpcclient.InferenceServerClient, secret_file: Path,
                                          shm_name: str) -> None:
    """Neither a traversal key nor a symlink in /dev/shm reaches a file outside it; its bytes never come back."""
    hostname = Path("/etc/hostname").read_bytes() if Path("/etc/hostname").exists() else b""
    traversal = "/../.." + str(secret_file)
    assert _error(client.register_system_shared_memory, "leak", traversal, len(SECRET)) == (
        "StatusCode.INVALID_ARGUMENT",
        f"shared memory key '{traversal[:80]}{'...' if len(traversal) > 80 else ''}' is not valid: a key must "
        "have no '/' after its leading one (the rules of shm_open)")
    assert _error(client.register_system_shared_memory, "leak", "/../../etc/hostname", 1) == (
        "StatusCode.INVALID_ARGUMENT", "shared memory key '/../../etc/hostname' is not valid: a key must have no "
        "'/' after its leading one (the rules of shm_open)")
    link = Path(SHM_DIR, shm_name)
    for target in (secret_file, Path("/etc/hostname")):
        link.symlink_to(target)
        assert _error(client.register_system_shared_memory, "leak", "/" + shm_name, len(SECRET)) == (
            "StatusCode.INVALID_ARGUMENT",
            f"Unable to open shared memory region: '/{shm_name}': it is a symbolic link, which is not followed")
        link.unlink()
    answers = _echo_attempts(client, "leak")
    assert answers[0] == "input 'IN_UINT8' names shared memory region 'leak', which is not registered"
    for answer in answers:
        text = answer.encode() if isinstance(answer, str) else answer
        assert isinstance(text, bytes) and SECRET not in text
        assert not hostname.strip() or hostname.strip() not in text


@pytest.mark.parametrize("kind", ["a directory", "a FIFO"])
def test_key_naming_no_regular_file_is_refused(client: grpcclient.InferenceServerClient, shm_name: str,
                                               kind: str) -> None:
    path = Path(SHM_DIR, shm_name)
    if kind == "a directory":
        path.mkdir()
    else:
        os.mkfifo(path)  # opening it for reading would block without O_NONBLOCK
    assert _error(client.register_system_shared_memory, "odd", "/" + shm_name, 8) == (
        "StatusCode.INVALID_ARGUMENT",
        f"Unable to open shared memory region: '/{shm_name}': it is {kind}, expected a regular file")


def test_register_bounds(client: grpcclient.InferenceServerClient, shm_name: str) -> None:
    key = "/" + shm_name
    Path(SHM_DIR, shm_name).write_bytes(b"")
    assert _error(client.register_system_shared_memory, "r", key, 8) == (
        "StatusCode.INVALID_ARGUMENT",
        f"failed to register shared memory region 'r': offset 0 + byte_size 8 exceeds the 0 bytes of key '{key}'")
    Path(SHM_DIR, shm_name).write_bytes(bytes(64))
    for offset, byte_size in ((0, 65), (60, 8), (64, 1), (2**64 - 1, 2**64 - 1), (2**63, 1)):
        assert _error(client.register_system_shared_memory, "r", key, byte_size, offset) == (
            "StatusCode.INVALID_ARGUMENT", f"failed to register shared memory region 'r': offset {offset} + "
            f"byte_size {byte_size} exceeds the 64 bytes of key '{key}'")
    assert _error(client.register_system_shared_memory, "r", key, 0) == (
        "StatusCode.INVALID_ARGUMENT", "failed to register shared memory region 'r': offset 0 and byte_size 0; "
        "expected offset >= 0 and byte_size >= 1")
    assert client.get_system_shared_memory_status().regions == {}
    client.register_system_shared_memory("r", key, 12, 52)  # the last 12 bytes
    client.unregister_system_shared_memory("r")


def test_infer_bounds(client: grpcclient.InferenceServerClient, shm_name: str) -> None:
    key = "/" + shm_name
    Path(SHM_DIR, shm_name).write_bytes(bytes(range(64)))
    client.register_system_shared_memory("r", key, 32, 16)  # bytes 16..47 of the file
    try:
        result = client.infer("identity_all", _uint8_from("r", 12, 20))
        np.testing.assert_array_equal(result.as_numpy("OUT_UINT8").reshape(-1), np.arange(36, 48, dtype=np.uint8))
        for offset, byte_size, problem in (
            (-1, 12, "shared memory offset -1 and byte_size 12 in region 'r'; expected both >= 0"),
            (0, -12, "shared memory offset 0 and byte_size -12 in region 'r'; expected both >= 0"),
            (21, 12, "shared memory offset 21 + byte_size 12 exceeds region 'r' of 32 bytes"),
            (2**63 - 1, 12, f"shared memory offset {2**63 - 1} + byte_size 12 exceeds region 'r' of 32 bytes"),
            (0, 2**63 - 1, f"shared memory offset 0 + byte_size {2**63 - 1} exceeds region 'r' of 32 bytes"),
        ):
            assert _error(client.infer, "identity_all", _uint8_from("r", byte_size, offset)) == (
                "StatusCode.INVALID_ARGUMENT", f"input 'IN_UINT8': {problem}")
            out = grpcclient.InferRequestedOutput("OUT_UINT8")
            out.set_shared_memory("r", byte_size, offset)
            assert _error(client.infer, "identity_all", _plain(), outputs=[out]) == (
                "StatusCode.INVALID_ARGUMENT", f"requested output 'OUT_UINT8': {problem}")
        assert _error(client.infer, "identity_all", _uint8_from("r", 13)) == (
            "StatusCode.INVALID_ARGUMENT", "input 'IN_UINT8' shared memory byte_size has 13 bytes, expected 12 for "
            "shape [4, 3] and datatype UINT8")
    finally:
        client.unregister_system_shared_memory("r")
    assert Path(SHM_DIR, shm_name).read_bytes() == bytes(range(64))


def test_output_into_read_only_file_fails_cleanly(client: grpcclient.InferenceServerClient, shm_name: str) -> None:
    """An input-only region is never written: an output into a file its owner made read-only fails."""
    key, path = "/" + shm_name, Path(SHM_DIR, shm_name)
    path.write_bytes(bytes(range(12)))
    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    client.register_system_shared_memory("ro", key, 12)
    try:
        result = client.infer("identity_all", _uint8_from("ro", 12))  # reading it is fine
        np.testing.assert_array_equal(result.as_numpy("OUT_UINT8").reshape(-1), np.arange(12, dtype=np.uint8))
        out = grpcclient.InferRequestedOutput("OUT_UINT8")
        out.set_shared_memory("ro", 12)
        assert _error(client.infer, "identity_all", _plain(value=7), outputs=[out]) == (
            "StatusCode.INVALID_ARGUMENT", f"requested output 'OUT_UINT8': shared memory region 'ro' (key '{key}') "
            "is not writable by the server: Permission denied")
        assert client.infer("identity_all", _plain()).as_numpy("OUT_UINT8").shape == (4, 3)  # still serving
    finally:
        client.unregister_system_shared_memory("ro")
    assert path.read_bytes() == bytes(range(12))


def _add_sub_in_region(region: str) -> tuple[list[grpcclient.InferInput], list[grpcclient.InferRequestedOutput]]:
    """add_sub_nobatch's inputs and outputs, one to a page of the region so each use touches its own page."""
    inputs = [grpcclient.InferInput(f"INPUT{i}", [4], "INT32") for i in range(2)]
    outputs = [grpcclient.InferRequestedOutput(f"OUTPUT{i}") for i in range(2)]
    for page, tensor in enumerate([*inputs, *outputs]):
        tensor.set_shared_memory(region, 16, page * mmap.PAGESIZE)
    return inputs, outputs


def test_server_survives_truncation_during_inference(test_repository: Path, shm_name: str) -> None:
    """A client that truncates and regrows its file while requests read and write its region gets
    INVALID_ARGUMENT at worst: the server never touches a page past the file's end (SIGBUS would kill it)."""
    path, size = Path(SHM_DIR, shm_name), 4 * mmap.PAGESIZE
    path.write_bytes(bytes(size))
    server = start_server("--model-repository", str(test_repository))  # its own: a crash must not take the others'
    stop = threading.Event()

    def truncate_and_regrow() -> None:
        while not stop.is_set():
            os.truncate(path, 0)
            os.truncate(path, size)

    truncator = threading.Thread(target=truncate_and_regrow, daemon=True)
    outcomes: Counter[str] = Counter()
    messages: set[str] = set()
    try:
        with grpcclient.InferenceServerClient(server.address) as client:
            client.register_system_shared_memory("t", "/" + shm_name, size)
            inputs, outputs = _add_sub_in_region("t")
            truncator.start()
            deadline = time.monotonic() + TRUNCATION_S
            for _ in range(TRUNCATION_CALLS):
                if time.monotonic() > deadline:
                    break
                try:
                    client.infer("add_sub_nobatch", inputs, outputs=outputs)
                except InferenceServerException as error:
                    outcomes[str(error.status())] += 1
                    messages.add(error.message())
                    if error.status() != "StatusCode.INVALID_ARGUMENT":
                        break
                else:
                    outcomes["OK"] += 1
            stop.set()
            truncator.join()
            assert server.process.poll() is None, f"the server died ({outcomes}):\n" + "".join(server.log[-20:])
            assert set(outcomes) <= {"OK", "StatusCode.INVALID_ARGUMENT"}, (outcomes, messages)
            assert outcomes["StatusCode.INVALID_ARGUMENT"] > 0, outcomes  # the race was run, not missed
            assert all("shared memory region 't'" in message for message in messages), messages
            tensors = [grpcclient.InferInput(f"INPUT{i}", [4], "INT32") for i in range(2)]
            for tensor in tensors:
                tensor.set_data_from_numpy(np.array([1, 2, 3, 4], np.int32))
            assert client.infer("add_sub_nobatch", tensors).as_numpy("OUTPUT0").tolist() == [2, 4, 6, 8]
            words = np.zeros(size // 4, np.int32)  # the region still works once the file holds still
            page = mmap.PAGESIZE // 4
            words[:4], words[page:page + 4] = [1, 2, 3, 4], [10, 20, 30, 40]
            path.write_bytes(words.tobytes())
            client.infer("add_sub_nobatch", inputs, outputs=outputs)
            words = np.frombuffer(path.read_bytes(), np.int32)
            assert words[2 * page:2 * page + 4].tolist() == [11, 22, 33, 44]
            client.unregister_system_shared_memory()
    finally:
        stop.set()
        if truncator.is_alive():
            truncator.join()
        server.stop()


# -- SharedMemoryRegions itself, without a server ------------------------------------------


def test_region_descriptors(shm_name: str) -> None:
    """Read-only until the first output, then one write-only descriptor more; both close-on-exec, both
    closed by unregister."""
    Path(SHM_DIR, shm_name).write_bytes(bytes(range(16)))
    regions = SharedMemoryRegions()
    regions.register("r", "/" + shm_name, 4, 8)
    region = regions.status("r")[0]
    try:
        assert regions.read("input 'x'", "r", 2, 4) == bytes([6, 7, 8, 9])
        assert region.write_fd is None
        with pytest.raises(OSError) as info:
            os.write(region.fd, b"x")
        assert info.value.errno == errno.EBADF
        regions.prepare_output("output 'y'", "r", 0, 8)
        regions.write("output 'y'", "r", 6, b"\xff\xfe")
        assert Path(SHM_DIR, shm_name).read_bytes()[8:12] == bytes([8, 9, 0xFF, 0xFE])
        assert region.write_fd is not None
        write_fd = region.write_fd
        regions.prepare_output("output 'y'", "r", 0, 8)
        assert region.write_fd == write_fd  # opened once
        for fd in (region.fd, write_fd):
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert os.get_blocking(region.fd) is False  # O_NONBLOCK from open, harmless for a regular file
    finally:
        regions.unregister("")
    for fd in (region.fd, write_fd):
        with pytest.raises(OSError) as info:
            os.fstat(fd)
        assert info.value.errno == errno.EBADF


def test_file_replaced_or_shrunk_after_registration(shm_name: str) -> None:
    path = Path(SHM_DIR, shm_name)
    path.write_bytes(bytes(range(16)))
    regions = SharedMemoryRegions()
    regions.register("r", "/" + shm_name, 0, 16)
    try:
        os.truncate(path, 8)
        assert regions.read("input 'x'", "r", 0, 4) == bytes(range(4))  # still in the file
        for offset, got in ((4, 4), (12, 0)):
            with pytest.raises(InvalidInput) as info:
                regions.read("input 'x'", "r", offset, 8 - offset // 3)
            assert info.value.message == (
                f"input 'x': shared memory region 'r' (key '/{shm_name}') gave {got} of the {8 - offset // 3} bytes "
                f"at offset {offset}: the file has shrunk since it was registered, and the region needs 16 bytes of it")
        with pytest.raises(InvalidInput) as info:
            regions.prepare_output("output 'y'", "r", 0, 4)
        assert info.value.message == (f"output 'y': shared memory region 'r' needs 16 bytes of key '/{shm_name}', "
                                      "but the file has shrunk to 8 bytes since it was registered")
        os.truncate(path, 16)
        path.unlink()
        path.write_bytes(bytes(16))  # same key, another file
        with pytest.raises(InvalidInput) as info:
            regions.prepare_output("output 'y'", "r", 0, 4)
        assert info.value.message == (f"output 'y': shared memory region 'r' (key '/{shm_name}'): the key names a "
                                      "different file than when the region was registered")
    finally:
        regions.unregister("")


def test_negative_register_numbers(shm_name: str) -> None:
    """The RPC's fields are uint64; the method still refuses negatives from any other caller."""
    Path(SHM_DIR, shm_name).write_bytes(bytes(16))
    regions = SharedMemoryRegions()
    for offset, byte_size in ((-1, 8), (0, -8)):
        with pytest.raises(InvalidInput) as info:
            regions.register("r", "/" + shm_name, offset, byte_size)
        assert info.value.message == (f"failed to register shared memory region 'r': offset {offset} and byte_size "
                                      f"{byte_size}; expected offset >= 0 and byte_size >= 1")
    assert regions.status("") == []
    with pytest.raises(InvalidInput) as info:
        regions.register("", "/" + shm_name, 0, 8)
    assert info.value.message == "a shared memory region needs a name; '' means every region in unregister and status"
