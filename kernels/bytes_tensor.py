"""Splits a serialized KServe v2 BYTES tensor (each element a uint32 little-endian length, then its bytes)."""

import logging
from collections.abc import Callable

import numpy as np

from .errors import KernelError
from .hashing import split_bytes_tensor_reference

logger = logging.getLogger(__name__)

LENGTH_PREFIX_BYTES = 4  # each element starts with its length as a uint32, little-endian
CHUNK_ELEMENTS = 65536  # elements located per kernel call: caps the starts/ends scratch at 1 MiB

Locate = Callable[[np.ndarray, np.ndarray, np.ndarray], int]

try:
    from ._cython_kernels import split_bytes_tensor as _compiled
except ImportError as error:  # an install without compiled kernels: the Python reference, same results
    logger.info("BYTES tensors split in Python: %s", error)
    LOCATE: Locate = split_bytes_tensor_reference
else:
    LOCATE = _compiled


class BytesTensorError(KernelError):
    """A BYTES payload that does not hold exactly the elements its shape declares."""

    def __init__(self, index: int, count: int, problem: str) -> None:
        self.index = index  # the first bad element, or count for bytes left over after the last
        self.count = count
        super().__init__(problem)


def split_bytes_elements(data: bytes, count: int, locate: Locate = LOCATE) -> np.ndarray:
    """The count elements of a serialized BYTES tensor, as a 1-D object array of bytes.

    Raises BytesTensorError for a length prefix that is cut off or runs past the end, too few
    elements, or bytes left over. Callers check len(data) >= 4 * count first, which also bounds
    what this allocates by the payload's size."""
    raw = np.frombuffer(data, dtype=np.uint8)
    out = np.empty(count, dtype=object)
    starts = np.empty(min(count, CHUNK_ELEMENTS), dtype=np.int64)
    ends = np.empty_like(starts)
    pos, done = 0, 0
    while True:
        k = min(count - done, CHUNK_ELEMENTS)
        # The kernel returns k, not -1, when raw[pos:] holds more than these k elements.
        failed = locate(raw[pos:], starts[:k], ends[:k])
        if 0 <= failed < k:
            raise _bad_element(data, done + failed, count, pos + (int(ends[failed - 1]) if failed else 0))
        out[done:done + k] = [data[pos + s:pos + e] for s, e in zip(starts[:k].tolist(), ends[:k].tolist())]
        done += k
        pos += int(ends[k - 1]) if k else 0
        if done == count:
            break
    if pos != len(data):
        raise BytesTensorError(count, count, f"BYTES data has {len(data) - pos} bytes left over after its "
                                             f"{count} elements")
    return out


def _bad_element(data: bytes, index: int, count: int, pos: int) -> BytesTensorError:
    """Why element `index`, whose length prefix would start at byte pos, does not fit in data."""
    remaining = len(data) - pos
    if remaining == 0:
        return BytesTensorError(index, count, f"BYTES data ends after {index} of {count} elements")
    if remaining < LENGTH_PREFIX_BYTES:
        return BytesTensorError(index, count, f"BYTES element {index} has only {remaining} of the 4 bytes of "
                                              f"its length prefix (at byte {pos})")
    length = int.from_bytes(data[pos:pos + LENGTH_PREFIX_BYTES], "little")
    return BytesTensorError(index, count, f"BYTES element {index} declares {length} bytes, but only "
                                          f"{remaining - LENGTH_PREFIX_BYTES} remain")
