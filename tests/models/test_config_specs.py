"""config.pbtxt reaches batching/ and the runtimes as plain dataclasses; cascade/ and batching/ load without gRPC."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from infergate.batching.limits import limits_for
from infergate.batching.policy import QueuePolicy
from infergate.models.config import (
    DynamicBatchingSpec,
    InstanceGroupSpec,
    ModelSpec,
    QueuePolicySpec,
    WarmupInputSpec,
    WarmupSpec,
    build_spec,
    read_config,
)
from infergate.models.repository import warmup_batches
from infergate.models.runtime import requires_gpu, wants_gpu

CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "X", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "Y", data_type: TYPE_FP32, dims: [ 4 ] } ]
dynamic_batching {
  max_queue_delay_microseconds: 300
  preferred_batch_size: [ 4, 8 ]
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy { max_queue_size: 5 default_timeout_microseconds: 700 allow_timeout_override: true }
  priority_queue_policy { key: 1 value: { max_queue_size: 9 } }
}
instance_group [ { count: 2, kind: KIND_CPU }, { count: 1, kind: KIND_GPU } ]
model_warmup [ { name: "w", batch_size: 3, count: 2, inputs { key: "X" value: { data_type: TYPE_FP32, dims: [ 4 ],
  random_data: true } } } ]
parameters { key: "adaptive_queue_delay" value: { string_value: "off" } }
"""


def _spec(tmp_path: Path, text: str = CONFIG) -> ModelSpec:
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(text)
    return build_spec(read_config(model_dir), model_dir)


def test_the_spec_holds_batching_instances_and_warmups_as_dataclasses(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    assert spec.dynamic_batching == DynamicBatchingSpec(300, (4, 8), 2, 2, QueuePolicySpec(5, 700, True),
                                                        ((1, QueuePolicySpec(9, 0, False)),))
    assert spec.instance_groups == (InstanceGroupSpec(2, "KIND_CPU"), InstanceGroupSpec(1, "KIND_GPU"))
    assert spec.instance_count == 3 and wants_gpu(spec) and requires_gpu(spec)
    assert spec.warmups == (WarmupSpec("w", 3, 2, (("X", WarmupInputSpec("FP32", (4,), "random_data")),)),)
    ((inputs, count),) = warmup_batches(spec)
    assert inputs["X"].shape == (3, 4) and count == 2


def test_batch_limits_come_from_the_spec(tmp_path: Path) -> None:
    limits = limits_for(_spec(tmp_path))
    assert (limits.max_batch_size, limits.is_dynamic, limits.max_queue_delay_us) == (8, True, 300)
    assert (limits.preferred_batch_sizes, limits.priority_levels, limits.default_priority_level) == ((4, 8), 2, 2)
    assert limits.default_queue_policy == QueuePolicy(5, 700, True)
    assert limits.queue_policies == {1: QueuePolicy(9, 0, False)}
    assert not limits.is_delay_adaptive
    plain = limits_for(_spec(tmp_path / "plain", 'platform: "onnxruntime_onnx"\nmax_batch_size: 2\n'))
    assert (plain.max_batch_size, plain.is_dynamic) == (2, False)
    assert not requires_gpu(_spec(tmp_path / "auto", 'platform: "onnxruntime_onnx"\n'))


def test_cascade_serving_and_batching_import_no_grpc() -> None:
    code = ("import sys, infergate.cascade.serving, infergate.batching.limits, infergate.server.dataplane; "
            "print(sorted(m for m in sys.modules if m == 'grpc' or m.endswith('grpc_service_pb2') "
            "or m == 'infergate.server.codec'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
