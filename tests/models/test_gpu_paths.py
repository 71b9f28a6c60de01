"""The GPU paths chosen from what exists, checked without a GPU: providers from a stubbed provider list, I/O binding
from the session's providers (and run for real on a CPU session), instance_group gpus, CUDA's absence said clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from infergate.models.config import build_spec, read_config
from infergate.models.errors import ConfigError
from infergate.models.onnx_runtime import choose_providers, io_binding_device
from infergate.models.repository import load_model
from infergate.models.runtime import gpu_device_id

from modelgen import classifier, write

CPU_BUILD = ["AzureExecutionProvider", "CPUExecutionProvider"]  # onnxruntime from PyPI
GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]  # onnxruntime-gpu


def test_a_cpu_build_runs_on_the_cpu_and_refuses_kind_gpu_by_name() -> None:
    assert choose_providers(CPU_BUILD, True, False, False, 0, "m") == ["CPUExecutionProvider"]  # KIND_AUTO
    with pytest.raises(ConfigError) as refused:
        choose_providers(CPU_BUILD, True, True, False, 0, "m")
    assert refused.value.message == (
        "model 'm': instance_group kind KIND_GPU, but onnxruntime has no CUDA provider here (providers: "
        "['AzureExecutionProvider', 'CPUExecutionProvider']); use KIND_CPU or KIND_AUTO, or install onnxruntime-gpu")


def test_a_gpu_build_runs_cuda_on_the_configured_device_with_tensorrt_only_when_asked() -> None:
    cuda = ("CUDAExecutionProvider", {"device_id": "1"})
    assert choose_providers(GPU_BUILD, True, True, False, 1, "m") == [cuda, "CPUExecutionProvider"]
    assert choose_providers(GPU_BUILD, True, False, True, 1, "m") == [
        ("TensorrtExecutionProvider", {"device_id": "1"}), cuda, "CPUExecutionProvider"]
    assert choose_providers(GPU_BUILD, False, False, True, 1, "m") == ["CPUExecutionProvider"]  # KIND_CPU


def test_io_binding_follows_the_session_providers() -> None:
    on_cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert io_binding_device(on_cuda, "auto", has_strings=False) == "cuda"
    assert io_binding_device(["TensorrtExecutionProvider", *on_cuda], "on", has_strings=False) == "cuda"
    assert io_binding_device(on_cuda, "off", has_strings=False) is None
    assert io_binding_device(on_cuda, "auto", has_strings=True) is None  # string tensors are host objects
    assert io_binding_device(["CPUExecutionProvider"], "auto", has_strings=False) is None  # plain run(): faster here
    assert io_binding_device(["CPUExecutionProvider"], "on", has_strings=False) == "cpu"


def _repository(root: Path, io_binding: str, instance_group: str = "") -> Path:
    classifier(root / "m/1/model.onnx")
    write(root / "m/config.pbtxt", f"""
platform: "onnxruntime_onnx"
max_batch_size: 8
parameters {{ key: "io_binding" value: {{ string_value: "{io_binding}" }} }}
{instance_group}
""")
    return root


@pytest.mark.parametrize("mode", ["on", "off"])
def test_the_binding_path_computes_what_plain_run_does(tmp_path: Path, mode: str) -> None:
    (loaded,) = load_model(_repository(tmp_path, mode), "m")
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    got = loaded.runtime.predict({"INPUT0": x}, ["PROBS", "LOGITS"])
    session = loaded.runtime.session  # type: ignore[attr-defined]
    want = session.run(["PROBS", "LOGITS"], {"INPUT0": x})
    assert loaded.runtime._binding_device == ("cpu" if mode == "on" else None)  # type: ignore[attr-defined]
    for name, expected in zip(["PROBS", "LOGITS"], want):
        np.testing.assert_array_equal(got[name], expected)
        assert got[name].shape == (5, 4) and got[name].dtype == np.float32


def test_a_bad_io_binding_parameter_is_refused_with_its_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model 'm': parameter io_binding is 'yes', expected auto, on or off"):
        load_model(_repository(tmp_path, "yes"), "m")


def test_instance_group_gpus_picks_the_device(tmp_path: Path) -> None:
    _repository(tmp_path, "auto", "instance_group [ { count: 2, kind: KIND_GPU, gpus: [ 3 ] } ]")
    spec = build_spec(read_config(tmp_path / "m"), tmp_path / "m")
    assert spec.instance_groups[0].gpus == (3,) and gpu_device_id(spec) == 3
    # Here, with no CUDA provider, KIND_GPU is refused at load with the reason.
    with pytest.raises(ConfigError, match="instance_group kind KIND_GPU, but onnxruntime has no CUDA provider"):
        load_model(tmp_path, "m")
