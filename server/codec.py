"""Decodes ModelInferRequest tensors into NumPy views and encodes outputs into responses."""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from infergate.models.config import ModelSpec, TensorSpec
from infergate.models.datatypes import NUMPY_DTYPES, WIRE_DTYPES, protocol_name
from infergate.models.errors import InvalidInput
from infergate.proto import grpc_service_pb2 as pb

# InferTensorContents field holding each datatype, for requests that use `contents`.
CONTENTS_FIELDS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
_LENGTH = struct.Struct("<I")  # BYTES elements are serialized as a 4-byte little-endian length + data


@dataclass(slots=True)
class ModelIO:
    """Per-model lookup tables for the request path, built once at load."""

    spec: ModelSpec
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    output_names: list[str]
    required_inputs: list[str]
    expected: str = field(default="")  # "['INPUT0', ...]" for error messages

    @classmethod
    def of(cls, spec: ModelSpec) -> ModelIO:
        inputs = {t.name: t for t in spec.inputs}
        return cls(spec, inputs, {t.name: t for t in spec.outputs}, [t.name for t in spec.outputs],
                   [t.name for t in spec.inputs if not t.optional], str(sorted(inputs)))


@dataclass(slots=True)
class DecodedRequest:
    inputs: dict[str, np.ndarray]
    rows: int  # batch size of this request (1 for a model that does not batch)
    output_names: list[str]
    priority: int
    timeout_us: int


def _param_int(request: pb.ModelInferRequest, key: str) -> int:
    if key not in request.parameters:
        return 0
    param = request.parameters[key]
    choice = param.WhichOneof("parameter_choice")
    if choice in ("int64_param", "uint64_param"):
        value = int(getattr(param, choice))
        if value < 0:
            raise InvalidInput(f"parameter '{key}' is {value}, expected a non-negative integer")
        return value
    raise InvalidInput(f"parameter '{key}' is a {choice}, expected an int64 or uint64 parameter")


def decode_request(request: pb.ModelInferRequest, io: ModelIO) -> DecodedRequest:
    """Validates the request against the model and returns its tensors (zero-copy where raw)."""
    spec = io.spec
    raw = request.raw_input_contents
    tensors = request.inputs
    if raw and len(raw) != len(tensors):
        raise InvalidInput(
            f"request has {len(raw)} raw_input_contents for {len(tensors)} inputs; expected one per input"
        )
    batched = spec.max_batch_size > 0
    inputs: dict[str, np.ndarray] = {}
    rows = -1
    for index, tensor in enumerate(tensors):
        name = tensor.name
        expected = io.inputs.get(name)
        if expected is None:
            raise InvalidInput(f"input '{name}' is not an input of model '{spec.name}' (expected one of {io.expected})")
        if name in inputs:
            raise InvalidInput(f"input '{name}' appears more than once in the request")
        if tensor.datatype != expected.datatype:
            raise InvalidInput(f"input '{name}' has datatype {tensor.datatype}, expected {expected.datatype}")
        shape = tuple(tensor.shape)
        _check_shape(name, shape, expected, spec)
        if raw:
            value = _from_raw(name, raw[index], expected.datatype, shape)
        else:
            value = _from_contents(name, tensor, expected.datatype, shape)
        if batched:
            if rows == -1:
                rows = shape[0]
            elif shape[0] != rows:
                raise InvalidInput(f"input '{name}' has batch size {shape[0]}, but other inputs have {rows}; "
                                   "all inputs must have the same batch size")
        if expected.reshape is not None:
            value = value.reshape((shape[:1] if batched else ()) + expected.reshape)
        inputs[name] = value
    for name in io.required_inputs:
        if name not in inputs:
            raise InvalidInput(f"model '{spec.name}' expects input '{name}', which the request does not have")
    if batched and rows == 0:
        raise InvalidInput(f"request has batch size 0; expected 1..{spec.max_batch_size} rows")
    return DecodedRequest(inputs, max(rows, 1), _requested_outputs(request, io),
                          _param_int(request, "priority"), _param_int(request, "timeout"))


