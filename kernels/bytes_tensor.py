"""Splits a serialized KServe v2 BYTES tensor (each element a uint32 little-endian length, then its bytes)."""

import logging
from collections.abc import Callable

import numpy as np

from .errors import KernelError

logger = logging.getLogger(__name__)

LENGTH_PREFIX_BYTES = 4  # each element starts with its length as a uint32, little-endian

# (raw uint8 payload, object array to fill) -> (first bad element or -1, where its prefix starts)
Split = Callable[[np.ndarray, np.ndarray], tuple[int, int]]


def split_bytes_objects_reference(raw: np.ndarray, out: np.ndarray) -> tuple[int, int]:
    """The Python reference of _cython_kernels.split_bytes_objects: same contract, same results."""
    data, pos, count = raw.tobytes(), 0, len(out)
    for k in range(count):
        if pos + LENGTH_PREFIX_BYTES > len(data):
            return k, pos
        length = int.from_bytes(data[pos:pos + LENGTH_PREFIX_BYTES], "little")
        start = pos + LENGTH_PREFIX_BYTES
        if start + length > len(data):
            return k, pos
        out[k] = data[start:start + length]
        pos = start + length
    return (-1, pos) if pos == len(data) else (count, pos)


try:
    from ._cython_kernels import split_bytes_objects as _compiled
except ImportError as error:  # an install without compiled kernels (or an older build): the reference
    logger.info("BYTES tensors split in Python: %s", error)
    SPLIT: Split = split_bytes_objects_reference
else:
    SPLIT = _compiled


class BytesTensorError(KernelError):
    """A BYTES payload that does not hold exactly the elements its shape declares."""

    def __init__(self, index: int, count: int, problem: str) -> None:
        self.index = index  # the first bad element, or count for bytes left over after the last
        self.count = count
        super().__init__(problem)


def split_bytes_elements(data: bytes, count: int, split: Split = SPLIT) -> np.ndarray:
    """The count elements of a serialized BYTES tensor, as a 1-D object array of bytes.

    Raises BytesTensorError for a length prefix that is cut off or runs past the end, too few
    elements, or bytes left over. Callers check len(data) >= 4 * count first, which bounds the
    object array by the payload's size."""
    out = np.empty(count, dtype=object)
    failed, pos = split(np.frombuffer(data, dtype=np.uint8), out)
    if failed < 0:
        return out
    if failed == count:
        raise BytesTensorError(count, count, f"BYTES data has {len(data) - pos} bytes left over after its "
                                             f"{count} elements")
    remaining = len(data) - pos
    if remaining == 0:
        raise BytesTensorError(failed, count, f"BYTES data ends after {failed} of {count} elements")
    if remaining < LENGTH_PREFIX_BYTES:
        raise BytesTensorError(failed, count, f"BYTES element {failed} has only {remaining} of the 4 bytes of "
                                              f"its length prefix (at byte {pos})")
    length = int.from_bytes(data[pos:pos + LENGTH_PREFIX_BYTES], "little")
    raise BytesTensorError(failed, count, f"BYTES element {failed} declares {length} bytes, but only "
                                          f"{remaining - LENGTH_PREFIX_BYTES} remain")
