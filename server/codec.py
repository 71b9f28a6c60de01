"""Decodes ModelInferRequest tensors into NumPy views and encodes outputs into responses."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np

from infergate.kernels.bytes_tensor import LENGTH_PREFIX_BYTES, BytesTensorError, split_bytes_elements
from infergate.models.config import ModelSpec, TensorSpec
from infergate.models.datatypes import (
    CONTENTS_FIELDS,
    NUMPY_DTYPES,
    WIRE_DTYPES,
    encode_bytes,
    protocol_name,
)
from infergate.models.errors import InvalidInput, TooLarge
from infergate.proto import grpc_service_pb2 as pb
from infergate.server.dataplane import DecodedRequest, ModelIO
from infergate.server.shared_memory import SharedMemoryRegions

logger = logging.getLogger(__name__)

# Tensor parameters of the system_shared_memory extension.
SHM_REGION = "shared_memory_region"
SHM_OFFSET = "shared_memory_offset"
SHM_BYTE_SIZE = "shared_memory_byte_size"
# Limits on what a request may declare, checked before anything is allocated for it.
MAX_RANK = 32  # dimensions of one tensor (NumPy 1.x's NPY_MAXDIMS); no model we serve has more
MAX_ELEMENTS = 2**32  # elements of one tensor, and so of any one dimension (a 0 dim must not hide a huge one)
MAX_REQUEST_BYTES = 2**31  # decoded input bytes of one request (2 GiB, gRPC's own message ceiling)
INT64_MAX = 2**63 - 1  # largest integer request parameter (priority, timeout in us)
# NumPy dtype of each InferTensorContents field, before narrowing to the tensor's datatype.
CONTENTS_DTYPES = {
    "bool_contents": np.dtype(np.bool_), "int_contents": np.dtype(np.int32), "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32), "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32), "fp64_contents": np.dtype(np.float64),
}


def _param_int(request: pb.ModelInferRequest, key: str) -> int:
    if key not in request.parameters:
        return 0
    param = request.parameters[key]
    choice = param.WhichOneof("parameter_choice")
    if choice in ("int64_param", "uint64_param"):
        value = int(getattr(param, choice))
        if not 0 <= value <= INT64_MAX:
            raise InvalidInput(f"parameter '{key}' is {value}, expected an integer in 0..{INT64_MAX}")
        return value
    raise InvalidInput(f"parameter '{key}' is a {choice}, expected an int64 or uint64 parameter")


def decode_request(request: pb.ModelInferRequest, io: ModelIO,
                   regions: SharedMemoryRegions | None = None) -> DecodedRequest:
    """Validates the request against the model and returns its tensors (zero-copy where raw).

    Every shape is checked against the limits and its payload before anything is allocated."""
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
    budget = _Budget()
    for index, tensor in enumerate(tensors):
        name = tensor.name
        expected = io.inputs.get(name)
        if expected is None:
            raise InvalidInput(f"input '{name}' is not an input of model '{spec.name}' (expected one of {io.expected})")
        if name in inputs:
            raise InvalidInput(f"input '{name}' appears more than once in the request")
        if tensor.datatype != expected.datatype:
            raise InvalidInput(f"input '{name}' has datatype {tensor.datatype}, expected {expected.datatype}")
        shape = _check_shape(name, tensor.shape, expected, spec)
        if (in_shm[index] or raw) and tensor.HasField("contents") and tensor.contents.ListFields():
            where = "shared memory" if in_shm[index] else "raw_input_contents"
            raise InvalidInput(f"input '{name}' has contents, but the request sends it in {where}; expected one "
                               "or the other")
        if in_shm[index]:
            region, offset, byte_size = _shm_params(f"input '{name}'", tensor.parameters)
            if regions is None:
                raise InvalidInput(f"input '{name}' is in shared memory, which this endpoint does not support")
            regions.check(f"input '{name}'", region, offset, byte_size)
            _check_payload(name, byte_size, expected.datatype, shape, "shared memory byte_size")
            budget.take(name, byte_size)
            value = _from_raw(name, regions.read(f"input '{name}'", region, offset, byte_size),
                              expected.datatype, shape)
        elif raw:
            data = raw[raw_index]
            _check_payload(name, len(data), expected.datatype, shape, "raw_input_contents")
            budget.take(name, len(data))
            value = _from_raw(name, data, expected.datatype, shape)
            raw_index += 1
        else:
            value = _from_contents(name, tensor, expected.datatype, shape, budget)
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
    names, output_regions = _requested_outputs(request, io, regions)
    return DecodedRequest(inputs, max(rows, 1), names, _param_int(request, "priority"),
                          _param_int(request, "timeout"), output_regions)


class _Budget:
    """The decoded bytes a request may still take (MAX_REQUEST_BYTES in all)."""

    __slots__ = ("used",)

    def __init__(self) -> None:
        self.used = 0

    def take(self, name: str, n_bytes: int) -> None:
        self.used += n_bytes
        if self.used > MAX_REQUEST_BYTES:
            raise TooLarge(f"the request's input data, up to and including input '{name}',", self.used,
                           MAX_REQUEST_BYTES, "bytes")


def _check_shape(name: str, dims: Sequence[int], expected: TensorSpec, spec: ModelSpec) -> tuple[int, ...]:
    """The declared shape as a tuple, once it is within the limits and matches the model."""
    if len(dims) > MAX_RANK:
        raise InvalidInput(f"input '{name}' shape has {len(dims)} dimensions, above the limit of {MAX_RANK}")
    shape = tuple(dims)
    if shape and (min(shape) < 0 or max(shape) > MAX_ELEMENTS):  # min/max in C: the common case pays little
        axis, dim = next((axis, dim) for axis, dim in enumerate(shape) if not 0 <= dim <= MAX_ELEMENTS)
        raise InvalidInput(f"input '{name}' shape[{axis}] is {dim}, expected a dimension in 0..{MAX_ELEMENTS}")
    batched = spec.max_batch_size > 0
    row_shape = shape[1:] if batched else shape
    if (batched and not shape) or (row_shape != expected.dims and (
            len(row_shape) != len(expected.dims) or any(d != -1 and d != s for d, s in zip(expected.dims, row_shape)))):
        raise InvalidInput(
            f"input '{name}' has shape {list(shape)}, expected {expected.full_shape(spec.max_batch_size)}"
        )
    if batched and shape[0] > spec.max_batch_size:
        raise InvalidInput(
            f"input '{name}' has batch size {shape[0]}, above max_batch_size {spec.max_batch_size} of model "
            f"'{spec.name}'"
        )
    count = _element_count(shape)
    if count > MAX_ELEMENTS:
        raise InvalidInput(f"input '{name}' shape {list(shape)} has {count} elements, above the limit of "
                           f"{MAX_ELEMENTS} per tensor")
    return shape


def _element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _check_payload(name: str, n_bytes: int, datatype: str, shape: tuple[int, ...], where: str) -> None:
    """The payload must hold the shape exactly (BYTES: at least a length prefix per element)."""
    count = _element_count(shape)
    if datatype == "BYTES":
        if n_bytes < count * LENGTH_PREFIX_BYTES:
            raise InvalidInput(
                f"input '{name}' {where} has {n_bytes} bytes, too few for the {count} elements of shape "
                f"{list(shape)}: each BYTES element needs at least its {LENGTH_PREFIX_BYTES}-byte length prefix"
            )
        return
    expected = count * WIRE_DTYPES[datatype].itemsize
    if n_bytes != expected:
        raise InvalidInput(
            f"input '{name}' {where} has {n_bytes} bytes, expected {expected} for shape {list(shape)} and "
            f"datatype {datatype}"
        )


def _from_raw(name: str, data: bytes, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """The tensor in data, which _check_payload has sized against shape."""
    if datatype == "BYTES":
        try:
            return split_bytes_elements(data, _element_count(shape)).reshape(shape)
        except BytesTensorError as error:
            raise InvalidInput(f"input '{name}' {error.message}") from None
    # A read-only view over the request's bytes: no copy until the batch is assembled.
    return np.frombuffer(data, dtype=WIRE_DTYPES[datatype]).reshape(shape)


def _from_contents(name: str, tensor: pb.ModelInferRequest.InferInputTensor, datatype: str,
                   shape: tuple[int, ...], budget: _Budget) -> np.ndarray:
    field_name = CONTENTS_FIELDS.get(datatype)
    if field_name is None:
        raise InvalidInput(f"input '{name}' has datatype {datatype}, which must be sent in raw_input_contents")
    others = [f.name for f, _ in tensor.contents.ListFields() if f.name != field_name]
    if others:
        raise InvalidInput(f"input '{name}' has datatype {datatype}, whose contents go in contents.{field_name}, "
                           f"but the request fills contents.{others[0]}")
    values = getattr(tensor.contents, field_name)
    count = _element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}' contents.{field_name} has {len(values)} elements, expected {count} for shape "
            f"{list(shape)}"
        )
    if datatype == "BYTES":
        budget.take(name, sum(map(len, values)) + count * LENGTH_PREFIX_BYTES)
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    dtype = NUMPY_DTYPES[datatype]
    budget.take(name, count * dtype.itemsize)
    wide = np.asarray(values, dtype=CONTENTS_DTYPES[field_name])
    if dtype.kind in "iu" and dtype.itemsize < wide.dtype.itemsize and count:
        info = np.iinfo(dtype)
        bad = np.flatnonzero((wide < info.min) | (wide > info.max))
        if bad.size:
            raise InvalidInput(f"input '{name}' contents.{field_name}[{bad[0]}] is {wide[bad[0]]}, outside the "
                               f"range of {datatype} ({info.min}..{info.max})")
    return wide.astype(dtype, copy=False).reshape(shape)


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


def _requested_outputs(request: pb.ModelInferRequest, io: ModelIO, regions: SharedMemoryRegions | None
                       ) -> tuple[list[str], dict[str, tuple[str, int, int]]]:
    output_regions: dict[str, tuple[str, int, int]] = {}
    if not request.outputs:
        return io.output_names, output_regions
    names: list[str] = []
    for output in request.outputs:
        if output.name not in io.outputs:
            raise InvalidInput(
                f"requested output '{output.name}' is not an output of model '{io.spec.name}' "
                f"(expected one of {sorted(io.outputs)})"
            )
        if output.name in names:
            raise InvalidInput(f"requested output '{output.name}' appears more than once in the request")
        if "classification" in output.parameters:
            raise InvalidInput(f"requested output '{output.name}' asks for classification, which infergate "
                               "does not support; request the raw output")
        if output.parameters and SHM_REGION in output.parameters:
            tensor = f"requested output '{output.name}'"
            place = _shm_params(tensor, output.parameters)
            if regions is None:
                raise InvalidInput(f"{tensor} is in shared memory, which this endpoint does not support")
            regions.prepare_output(tensor, *place)  # bounds and a writable descriptor, before the model runs
            output_regions[output.name] = place
        names.append(output.name)
    return names, output_regions


def encode_response(spec: ModelSpec, version: str, request_id: str, outputs: Mapping[str, np.ndarray],
                    names: Sequence[str], output_regions: Mapping[str, tuple[str, int, int]] | None = None,
                    regions: SharedMemoryRegions | None = None,
                    parameters: Mapping[str, str | int] | None = None) -> pb.ModelInferResponse:
    """Builds the response: one output tensor per name, data in raw_output_contents, or written
    into the client's shared-memory region (its raw_output_contents entry then stays empty, so
    the entries still line up with the outputs); `parameters` become response parameters."""
    response = pb.ModelInferResponse(model_name=spec.name, model_version=version, id=request_id)
    if parameters:
        for key, param in parameters.items():
            if isinstance(param, str):
                response.parameters[key].string_param = param
            else:
                response.parameters[key].int64_param = param
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
            if len(data) > byte_size:
                raise InvalidInput(f"requested output '{name}' needs {len(data)} bytes, but its shared memory "
                                   f"byte_size is {byte_size}")
            regions.write(f"requested output '{name}'", region, offset, data)
            tensor.parameters[SHM_REGION].string_param = region
            tensor.parameters[SHM_BYTE_SIZE].int64_param = len(data)
            data = b""
        response.raw_output_contents.append(data)
    return response
