"""System shared memory: tensors in and out through regions the client registers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

X = np.random.default_rng(9).standard_normal((3, 16)).astype(np.float32)


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


def test_shared_memory_errors(client: grpcclient.InferenceServerClient, regions: tuple[object, object, str]) -> None:
    tensor = grpcclient.InferInput("INPUT0", list(X.shape), "FP32")
    tensor.set_shared_memory("nope", X.nbytes)
    with pytest.raises(InferenceServerException) as info:
        client.infer("classifier", [tensor])
    assert (info.value.status(), info.value.message()) == (
        "StatusCode.INVALID_ARGUMENT", "input 'INPUT0' names shared memory region 'nope', which is not registered")
    tensor.set_shared_memory("in", X.nbytes + 4)
    with pytest.raises(InferenceServerException) as info:
        client.infer("classifier", [tensor])
    assert info.value.message() == (
        f"input 'INPUT0': shared memory offset 0 + byte_size {X.nbytes + 4} exceeds region 'in' of {X.nbytes} bytes")
    with pytest.raises(InferenceServerException) as info:
        client.register_system_shared_memory("in", regions[2] + "-in", 8)
    assert (info.value.status(), info.value.message()) == (
        "StatusCode.ALREADY_EXISTS", "shared memory region 'in' is already registered")
    with pytest.raises(InferenceServerException) as info:
        client.register_system_shared_memory("other", "/no-such-key", 8)
    assert (info.value.status(), info.value.message()) == (
        "StatusCode.INVALID_ARGUMENT", "shared memory key '/no-such-key' cannot be opened: No such file or directory")
    with pytest.raises(InferenceServerException) as info:
        client.get_system_shared_memory_status("other")
    assert info.value.status() == "StatusCode.NOT_FOUND"
