"""Decodes ModelInferRequest tensors into NumPy views and encodes outputs into responses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from infergate.models.config import ModelSpec, TensorSpec
from infergate.models.datatypes import (
    BYTES_LENGTH,
    CONTENTS_FIELDS,
    NUMPY_DTYPES,
    WIRE_DTYPES,
    encode_bytes,
    protocol_name,
)
from infergate.models.errors import InvalidInput
from infergate.proto import grpc_service_pb2 as pb
from infergate.server.shared_memory import SharedMemoryRegions

# InferTensorContents field holding each datatype, for requests that use `contents`.
# Tensor parameters of the system_shared_memory extension.
SHM_REGION = "shared_memory_region"
SHM_OFFSET = "shared_memory_offset"
SHM_BYTE_SIZE = "shared_memory_byte_size"  # BYTES elements are serialized as a 4-byte little-endian length + data


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
    output_regions: dict[str, tuple[str, int, int]]  # output -> (shared memory region, offset, byte_size)


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


def decode_request(request: pb.ModelInferRequest, io: ModelIO,
                   regions: SharedMemoryRegions | None = None) -> DecodedRequest:
    """Validates the request against the model and returns its tensors (zero-copy where raw
    or in shared memory)."""
    spec = io.spec
    raw = request.raw_input_contents
    tensors = request.inputs
    in_shm = [bool(t.parameters) and SHM_REGION in t.parameters for t in tensors]
    expected_raw = len(tensors) - sum(in_shm)
    if raw and len(raw) != expected_raw:
        raise InvalidInput(
            f"request has {len(raw)} raw_input_contents for {expected_raw} inputs not in shared memory; "
            "expected one per input"
        )
    batched = spec.max_batch_size > 0
    inputs: dict[str, np.ndarray] = {}
    rows = -1
    raw_index = 0
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
        if in_shm[index]:
            region, offset, byte_size = _shm_params(f"input '{name}'", tensor.parameters)
            if regions is None:
                raise InvalidInput(f"input '{name}' is in shared memory, which this endpoint does not support")
            value = _from_raw(name, regions.view(f"input '{name}'", region, offset, byte_size),
                              expected.datatype, shape)
        elif raw:
            value = _from_raw(name, raw[raw_index], expected.datatype, shape)
            raw_index += 1
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
    names, output_regions = _requested_outputs(request, io)
    return DecodedRequest(inputs, max(rows, 1), names, _param_int(request, "priority"),
                          _param_int(request, "timeout"), output_regions)


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


def _from_raw(name: str, data: bytes | memoryview, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
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


def _decode_bytes(name: str, data: bytes | memoryview, count: int) -> np.ndarray:
    if isinstance(data, memoryview):
        data = data.tobytes()  # elements become bytes objects, so this copies anyway
    out = np.empty(count, dtype=object)
    offset, size = 0, len(data)
    for i in range(count):
        if offset + 4 > size:
            raise InvalidInput(f"input '{name}' BYTES raw_input_contents ends after {i} of {count} elements")
        (length,) = BYTES_LENGTH.unpack_from(data, offset)
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


def _shm_params(tensor: str, params: Mapping[str, pb.InferParameter]) -> tuple[str, int, int]:
    """(region, offset, byte_size) from a tensor's shared_memory_* parameters."""
    region = params[SHM_REGION].string_param
    if not region:
        raise InvalidInput(f"{tensor}: parameter '{SHM_REGION}' must name a registered region")
    sizes = []
    for key in (SHM_OFFSET, SHM_BYTE_SIZE):
        param = params.get(key)
        choice = param.WhichOneof("parameter_choice") if param is not None else None
        if param is None and key == SHM_OFFSET:
            sizes.append(0)
        elif param is not None and choice in ("int64_param", "uint64_param"):
            sizes.append(int(getattr(param, choice)))
        else:
            raise InvalidInput(f"{tensor}: parameter '{key}' must be an int64 or uint64, got {choice}")
    return region, sizes[0], sizes[1]


def _requested_outputs(request: pb.ModelInferRequest,
                       io: ModelIO) -> tuple[list[str], dict[str, tuple[str, int, int]]]:
    regions: dict[str, tuple[str, int, int]] = {}
    if not request.outputs:
        return io.output_names, regions
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
        if output.parameters and SHM_REGION in output.parameters:
            regions[output.name] = _shm_params(f"requested output '{output.name}'", output.parameters)
        names.append(output.name)
    return names, regions


def encode_response(spec: ModelSpec, version: str, request_id: str, outputs: Mapping[str, np.ndarray],
                    names: Sequence[str], output_regions: Mapping[str, tuple[str, int, int]] | None = None,
                    regions: SharedMemoryRegions | None = None) -> pb.ModelInferResponse:
    """Builds the response: one output tensor per name, data in raw_output_contents, or written
    into the client's shared-memory region (its raw_output_contents entry then stays empty, so
    the entries still line up with the outputs)."""
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
        tensor = response.outputs.add(name=name, datatype=datatype, shape=shape)
        if output_regions and name in output_regions:
            region, offset, byte_size = output_regions[name]
            assert regions is not None
            target = regions.view(f"requested output '{name}'", region, offset, byte_size)
            if len(data) > byte_size:
                raise InvalidInput(f"requested output '{name}' needs {len(data)} bytes, but its shared memory "
                                   f"byte_size is {byte_size}")
            target[:len(data)] = data
            tensor.parameters[SHM_REGION].string_param = region
            tensor.parameters[SHM_BYTE_SIZE].int64_param = len(data)
            data = b""
        response.raw_output_contents.append(data)
    return response