def _check_shape(name: str, shape: tuple[int, ...], expected: TensorSpec, spec: ModelSpec) -> None:
    dims = expected.dims
    batched = spec.max_batch_size > 0
    row_shape = shape[1:] if batched else shape
    if len(row_shape) != len(dims) or any(d != -1 and d != s for d, s in zip(dims, row_shape)) or (
        batched and not shape
    ) or any(s < 0 for s in shape):
        raise InvalidInput(
            f"input '{name}' has shape {list(shape)}, expected {expected.full_shape(spec.max_batch_size)}"
        )
    if batched and shape[0] > spec.max_batch_size:
        raise InvalidInput(
            f"input '{name}' has batch size {shape[0]}, above max_batch_size {spec.max_batch_size} of model "
            f"'{spec.name}'"
        )


def _element_count(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _from_raw(name: str, data: bytes, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    count = _element_count(shape)
    if datatype == "BYTES":
        return _decode_bytes(name, data, count).reshape(shape)
    dtype = WIRE_DTYPES[datatype]
    if len(data) != count * dtype.itemsize:
        raise InvalidInput(
            f"input '{name}' raw_input_contents has {len(data)} bytes, expected {count * dtype.itemsize} "
            f"for shape {list(shape)} and datatype {datatype}"
        )
    # A read-only view over the request's bytes: no copy until the batch is assembled.
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _decode_bytes(name: str, data: bytes, count: int) -> np.ndarray:
    out = np.empty(count, dtype=object)
    offset, size = 0, len(data)
    for i in range(count):
        if offset + 4 > size:
            raise InvalidInput(f"input '{name}' BYTES raw_input_contents ends after {i} of {count} elements")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += 4
        if offset + length > size:
            raise InvalidInput(
                f"input '{name}' BYTES element {i} declares {length} bytes, but only {size - offset} remain"
            )
        out[i] = data[offset:offset + length]
        offset += length
    if offset != size:
        raise InvalidInput(
            f"input '{name}' BYTES raw_input_contents has {size - offset} bytes left over after {count} elements"
        )
    return out


def _from_contents(name: str, tensor: pb.ModelInferRequest.InferInputTensor, datatype: str,
                   shape: tuple[int, ...]) -> np.ndarray:
    field_name = CONTENTS_FIELDS.get(datatype)
    if field_name is None:
        raise InvalidInput(f"input '{name}' has datatype {datatype}, which must be sent in raw_input_contents")
    values = getattr(tensor.contents, field_name)
    count = _element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}' contents.{field_name} has {len(values)} elements, expected {count} for shape "
            f"{list(shape)}"
        )
    dtype = NUMPY_DTYPES[datatype]
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    return np.asarray(values, dtype=dtype).reshape(shape)


def _requested_outputs(request: pb.ModelInferRequest, io: ModelIO) -> list[str]:
    if not request.outputs:
        return io.output_names
    names = []
    for output in request.outputs:
        if output.name not in io.outputs:
            raise InvalidInput(
                f"requested output '{output.name}' is not an output of model '{io.spec.name}' "
                f"(expected one of {sorted(io.outputs)})"
            )
        if "classification" in output.parameters:
            raise InvalidInput(f"requested output '{output.name}' asks for classification, which infergate "
                               "does not support; request the raw output")
        names.append(output.name)
    return names


def encode_bytes(array: np.ndarray) -> bytes:
    """Serializes a BYTES tensor: each element as a 4-byte little-endian length + data."""
    parts = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def encode_response(spec: ModelSpec, version: str, request_id: str, outputs: Mapping[str, np.ndarray],
                    names: Sequence[str]) -> pb.ModelInferResponse:
    """Builds the response: one output tensor per name, data in raw_output_contents."""
    response = pb.ModelInferResponse(model_name=spec.name, model_version=version, id=request_id)
    batched = spec.max_batch_size > 0
    for name in names:
        value = outputs[name]
        datatype = protocol_name(value.dtype)
        if datatype == "BYTES":
            data = encode_bytes(value)
        else:
            # Copy out once; the little-endian view is free on every platform we target.
            data = value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes()
        shape = value.shape if batched or value.ndim else ()
        response.outputs.add(name=name, datatype=datatype, shape=shape)
        response.raw_output_contents.append(data)
    return response
