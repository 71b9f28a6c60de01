"""Feature hashing of str/bytes tokens (scikit-learn's FeatureHasher scheme) and its NumPy reference."""

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

from .errors import InputTypeError

logger = logging.getLogger(__name__)

MAX_FEATURES = 2**31 - 1  # widest hash space: indices are abs(int32) % n_features, as in scikit-learn
TOKENS_PER_BLOCK = 1 << 16  # tokens the NumPy reference hashes per vectorised block (bounds its padding matrix)
_C1, _C2, _C3 = np.uint32(0xCC9E2D51), np.uint32(0x1B873593), np.uint32(0xE6546B64)
_F1, _F2 = np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def murmurhash3_32_reference(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Signed MurmurHash3_x86_32 (seed 0) of each token data[starts[t]:ends[t]], vectorised over tokens."""
    out = np.empty(len(starts), dtype=np.int32)
    for first in range(0, len(starts), TOKENS_PER_BLOCK):
        block = slice(first, first + TOKENS_PER_BLOCK)
        out[block] = _murmur_block(data, starts[block], ends[block])
    return out


def _murmur_block(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    lengths = (ends - starts).astype(np.int64)
    n_words = int(lengths.max(initial=0)) // 4 + 1  # one spare word holds the tail bytes
    positions = np.arange(n_words * 4)
    inside = positions[None, :] < lengths[:, None]
    index = np.where(inside, starts[:, None] + positions[None, :], 0)
    padded = np.where(inside, data[index] if data.size else 0, 0).astype(np.uint8)  # bytes past the end read as 0
    words = np.ascontiguousarray(padded).view("<u4")
    n_blocks = lengths // 4
    h = np.zeros(len(starts), dtype=np.uint32)
    with np.errstate(over="ignore"):
        for b in range(int(n_blocks.max(initial=0))):
            k = _rotl(words[:, b] * _C1, 15) * _C2
            h = np.where(n_blocks > b, _rotl(h ^ k, 13) * np.uint32(5) + _C3, h)
        # The tail word holds the last length % 4 bytes and zeros above them, which is what the
        # reference's switch builds, so the tail needs no byte shuffling.
        tail = words[np.arange(len(starts)), n_blocks]
        h = np.where(lengths % 4 > 0, h ^ (_rotl(tail * _C1, 15) * _C2), h)
        h ^= lengths.astype(np.uint32)
        h ^= h >> np.uint32(16)
        h *= _F1
        h ^= h >> np.uint32(13)
        h *= _F2
        h ^= h >> np.uint32(16)
    return h.view(np.int32)


def hash_packed_reference(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, row_ptr: np.ndarray,
                          n_features: int, alternate_sign: bool, out: np.ndarray) -> None:
    """Add each token's signed count into out[row, index], index = abs(h) % n_features (FeatureHasher)."""
    h = murmurhash3_32_reference(data, starts, ends).astype(np.int64)
    # abs(INT32_MIN) overflows in int32; scikit-learn defines its index this way.
    index = np.where(h == -(2**31), (2**31 - 1 - (n_features - 1)) % n_features, np.abs(h) % n_features)
    value = np.where(h >= 0, 1.0, -1.0) if alternate_sign else np.ones(len(h))
    rows = np.repeat(np.arange(len(row_ptr) - 1), np.diff(row_ptr))
    np.add.at(out, (rows, index), value)


def pack_tokens(rows: Iterable[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows of str/bytes tokens -> (data uint8, starts, ends, row_ptr int64); str is encoded as UTF-8."""
    encoded: list[bytes] = []
    row_ptr = [0]
    for i, row in enumerate(rows):
        if isinstance(row, (str, bytes)):
            raise InputTypeError("each row must be a list of tokens, not a single string", i, -1, row)
        for t, token in enumerate(row):
            if isinstance(token, str):
                encoded.append(token.encode("utf-8"))
            elif isinstance(token, bytes):
                encoded.append(token)
            else:
                raise InputTypeError("tokens must be str or bytes", i, t, token)
        row_ptr.append(len(encoded))
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    ends = np.cumsum(lengths)
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    return data, ends - lengths, ends, np.array(row_ptr, dtype=np.int64)


def split_bytes_tensor_reference(raw: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> int:
    """Locate KServe v2 BYTES elements (uint32 LE length + bytes); -1 on success else the first bad index."""
    pos = 0
    for k in range(len(starts)):
        if pos + 4 > raw.size:
            return k
        length = int(raw[pos:pos + 4].view("<u4")[0])
        if pos + 4 + length > raw.size:
            return k
        starts[k], ends[k] = pos + 4, pos + 4 + length
        pos += 4 + length
    return -1 if pos == raw.size else len(starts)
