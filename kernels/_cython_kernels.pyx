"""Cython hot loops: the fused slot program over a batch, and MurmurHash3 feature hashing.

Only loops live here. Inputs arrive validated and C-contiguous from kernels/cython_backend.py;
failures come back as status codes (see kernels/program.py) that the wrapper turns into errors.
Compiler directives are set once in kernels/_build.py.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cython.parallel cimport prange
from libc.float cimport DBL_MAX, FLT_MAX
from libc.math cimport log1p, fabs, INFINITY
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

cimport numpy as cnp
import numpy as np

cnp.import_array()


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t* size) except NULL


# The whole-row loops of the one-record affine program (see the header's comment).
cdef extern from "_affine_rows.h" nogil:
    void ig_simd_init()
    int ig_set_simd(int is_enabled)
    int ig_is_avx_enabled
    int ig_affine_checks(const double* p, Py_ssize_t w, double max_out)
    Py_ssize_t ig_affine_rows_f32_f32(const double* p, Py_ssize_t w, const float* X, float* Y, Py_ssize_t n,
                                      int checks, int is_streaming)
    Py_ssize_t ig_affine_rows_f32_f64(const double* p, Py_ssize_t w, const float* X, double* Y, Py_ssize_t n,
                                      int checks, int is_streaming)
    Py_ssize_t ig_affine_rows_f64_f32(const double* p, Py_ssize_t w, const double* X, float* Y, Py_ssize_t n,
                                      int checks, int is_streaming)
    Py_ssize_t ig_affine_rows_f64_f64(const double* p, Py_ssize_t w, const double* X, double* Y, Py_ssize_t n,
                                      int checks, int is_streaming)


ig_simd_init()

# Output bytes from which the single-affine loop streams its stores past the caches: several times the L2
# of a core, so such an output is evicted before anyone reads it anyway. Settable for tests and benchmarks.
cdef Py_ssize_t _stream_min_bytes = 1 << 24


# Op kinds and status codes: must equal the K_* and STATUS_* constants of kernels/program.py.
cdef enum:
    K_AFFINE = 1
    K_AFFINE_DIV = 2
    K_LOG1P = 5
    K_BUCKETIZE = 6
    K_ONEHOT = 7
    K_COPY = 8
    OP_WIDTH = 8
    STATUS_INPUT_INF = 1
    STATUS_UNKNOWN_CATEGORY = 2
    STATUS_OUTPUT_NONFINITE = 3
    STATUS_NO_MEMORY = 4
    ROWS_PER_CHUNK = 512  # rows one thread runs between status checks; ~128 KiB of float32 x 64 columns

ctypedef fused real_in:
    float
    double

ctypedef fused real_out:
    float
    double


ctypedef struct Spec:
    Py_ssize_t n_in, n_out, n_slots, n_gather, n_ops
    bint is_identity_gather  # gather is slot k <- column k for every column: a plain converting copy
    bint is_single_affine  # identity gather, one K_AFFINE record over all slots = outputs: input -> output in one loop
    int checks_f32, checks_f64  # the SIMD loop's IG_CHECK_* set for a float32 / float64 output (single affine only)
    const int64_t* gather_slot
    const int64_t* gather_col
    const int64_t* ops
    const double* fparams
    const int64_t* iparams


ctypedef struct Status:
    int64_t code, row, column
    double value


cdef inline void _set(Status* st, int64_t code, Py_ssize_t row, Py_ssize_t column, double value) noexcept nogil:
    st.code = code
    st.row = row
    st.column = column
    st.value = value


cdef inline Py_ssize_t _count_le(const double* edges, Py_ssize_t n, double v) noexcept nogil:
    """Number of edges <= v (np.searchsorted side='right'); edges ascending."""
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if edges[mid] <= v:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline int _onehot(const Spec* s, const int64_t* rec, Py_ssize_t r, double* buf, Status* st,
                        Py_ssize_t row) noexcept nogil:
    cdef double v = buf[rec[4]]
    cdef const double* cats = s.fparams + rec[3]
    cdef const int64_t* dests = s.iparams + rec[6]
    cdef Py_ssize_t k = rec[5], j, lo = 0, hi = rec[5], mid
    while lo < hi:  # first category >= v
        mid = (lo + hi) >> 1
        if cats[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    for j in range(k):
        if dests[j] >= 0:
            buf[dests[j]] = 0.0
    if lo < k and cats[lo] == v:
        if dests[lo] >= 0:
            buf[dests[lo]] = 1.0
    elif rec[7] == 0:
        _set(st, STATUS_UNKNOWN_CATEGORY, row, r, v)
        return 1
    return 0


cdef void _affine(const double* p, Py_ssize_t w, double* b) noexcept nogil:
    cdef Py_ssize_t t
    cdef double v, f
    for t in range(w):
        # Operands are loaded unconditionally so the compiler can use vector blends; NaN fails every
        # comparison, so an unimputed NaN passes the clip and reaches the output check.
        v = b[t]
        f = p[t]
        v = f if v != v else v
        v = (v - p[w + t]) * p[2 * w + t] + p[3 * w + t]
        f = p[4 * w + t]
        v = f if v < f else v
        f = p[5 * w + t]
        b[t] = f if v > f else v


cdef void _affine_div(const double* p, Py_ssize_t w, double* b) noexcept nogil:
    """_affine dividing by the third block: an exact-mode standardize, rounding as StandardScaler's X /= scale."""
    cdef Py_ssize_t t
    cdef double v, f
    for t in range(w):
        v = b[t]
        f = p[t]
        v = f if v != v else v
        v = (v - p[w + t]) / p[2 * w + t] + p[3 * w + t]
        f = p[4 * w + t]
        v = f if v < f else v
        f = p[5 * w + t]
        b[t] = f if v > f else v


