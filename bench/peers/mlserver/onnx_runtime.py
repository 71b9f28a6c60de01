"""An MLServer custom runtime that serves an ONNX model with onnxruntime on the CPU.

Runs inside MLServer, in the venv that run.sh made, not in infergate's. Input INPUT0 FP32 [batch, 64],
output OUTPUT0 FP32 [batch, 10]. The file is parameters.uri of model-settings.json; parameters.extra may
set intra_op_num_threads and inter_op_num_threads (1 each by default).
"""

import os
from collections.abc import Callable
from typing import Any

import mlserver  # type: ignore[import-not-found]  # only in the MLServer venv
import numpy as np
import onnxruntime as ort
import prometheus_client
from mlserver import MLModel
from mlserver.codecs import NumpyCodec  # type: ignore[import-not-found]
from mlserver.types import InferenceRequest, InferenceResponse  # type: ignore[import-not-found]

ROWS_METRIC = "onnx_batch_rows"  # rows per onnxruntime run() call: the batch size adaptive batching formed
ROWS_HELP = "Rows per onnxruntime run() call (effective batch size)"
FEATURES = 64  # INPUT0's second dimension

# One histogram per process, under each model's labels: prometheus_client refuses a second registration of
# the name. It is kept in the module's namespace and set only once because MLServer runs this module again
# (importlib.reload, same namespace) for every model that names it: a plain `x = ...` here would drop the
# first model's histogram, and the second model's load would fail with DuplicateTimeseries.
HISTOGRAM_GLOBAL = "_rows_histogram"


def _rows_observer(model_name: str, model_version: str) -> Callable[[int], None]:
    """Where each batch's row count goes, so that the batch sizes MLServer formed can be read off /metrics."""
    # MLServer's custom-metrics API (mlserver.register/log) lands in its own registry, which /metrics only
    # exports with parallel workers (the multiprocess collector). In-process (parallel_workers=0) /metrics
    # serves prometheus_client's default registry, so the histogram goes there instead.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        mlserver.register(ROWS_METRIC, ROWS_HELP)
        return lambda rows: mlserver.log(**{ROWS_METRIC: rows})
    if HISTOGRAM_GLOBAL not in globals():
        globals()[HISTOGRAM_GLOBAL] = prometheus_client.Histogram(ROWS_METRIC, ROWS_HELP,
                                                                  ["model_name", "model_version"])
    histogram: prometheus_client.Histogram = globals()[HISTOGRAM_GLOBAL]
    return histogram.labels(model_name=model_name, model_version=model_version).observe


class OnnxModel(MLModel):  # type: ignore[misc]  # MLModel is untyped here (no mlserver in infergate's venv)
    """One onnxruntime session; MLServer's adaptive batching hands predict() the batched rows."""

    async def load(self) -> bool:
        params = self.settings.parameters
        extra: dict[str, Any] = params.extra or {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(extra.get("intra_op_num_threads", 1))
        options.inter_op_num_threads = int(extra.get("inter_op_num_threads", 1))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(params.uri, sess_options=options, providers=["CPUExecutionProvider"])
        self._input_name = self._session.get_inputs()[0].name
        self._output_names = [o.name for o in self._session.get_outputs()]
        self._observe_rows = _rows_observer(self.name, self.version or "")
        # One run before serving: onnxruntime allocates its buffers on the first call, not in the first request.
        self._session.run(self._output_names, {self._input_name: np.zeros((1, FEATURES), np.float32)})
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = next((NumpyCodec.decode_input(i) for i in payload.inputs if i.name == self._input_name), None)
        if x is None:
            raise ValueError(f"missing input {self._input_name}")
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, FEATURES)
        outputs = self._session.run(self._output_names, {self._input_name: x})
        self._observe_rows(x.shape[0])
        return InferenceResponse(
            model_name=self.name, model_version=self.version, id=payload.id,
            outputs=[NumpyCodec.encode_output(n, o) for n, o in zip(self._output_names, outputs, strict=True)])
