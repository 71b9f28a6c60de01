"""Feature hashing is bit-identical to scikit-learn's FeatureHasher and murmurhash3_32 on every backend."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.feature_extraction import FeatureHasher
from sklearn.utils import murmurhash3_32

from infergate import kernels as K
from infergate.kernels.hashing import _pack_checked, murmurhash3_32_reference, pack_tokens

tokens = st.one_of(st.text(max_size=12), st.binary(max_size=12))


@pytest.mark.parametrize("backend", K.available_backends())
@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.lists(tokens, max_size=6), min_size=1, max_size=6),
       n_features=st.sampled_from([1, 2, 7, 64, 2**20]), alternate_sign=st.booleans())
def test_matches_feature_hasher(backend: str, rows: list, n_features: int, alternate_sign: bool) -> None:
    expected = FeatureHasher(n_features, input_type="string", alternate_sign=alternate_sign).transform(rows)
    hasher = K.TokenHasher(n_features, alternate_sign=alternate_sign, output_dtype="float64", backend=backend)
    got = hasher.transform(rows)
    dense = expected.toarray()
    np.testing.assert_array_equal(got, dense)
    np.testing.assert_array_equal(hasher.transform_packed(*pack_tokens(rows)), dense)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.binary(max_size=40), min_size=1, max_size=20))
def test_murmurhash_reference(values: list) -> None:
    data, starts, ends, _ = pack_tokens([values])
    expected = [murmurhash3_32(v, seed=0) for v in values]
    np.testing.assert_array_equal(murmurhash3_32_reference(data, starts, ends), expected)


def token_bytes(packed: tuple) -> tuple[list[bytes], list[int]]:
    data, starts, ends, row_ptr = packed
    return [bytes(data[s:e]) for s, e in zip(starts, ends)], list(row_ptr)


@settings(max_examples=150, deadline=None)
@given(rows=st.one_of(
    st.lists(st.lists(st.text(alphabet=st.characters(max_codepoint=0x7f), max_size=8), max_size=6), max_size=6),
    st.lists(st.lists(st.text(max_size=8), max_size=6), max_size=6),
    st.lists(st.lists(st.binary(max_size=8), max_size=6), max_size=6),
    st.lists(st.lists(st.one_of(tokens, st.sampled_from(["", "\x80", "\u00e9", "a\x80b"])), max_size=6), max_size=6)),
    as_tuples=st.booleans())
def test_pack_tokens_equals_token_by_token(rows: list, as_tuples: bool) -> None:
    # ASCII-only, any text, bytes-only and mixed rows: the joined fast path (or its fallback) packs as the checker.
    if as_tuples:
        rows = [tuple(row) for row in rows]
    assert token_bytes(pack_tokens(rows)) == token_bytes(_pack_checked(rows))
    assert token_bytes(pack_tokens(iter(rows))) == token_bytes(_pack_checked(rows))


@pytest.mark.parametrize("backend", K.available_backends())
def test_bad_tokens_and_width(backend: str) -> None:
    hasher = K.TokenHasher(8, backend=backend)
    with pytest.raises(K.InputTypeError, match="tokens must be str or bytes at row 1, column 0: 3"):
        hasher.transform([["a"], [3]])
    with pytest.raises(K.InputTypeError, match="not a single string"):
        hasher.transform(["abc"])
    with pytest.raises(K.InputTypeError, match="not a single string at row 1"):
        hasher.transform([["a"], "abc"])
    with pytest.raises(K.InputTypeError, match=r"tokens must be str or bytes at row 0, column 1: bytearray\(b'x'\)"):
        hasher.transform([[b"a", bytearray(b"x")]])
    with pytest.raises(K.InputTypeError, match="tokens must be str or bytes at row 0, column 2: None"):
        hasher.transform([("a", "b", None)])
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate has no UTF-8 form
        hasher.transform([["a", "\ud800"]])
    for width in (0, -4, 2**31):
        with pytest.raises(K.ConfigError, match="hash width"):
            K.TokenHasher(width)


def test_from_sklearn_and_bytes_tensor() -> None:
    from infergate.kernels.cython_backend import split_bytes_tensor

    hasher = K.from_sklearn(FeatureHasher(32, input_type="string"))
    assert isinstance(hasher, K.TokenHasher) and hasher.n_features == 32
    words = [b"alpha", b"", "\u00e9t\u00e9".encode()]
    raw = np.frombuffer(b"".join(len(w).to_bytes(4, "little") + w for w in words), np.uint8)
    starts, ends = np.empty(3, np.int64), np.empty(3, np.int64)
    assert split_bytes_tensor(raw, starts, ends) == -1
    got = hasher.transform_packed(raw, starts, ends, np.array([0, 3]))
    np.testing.assert_array_equal(got, FeatureHasher(32, input_type="string").transform([words]).toarray())
