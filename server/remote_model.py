"""A model on a running server, as the offline commands run it (`--target HOST:PORT`): grpcio and infergate's stubs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf.message import Message

from infergate.cascade.errors import CascadeError
from infergate.cascade.offline import StageCost, full_batch
from infergate.models.config import TensorSpec, tensor_specs
from infergate.models.datatypes import WIRE_DTYPES
from infergate.proto import grpc_service_pb2 as pb
from infergate.server.telemetry.cost import cpu_cores, device_price, model_price

logger = logging.getLogger(__name__)

SERVICE = "/inference.GRPCInferenceService/"
CALL_TIMEOUT_S = 60.0  # per RPC: a full batch of a large model on a busy server stays far inside this
TIMED_BATCHES = 7  # full batches sent while the server's statistics measure their compute time
MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # large batches of wide outputs come back in one message

_Reply = TypeVar("_Reply", bound=Message)


class TargetUnreachable(RuntimeError):
    """The server at --target did not answer; the message names the address and the gRPC status."""


class RemoteModel:
    """One model version served at `target`, predicting with ModelInfer in batches of its max_batch_size."""

    def __init__(self, target: str, name: str, version: int | None, cpu_core_usd_per_hour: float) -> None:
        self.target, self.name = target, name
        self._channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length",
                                                                MAX_MESSAGE_BYTES),
                                                               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        self._request_version = "" if version is None else str(version)
        self._cpu_core_usd_per_hour = cpu_core_usd_per_hour
        metadata = self._call("ModelMetadata", pb.ModelMetadataRequest(name=name, version=self._request_version),
                              pb.ModelMetadataResponse)
        config = self._call("ModelConfig", pb.ModelConfigRequest(name=name, version=self._request_version),
                            pb.ModelConfigResponse).config
        self.version = str(version) if version is not None else max(metadata.versions, key=int, default="1")
        self.max_batch_size = int(config.max_batch_size)
        if self.max_batch_size < 1:
            raise CascadeError(f"model {name!r} at {target} has max_batch_size {self.max_batch_size}, expected a "
                               "model that batches (>= 1)")
        self.inputs = _specs(metadata.inputs)
        self.outputs = tensor_specs(list(config.output), "output", name) or _specs(metadata.outputs)
        self.parameters = {key: value.string_value for key, value in config.parameters.items()}

    def predict(self, inputs: Mapping[str, npt.NDArray[Any]], output_names: Sequence[str]) -> dict[str, Any]:
        rows = len(next(iter(inputs.values())))
        parts = [self._infer({k: v[start:start + self.max_batch_size] for k, v in inputs.items()}, output_names)
                 for start in range(0, rows, self.max_batch_size)]
        return {name: np.concatenate([part[name] for part in parts]) for name in output_names}

    def cost(self, inputs: Mapping[str, npt.NDArray[Any]]) -> StageCost:
        """Compute time the server's ModelStatistics recorded for full batches sent now, at a CPU core's price."""
        batch = full_batch(inputs, self.max_batch_size)
        names = [t.name for t in self.outputs]
        self._infer(batch, names)  # a warm-up, outside the measured difference
        before = self._compute()
        for _ in range(TIMED_BATCHES):
            self._infer(batch, names)
        infer_ns, rows = (now - then for now, then in zip(self._compute(), before))
        if rows <= 0:
            raise TargetUnreachable(f"{self.target}: ModelStatistics of {self.name!r} counted no inference while "
                                    f"{TIMED_BATCHES} batches ran, expected their rows")
        price = model_price(self.name, self.parameters,
                            device_price("cpu", cpu_cores(self.parameters), self._cpu_core_usd_per_hour, None))
        busy_s_per_row = infer_ns / rows / 1e9
        return StageCost(busy_s_per_row * price.usd_per_hour / 3600.0,
                         f"server statistics at {self.target}: {busy_s_per_row * 1e6:.3g} us compute_infer per row "
                         f"over {rows} rows x {price.usd_per_hour:g} USD/h ({price.source}; the device is not "
                         "reported over gRPC, so a CPU price is assumed)")

    def close(self) -> None:
        self._channel.close()

    def _infer(self, inputs: Mapping[str, npt.NDArray[Any]], output_names: Sequence[str]) -> dict[str, Any]:
        request = pb.ModelInferRequest(model_name=self.name, model_version=self._request_version)
        for tensor in self.inputs:
            value = np.ascontiguousarray(inputs[tensor.name], dtype=WIRE_DTYPES[tensor.datatype])
            request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(value.shape))
            request.raw_input_contents.append(value.tobytes())
        for name in output_names:
            request.outputs.add(name=name)
        reply = self._call("ModelInfer", request, pb.ModelInferResponse)
        return {out.name: np.frombuffer(raw, dtype=WIRE_DTYPES[out.datatype]).reshape(tuple(out.shape))
                for out, raw in zip(reply.outputs, reply.raw_output_contents)}

    def _compute(self) -> tuple[int, int]:
        """(compute_infer ns summed over batches, rows computed) of this model version, so far."""
        reply = self._call("ModelStatistics", pb.ModelStatisticsRequest(name=self.name, version=self.version),
                           pb.ModelStatisticsResponse)
        infer_ns = sum(b.compute_infer.ns for s in reply.model_stats for b in s.batch_stats)
        return infer_ns, sum(s.inference_count for s in reply.model_stats)

    def _call(self, method: str, request: Message, reply_type: type[_Reply]) -> _Reply:
        call: Callable[..., _Reply] = self._channel.unary_unary(
            SERVICE + method, request_serializer=type(request).SerializeToString,
            response_deserializer=reply_type.FromString)
        try:
            return call(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()  # type: ignore[attr-defined]
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise TargetUnreachable(f"--target {self.target}: {method} failed with {code.name} ({details}); "
                                        "expected a running infergate or Triton server") from None
            raise CascadeError(f"--target {self.target}: {method} of model {self.name!r} failed with {code.name}: "
                               f"{details}") from None


def _specs(tensors: Sequence[pb.ModelMetadataResponse.TensorMetadata]) -> list[TensorSpec]:
    """Row specs from metadata shapes, which carry a leading -1 batch dimension for batching models."""
    return [TensorSpec(t.name, t.datatype, tuple(int(d) for d in t.shape[1:])) for t in tensors]
