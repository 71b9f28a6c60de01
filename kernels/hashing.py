"""Feature hashing of str/bytes tokens (scikit-learn's FeatureHasher scheme) and its NumPy reference."""

import logging
from collections.abc import Iterable
from itertools import chain
from typing import Any

import numpy as np

from .errors import InputTypeError

logger = logging.getLogger(__name__)

MAX_FEATURES = 2**31 - 1  # widest hash space: indices are abs(int32) % n_features, as in scikit-learn
TOKENS_PER_BLOCK = 1 << 16  # tokens the NumPy reference hashes per vectorised block (bounds its padding matrix)
# Joins ASCII tokens for packing: encoded as Latin-1 it is the single byte 0x80, which no ASCII token contains.
_ASCII_SEPARATOR = "\x80"

Packed = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # data uint8, starts, ends, row_ptr (int64)
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


def pack_tokens(rows: Iterable[Any]) -> Packed:
    """Rows of str/bytes tokens -> (data uint8, starts, ends, row_ptr int64); str is encoded as UTF-8."""
    if not isinstance(rows, (list, tuple)):
        rows = list(rows)
    packed = _pack_token_lists(rows)
    return packed if packed is not None else _pack_checked(rows)


def _pack_token_lists(rows: list[Any] | tuple[Any, ...]) -> Packed | None:
    """pack_tokens for the common case, in C-level joins rather than a Python loop per token; None if not it.

    The common case: every row a list or tuple, every token a str (or every token a bytes). ASCII
    tokens are joined with a 0x80 byte between them, which no ASCII token holds, so one vectorised scan
    finds every boundary; other text is encoded token by token. Anything else (mixed or bad tokens,
    bare strings, generators) returns None for _pack_checked, which names the offending token.
    """
    if not set(map(type, rows)) <= {list, tuple}:
        return None
    row_ptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, rows), dtype=np.int64, count=len(rows)), out=row_ptr[1:])
    n_tokens = int(row_ptr[-1])
    if n_tokens == 0:
        empty = np.zeros(0, dtype=np.int64)
        return np.zeros(0, dtype=np.uint8), empty, empty, row_ptr
    data: np.ndarray | None
    try:
        # Joined row by row (empty rows skipped): no flat list of every token is ever built.
        text = _ASCII_SEPARATOR.join(map(_ASCII_SEPARATOR.join, filter(None, rows)))
        data = np.frombuffer(text.encode("latin-1"), dtype=np.uint8)
    except (TypeError, UnicodeEncodeError):  # a token that is not str, or text beyond Latin-1
        data = None
    if data is not None:
        boundaries = np.flatnonzero(data >= 0x80)
        if len(boundaries) == n_tokens - 1:  # every byte >= 0x80 is a separator: all tokens are ASCII
            starts = np.concatenate(([0], boundaries + 1))
            ends = np.concatenate((boundaries, [len(data)]))
            return data, starts, ends, row_ptr
    tokens = list(chain.from_iterable(rows))
    if isinstance(tokens[0], str):
        try:
            encoded = list(map(str.encode, tokens))
        except (TypeError, UnicodeEncodeError):  # not all str; or a lone surrogate, raised again by the checker
            return None
    elif set(map(type, tokens)) == {bytes}:
        encoded = tokens
    else:
        return None
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    ends = np.cumsum(lengths)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), ends - lengths, ends, row_ptr


def _pack_checked(rows: Iterable[Any]) -> Packed:
    """pack_tokens one token at a time, raising InputTypeError at the first row or token of the wrong type."""
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
