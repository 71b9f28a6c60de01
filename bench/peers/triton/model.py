"""A Triton python-backend model that runs <model name>.onnx from $ANCHOR_MODELS_DIR with onnxruntime.

Runs inside tritonserver's python-backend stub, in the venv that run.sh made, not in infergate's.
"""

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]  # only inside tritonserver's stub


class TritonPythonModel:
    """One onnxruntime session per model instance; every request of a dynamic batch in one run() call."""

    def initialize(self, args: dict[str, str]) -> None:
        name = json.loads(args["model_config"])["name"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("ORT_THREADS", "1"))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        path = os.path.join(os.environ["ANCHOR_MODELS_DIR"], f"{name}.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests: list[Any]) -> list[Any]:
        """Triton's dynamic batcher hands over a list of requests: concatenated, run once, split back."""
        inputs = [pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() for r in requests]
        batch = np.concatenate(inputs).astype(np.float32, copy=False)
        outputs = self.session.run(["OUTPUT0"], {"INPUT0": batch})[0]
        responses, start = [], 0
        for rows in (x.shape[0] for x in inputs):
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", outputs[start:start + rows])]))
            start += rows
        return responses