cdef inline int _run_ops(const Spec* s, double* buf, Status* st, Py_ssize_t row) noexcept nogil:
    cdef Py_ssize_t r, t, lo, w
    cdef const int64_t* rec
    cdef const int64_t* ptr
    cdef double* b
    cdef double v
    for r in range(s.n_ops):
        rec = s.ops + r * OP_WIDTH
        lo = rec[1]
        w = rec[2] - lo
        b = buf + lo
        if rec[0] == K_AFFINE:
            _affine(s.fparams + rec[3], w, b)
        elif rec[0] == K_AFFINE_DIV:
            _affine_div(s.fparams + rec[3], w, b)
        elif rec[0] == K_LOG1P:
            for t in range(w):
                b[t] = log1p(b[t])
        elif rec[0] == K_BUCKETIZE:
            ptr = s.iparams + rec[6]
            for t in range(w):
                v = b[t]
                if v == v:
                    b[t] = <double>_count_le(s.fparams + ptr[t], ptr[t + 1] - ptr[t], v)
        elif rec[0] == K_ONEHOT:
            if _onehot(s, rec, r, buf, st, row):
                return 1
        elif rec[0] == K_COPY:
            buf[lo] = buf[rec[4]]
    return 0


# Bit tests on IEEE-754 values, written as integer and/xor/add so their OR-reductions vectorise on plain
# SSE2 (floating-point reductions would need -ffast-math). "Any infinite": ((bits & ABS) ^ INF) - 1 has
# its top bit set exactly when the value is +-inf. "Any NaN or inf": (bits & EXP) + EXP_LSB carries into
# the top bit exactly when the exponent is all ones.
cdef uint64_t _inf_flags_f32(const float* x, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k
    cdef uint32_t u, acc = 0
    for k in range(n):
        memcpy(&u, &x[k], 4)
        acc |= ((u & 0x7fffffffU) ^ 0x7f800000U) - 1U
    return acc >> 31


cdef uint64_t _inf_flags_f64(const double* x, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k
    cdef uint64_t u, acc = 0
    for k in range(n):
        memcpy(&u, &x[k], 8)
        acc |= ((u & 0x7fffffffffffffffULL) ^ 0x7ff0000000000000ULL) - 1ULL
    return acc >> 63


cdef uint64_t _nonfinite_flags_f32(const float* x, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k
    cdef uint32_t u, acc = 0
    for k in range(n):
        memcpy(&u, &x[k], 4)
        acc |= (u & 0x7f800000U) + 0x00800000U
    return acc >> 31


cdef uint64_t _nonfinite_flags_f64(const double* x, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k
    cdef uint64_t u, acc = 0
    for k in range(n):
        memcpy(&u, &x[k], 8)
        acc |= (u & 0x7ff0000000000000ULL) + 0x0010000000000000ULL
    return acc >> 63


cdef inline bint _any_inf(const real_in* x, Py_ssize_t n) noexcept nogil:
    if real_in is float:
        return _inf_flags_f32(x, n) != 0
    else:
        return _inf_flags_f64(x, n) != 0


cdef inline bint _any_nonfinite(const real_out* y, Py_ssize_t n) noexcept nogil:
    if real_out is float:
        return _nonfinite_flags_f32(y, n) != 0
    else:
        return _nonfinite_flags_f64(y, n) != 0


cdef void _affine_row(const double* p, Py_ssize_t w, const real_in* x, real_out* y) noexcept nogil:
    """_affine straight from the input row to the output row: the one-pass path of a plain numeric pipeline."""
    cdef Py_ssize_t t
    cdef double v, f
    for t in range(w):
        v = x[t]
        f = p[t]
        v = f if v != v else v
        v = (v - p[w + t]) * p[2 * w + t] + p[3 * w + t]
        f = p[4 * w + t]
        v = f if v < f else v
        f = p[5 * w + t]
        y[t] = <real_out>(f if v > f else v)


cdef inline int _row(const Spec* s, const real_in* x, real_out* y, double* buf, Status* st,
                     Py_ssize_t row) noexcept nogil:
    """Run the program on one row; 0 on success, else 1 with *st filled."""
    cdef Py_ssize_t k
    cdef double v
    if s.is_identity_gather:
        if _any_inf(x, s.n_gather):
            for k in range(s.n_gather):
                if fabs(x[k]) == INFINITY:
                    _set(st, STATUS_INPUT_INF, row, k, x[k])
                    return 1
        if s.is_single_affine:
            _affine_row(s.fparams, s.n_out, x, y)
        else:
            for k in range(s.n_gather):
                buf[k] = x[k]
    else:
        for k in range(s.n_gather):
            v = x[s.gather_col[k]]
            buf[s.gather_slot[k]] = v
            if fabs(v) == INFINITY:
                _set(st, STATUS_INPUT_INF, row, s.gather_col[k], v)
                return 1
    if not s.is_single_affine:
        if _run_ops(s, buf, st, row):
            return 1
        for k in range(s.n_out):
            y[k] = <real_out>buf[k]
    if _any_nonfinite(y, s.n_out):
        for k in range(s.n_out):
            if (y[k] - y[k]) != 0:
                _set(st, STATUS_OUTPUT_NONFINITE, row, k, y[k])
                return 1
    return 0


cdef inline Py_ssize_t _affine_rows(const Spec* s, const real_in* X, real_out* Y, Py_ssize_t n,
                                    bint is_streaming) noexcept nogil:
    """Rows of a single-affine program through the SIMD loop; the first row needing the checking path, or n."""
    if real_in is float and real_out is float:
        return ig_affine_rows_f32_f32(s.fparams, s.n_out, X, Y, n, s.checks_f32, is_streaming)
    elif real_in is float and real_out is double:
        return ig_affine_rows_f32_f64(s.fparams, s.n_out, X, Y, n, s.checks_f64, is_streaming)
    elif real_in is double and real_out is float:
        return ig_affine_rows_f64_f32(s.fparams, s.n_out, X, Y, n, s.checks_f32, is_streaming)
    else:
        return ig_affine_rows_f64_f64(s.fparams, s.n_out, X, Y, n, s.checks_f64, is_streaming)


cdef void _run_rows(const Spec* s, const real_in* X, real_out* Y, Py_ssize_t start, Py_ssize_t stop,
                    bint is_streaming, Status* st) noexcept nogil:
    """Rows [start, stop) in order, stopping at the first failure."""
    cdef Py_ssize_t i = start
    cdef double* buf
    if s.is_single_affine:
        # The SIMD loop stops at a row that may hold a non-finite input or output; _row re-runs it to report
        # the error, or finds none (a pre-clip overflow that the clip made finite) and the loop goes on.
        while i < stop:
            i += _affine_rows(s, X + i * s.n_in, Y + i * s.n_out, stop - i, is_streaming)
            if i >= stop or _row(s, X + i * s.n_in, Y + i * s.n_out, NULL, st, i):
                return
            i += 1
        return
    buf = <double*>malloc((s.n_slots + 1) * sizeof(double))
    if buf == NULL:
        _set(st, STATUS_NO_MEMORY, start, 0, 0.0)
        return
    for i in range(start, stop):
        if _row(s, X + i * s.n_in, Y + i * s.n_out, buf, st, i):
            break
    free(buf)


cdef tuple _run(const Spec* s, const real_in* X, real_out* Y, Py_ssize_t n, int n_threads):
    cdef Status one
    cdef Status* chunks
    cdef Py_ssize_t c, n_chunks
    # Streaming stores need element-aligned output (NumPy's always is unless built from an offset buffer).
    cdef bint is_streaming = (n * s.n_out * <Py_ssize_t>sizeof(real_out) >= _stream_min_bytes
                              and (<size_t>Y) % sizeof(real_out) == 0)
    _set(&one, 0, 0, 0, 0.0)
    if n == 0:
        return (0, 0, 0, 0.0)
    if n_threads <= 1:
        with nogil:
            _run_rows(s, X, Y, 0, n, is_streaming, &one)
        return (one.code, one.row, one.column, one.value)
    n_chunks = (n + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK
    chunks = <Status*>malloc(n_chunks * sizeof(Status))
    if chunks == NULL:
        raise MemoryError()
    try:
        for c in range(n_chunks):
            _set(&chunks[c], 0, 0, 0, 0.0)
        # Dynamic: a thread whose core is busy with other work (a shared host, the server's own threads) takes
        # fewer chunks instead of holding back the whole batch; a chunk is ~100 us of work, so the handout is free.
        for c in prange(n_chunks, nogil=True, num_threads=n_threads, schedule="dynamic"):
            _run_rows(s, X, Y, c * ROWS_PER_CHUNK, min((c + 1) * ROWS_PER_CHUNK, n), is_streaming, &chunks[c])
        # Chunks are in row order, so the first failing chunk holds the batch's first failing row.
        for c in range(n_chunks):
            if chunks[c].code != 0:
                return (chunks[c].code, chunks[c].row, chunks[c].column, chunks[c].value)
        return (0, 0, 0, 0.0)
    finally:
        free(chunks)


cdef const int64_t* _iptr(const int64_t[::1] a):
    return &a[0] if a.shape[0] else NULL


cdef const double* _fptr(const double[::1] a):
    return &a[0] if a.shape[0] else NULL


cdef class ProgramKernel:
    """A Program's arrays pinned as C pointers, so a call acquires only the batch's two buffers."""

    cdef Spec spec
    cdef object _keep  # the program's arrays; the pointers in spec point into them

    def __init__(self, Py_ssize_t n_in, Py_ssize_t n_out, Py_ssize_t n_slots, const int64_t[::1] gather_slot,
                 const int64_t[::1] gather_col, const int64_t[::1] ops, const double[::1] fparams,
                 const int64_t[::1] iparams):
        cdef Py_ssize_t k
        self._keep = (gather_slot, gather_col, ops, fparams, iparams)
        self.spec.n_in = n_in
        self.spec.n_out = n_out
        self.spec.n_slots = n_slots
        self.spec.n_gather = gather_slot.shape[0]
        self.spec.n_ops = ops.shape[0] // OP_WIDTH
        self.spec.gather_slot = _iptr(gather_slot)
        self.spec.gather_col = _iptr(gather_col)
        self.spec.ops = _iptr(ops)
        self.spec.fparams = _fptr(fparams)
        self.spec.iparams = _iptr(iparams)
        self.spec.is_identity_gather = gather_slot.shape[0] == n_in
        for k in range(gather_slot.shape[0]):
            if gather_slot[k] != k or gather_col[k] != k:
                self.spec.is_identity_gather = False
        self.spec.is_single_affine = (self.spec.is_identity_gather and self.spec.n_ops == 1 and ops[0] == K_AFFINE
                                      and ops[1] == 0 and ops[2] == n_in and n_out == n_in)
        if self.spec.is_single_affine:
            self.spec.checks_f32 = ig_affine_checks(self.spec.fparams, n_out, FLT_MAX)
            self.spec.checks_f64 = ig_affine_checks(self.spec.fparams, n_out, DBL_MAX)

    def run(self, cnp.ndarray X not None, cnp.ndarray Y not None, int n_threads):
        """Transform X (C-contiguous float32/float64, n x n_in) into Y (writable, C-contiguous, n x n_out).

        Returns (code, row, column, value) of the first failing row, code 0 if none. Reads the arrays
        through NumPy's C API: typed memoryviews or the buffer protocol cost more than a small batch's loop.
        """
        cdef int kx = cnp.PyArray_TYPE(X), ky = cnp.PyArray_TYPE(Y)
        cdef void* x
        cdef void* y
        if not (cnp.PyArray_NDIM(X) == 2 and cnp.PyArray_NDIM(Y) == 2 and cnp.PyArray_IS_C_CONTIGUOUS(X)
                and cnp.PyArray_IS_C_CONTIGUOUS(Y) and cnp.PyArray_ISWRITEABLE(Y) and cnp.PyArray_ISNOTSWAPPED(X)
                and cnp.PyArray_ISNOTSWAPPED(Y) and (kx == cnp.NPY_FLOAT32 or kx == cnp.NPY_FLOAT64)
                and (ky == cnp.NPY_FLOAT32 or ky == cnp.NPY_FLOAT64) and X.shape[1] == self.spec.n_in
                and Y.shape[1] == self.spec.n_out and X.shape[0] == Y.shape[0]):
            raise ValueError(f"expected C-contiguous native float32/float64 arrays: input (n, {self.spec.n_in}) "
                             f"and writable output (n, {self.spec.n_out}); got {X.dtype} {np.shape(X)} and "
                             f"{Y.dtype} {np.shape(Y)}")
        x, y = cnp.PyArray_DATA(X), cnp.PyArray_DATA(Y)
        if kx == cnp.NPY_FLOAT32 and ky == cnp.NPY_FLOAT32:
            return _run(&self.spec, <const float*>x, <float*>y, X.shape[0], n_threads)
        if kx == cnp.NPY_FLOAT32:
            return _run(&self.spec, <const float*>x, <double*>y, X.shape[0], n_threads)
        if ky == cnp.NPY_FLOAT32:
            return _run(&self.spec, <const double*>x, <float*>y, X.shape[0], n_threads)
        return _run(&self.spec, <const double*>x, <double*>y, X.shape[0], n_threads)


def set_simd(bint is_enabled):
    """Allow (if the CPU has it) or forbid the AVX loop; returns whether it was allowed. For tests and benchmarks."""
    return ig_set_simd(is_enabled) != 0


def set_stream_min_bytes(Py_ssize_t n_bytes):
    """Set the output size from which single-affine runs use streaming stores; returns the previous one."""
    global _stream_min_bytes
    previous, _stream_min_bytes = _stream_min_bytes, n_bytes
    return previous


def simd_level():
    """The loop single-affine programs run here: 'avx' or 'portable'."""
    return "avx" if ig_is_avx_enabled else "portable"


# ---- feature hashing -------------------------------------------------------------------------

cdef inline uint32_t _rotl32(uint32_t x, int r) noexcept nogil:
    return (x << r) | (x >> (32 - r))


cdef inline int32_t murmurhash3_32(const uint8_t* data, Py_ssize_t length, uint32_t seed) noexcept nogil:
    """MurmurHash3_x86_32 as a signed int, as sklearn.utils.murmurhash3_32(positive=False)."""
    cdef uint32_t h = seed, k, c1 = 0xcc9e2d51U, c2 = 0x1b873593U, c3 = 0xe6546b64U
    cdef uint32_t f1 = 0x85ebca6bU, f2 = 0xc2b2ae35U
    cdef Py_ssize_t i, nblocks = length // 4
    cdef const uint8_t* tail = data + nblocks * 4
    for i in range(nblocks):
        memcpy(&k, data + 4 * i, 4)  # little-endian hosts, as the reference implementation
        k = _rotl32(k * c1, 15) * c2
        h = _rotl32(h ^ k, 13) * 5 + c3
    k = 0
    if length & 3 == 3:
        k ^= (<uint32_t>tail[2]) << 16
    if length & 3 >= 2:
        k ^= (<uint32_t>tail[1]) << 8
    if length & 3 >= 1:
        k ^= tail[0]
        h ^= _rotl32(k * c1, 15) * c2
    h ^= <uint32_t>length
    h ^= h >> 16
    h *= f1
    h ^= h >> 13
    h *= f2
    h ^= h >> 16
    return <int32_t>h


cdef inline void _add_token(const uint8_t* data, Py_ssize_t length, Py_ssize_t n_features, bint alternate_sign,
                            real_out* row) noexcept nogil:
    cdef int32_t h = murmurhash3_32(data, length, 0)
    cdef Py_ssize_t index
    if h == -2147483648:
        # abs(INT32_MIN) overflows; scikit-learn defines its index this way.
        index = (2147483647 - (n_features - 1)) % n_features
    else:
        index = (h if h >= 0 else -h) % n_features
    row[index] += (1 if h >= 0 else -1) if alternate_sign else 1


cdef void _hash_rows(const uint8_t* data, const int64_t* starts, const int64_t* ends, const int64_t* row_ptr,
                     Py_ssize_t start, Py_ssize_t stop, Py_ssize_t n_features, bint alternate_sign,
                     real_out* out) noexcept nogil:
    cdef Py_ssize_t i, t
    for i in range(start, stop):
        for t in range(row_ptr[i], row_ptr[i + 1]):
            _add_token(data + starts[t], ends[t] - starts[t], n_features, alternate_sign, out + i * n_features)


def hash_packed(const uint8_t[::1] data, const int64_t[::1] starts, const int64_t[::1] ends,
                const int64_t[::1] row_ptr, Py_ssize_t n_features, bint alternate_sign, real_out[:, ::1] out,
                int n_threads):
    """Add row i's tokens t in [row_ptr[i], row_ptr[i+1]), each data[starts[t]:ends[t]], into out (zeroed)."""
    cdef Py_ssize_t n = out.shape[0], c, n_chunks = (out.shape[0] + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK
    cdef const uint8_t* d = &data[0] if data.shape[0] else NULL
    cdef const int64_t* s = &starts[0] if starts.shape[0] else NULL
    cdef const int64_t* e = &ends[0] if ends.shape[0] else NULL
    if n == 0:
        return
    if n_threads <= 1:
        with nogil:
            _hash_rows(d, s, e, &row_ptr[0], 0, n, n_features, alternate_sign, &out[0, 0])
        return
    for c in prange(n_chunks, nogil=True, num_threads=n_threads, schedule="dynamic"):  # as _run: busy cores
        _hash_rows(d, s, e, &row_ptr[0], c * ROWS_PER_CHUNK, min((c + 1) * ROWS_PER_CHUNK, n), n_features,
                   alternate_sign, &out[0, 0])


def hash_objects(rows, Py_ssize_t n_features, bint alternate_sign, real_out[:, ::1] out):
    """Hash Python str/bytes tokens row by row into out (zeroed) without packing them first.

    Returns (0, 0, 0) or (1, row, position) of the first token that is neither str nor bytes, or
    (2, row, -1) for a row that is a bare str/bytes rather than a list of tokens.
    """
    cdef Py_ssize_t i = 0, t, length
    cdef const char* text
    for row in rows:
        if isinstance(row, (str, bytes)):
            return (2, i, -1)
        t = 0
        for token in row:
            if isinstance(token, str):
                text = PyUnicode_AsUTF8AndSize(token, &length)  # cached UTF-8, no copy
            elif isinstance(token, bytes):
                text = PyBytes_AS_STRING(token)
                length = PyBytes_GET_SIZE(token)
            else:
                return (1, i, t)
            _add_token(<const uint8_t*>text, length, n_features, alternate_sign, &out[i, 0])
            t += 1
        i += 1
    return (0, 0, 0)


def hash_one(bytes token):
    """murmurhash3_32(token, seed=0) signed; exposed for tests."""
    return murmurhash3_32(<const uint8_t*>PyBytes_AS_STRING(token), PyBytes_GET_SIZE(token), 0)


def split_bytes_tensor(const uint8_t[::1] raw, int64_t[::1] starts, int64_t[::1] ends):
    """Locate the elements of a KServe v2 BYTES tensor: each is a uint32 little-endian length, then the bytes.

    Fills starts/ends (one per element) with positions into raw. Returns -1 on success, else the index
    of the first element that runs past the end of raw; raw must hold exactly the elements.
    """
    cdef Py_ssize_t k, pos = 0, n = raw.shape[0], n_elements = starts.shape[0], failed = -1
    cdef uint32_t length
    with nogil:
        for k in range(n_elements):
            if pos + 4 > n:
                failed = k
                break
            memcpy(&length, &raw[pos], 4)
            if pos + 4 + <Py_ssize_t>length > n:
                failed = k
                break
            starts[k] = pos + 4
            ends[k] = pos + 4 + length
            pos += 4 + length
    if failed < 0 and pos != n:
        failed = n_elements
    return failed


def split_bytes_objects(const uint8_t[::1] raw, object[::1] out):
    """Fill out with the elements of a KServe v2 BYTES tensor in raw, each a new bytes object.

    One pass: each element is a uint32 length (host order, little-endian on every target, as in
    split_bytes_tensor), then its bytes. Returns (-1, len(raw)) when raw holds exactly out's
    elements, else (k, pos): k the first element that does not fit, or len(out) when bytes are
    left over after the last, and pos the byte where element k's length prefix starts. The GIL
    is held throughout: every element becomes a Python object.
    """
    cdef Py_ssize_t k, pos = 0, n = raw.shape[0], count = out.shape[0]
    cdef uint32_t length
    for k in range(count):
        if pos + 4 > n:
            return (k, pos)
        memcpy(&length, &raw[pos], 4)
        if pos + 4 + <Py_ssize_t>length > n:
            return (k, pos)
        out[k] = PyBytes_FromStringAndSize((<const char*>&raw[0]) + pos + 4, length)  # raw[0] exists: n >= 4
        pos += 4 + length
    if pos != n:
        return (count, pos)
    return (-1, pos)
