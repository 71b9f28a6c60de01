"""A small repository for the telemetry tests: priced models and a model with a drift profile."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelgen import classifier, write

CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "INPUT0", data_type: TYPE_FP32, dims: [ 16 ] }} ]
output [ {{ name: "PROBS", data_type: TYPE_FP32, dims: [ 4 ] }},
          {{ name: "LOGITS", data_type: TYPE_FP32, dims: [ 4 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 500 }}
{parameters}
"""


def price_parameter(value: str) -> str:
    return f'parameters {{ key: "price_usd_per_hour" value: {{ string_value: "{value}" }} }}'


@pytest.fixture(scope="session")
def telemetry_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("telemetry-repo")
    for name, parameters in (("priced", price_parameter("7.2")), ("bad_price", price_parameter("lots")),
                             ("plain", ""), ("drifting", "")):
        classifier(root / name / "1/model.onnx")
        write(root / name / "config.pbtxt", CONFIG.format(parameters=parameters))
    return root
