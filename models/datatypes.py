"""Tensor datatypes: protocol names, config enum names, their NumPy dtypes, and BYTES on the wire."""

from __future__ import annotations

import struct

import numpy as np

# Protocol datatype name -> NumPy dtype. BYTES tensors hold Python bytes objects.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}

# Little-endian dtypes for decoding raw_input_contents (the protocol is little-endian).
WIRE_DTYPES: dict[str, np.dtype] = {
    name: (dt.newbyteorder("<") if dt.kind in "iuf" else dt) for name, dt in NUMPY_DTYPES.items()
}

# model_config.proto DataType enum name ("TYPE_FP32") -> protocol name ("FP32").
CONFIG_TO_PROTOCOL: dict[str, str] = {f"TYPE_{name}": name for name in NUMPY_DTYPES if name != "BYTES"}
CONFIG_TO_PROTOCOL["TYPE_STRING"] = "BYTES"

# InferTensorContents field per datatype, for tensors sent as typed `contents` instead of raw bytes.
CONTENTS_FIELDS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
BYTES_LENGTH = struct.Struct("<I")  # each BYTES element on the wire: 4-byte little-endian length, then data

_BY_NUMPY = {dt: name for name, dt in NUMPY_DTYPES.items()}


def protocol_name(dtype: np.dtype) -> str:
    """Returns the protocol datatype name of a NumPy dtype; raises KeyError if it has none."""
    if dtype.kind in ("S", "U", "O"):
        return "BYTES"
    return _BY_NUMPY[dtype.newbyteorder("=")]


def item_size(datatype: str) -> int:
    """Bytes per element on the wire; 0 for BYTES (variable length)."""
    return 0 if datatype == "BYTES" else NUMPY_DTYPES[datatype].itemsize


def zeros(shape: tuple[int, ...], datatype: str) -> np.ndarray:
    """A tensor of zeros of a protocol datatype (empty byte strings for BYTES): warm-up input."""
    dtype = NUMPY_DTYPES[datatype]
    return np.full(shape, b"", dtype=object) if dtype.kind == "O" else np.zeros(shape, dtype=dtype)


def encode_bytes(array: np.ndarray) -> bytes:
    """Serializes a BYTES tensor: each element as a 4-byte little-endian length + data."""
    parts = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(BYTES_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)
