/* Whole rows of the one-record affine program (impute -> affine -> clip), for kernels/_cython_kernels.pyx.
 *
 * Row i of X (n rows of w values) becomes row i of Y: v = fill where NaN, v = (v - sub) * mul + add,
 * v = low where v < low, v = high where v > high, computed in float64 and stored in Y's type. The
 * parameters are p = fill[w], sub[w], mul[w], add[w], low[w], high[w]: the K_AFFINE record of
 * kernels/program.py at offset 0. Results equal _affine_row in the .pyx (and the NumPy reference) bit
 * for bit: each of -, *, + rounds on its own (no FMA: no FMA intrinsics, -ffp-contract=off), the
 * clips keep their operand order so NaN passes them and reaches the output check.
 *
 * A call returns the first row it flags (n if none); the caller re-runs that row on the checking path,
 * which reports the exact column and value, or finds nothing and goes on. Every row with an infinite
 * input or a non-finite output is flagged; the AVX loop may also flag a row whose pre-clip value
 * overflowed (see IG_CHECK_*), which is rare and costs only that re-run.
 *
 * x86-64 builds also carry an AVX version (4 float64 lanes) chosen at run time, so a build without
 * -march runs the wide loop on hosts that have it; elsewhere the portable loop (SSE2 at -O3) runs.
 * is_streaming asks for non-temporal stores: for outputs far larger than the caches they skip the
 * read-for-ownership of every output line, about a third of the memory traffic of a pass.
 */
#ifndef INFERGATE_AFFINE_ROWS_H
#define INFERGATE_AFFINE_ROWS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define IG_HAS_AVX_BUILD 1
#include <immintrin.h>
#else
#define IG_HAS_AVX_BUILD 0
#endif

/* 1 while the AVX loop may run: set by ig_simd_init from the CPU, and by ig_set_simd for tests. */
static int ig_is_avx_enabled = 0;

/* What the AVX loop tests per element (ig_affine_checks picks the cheapest sufficient set):
   IG_CHECK_PRECLIP flags a non-finite value before the clip. Any infinite input gives one (inf or NaN
   survives -, *, +), and when every clip bound lies within the output type's range a finite pre-clip
   value cannot leave a non-finite output, so this one test covers both error kinds.
   IG_CHECK_OUTPUT flags a non-finite stored value. Without any finite clip bound the output is the
   pre-clip value itself (NaN passes the clip), so this one test covers both error kinds. */
#define IG_CHECK_PRECLIP 1
#define IG_CHECK_OUTPUT 2

/* One element; ORs into *bad whether the input is infinite or the stored output is not finite. */
#define IG_AFFINE_ONE(TOUT, p, w, t, xin, yout, bad)                                  \
    do {                                                                              \
        double v_ = (double)(xin), f_ = (p)[t];                                       \
        TOUT o_;                                                                      \
        (bad) |= fabs(v_) == INFINITY;                                                \
        v_ = v_ != v_ ? f_ : v_;                                                      \
        v_ = (v_ - (p)[(w) + (t)]) * (p)[2 * (w) + (t)] + (p)[3 * (w) + (t)];         \
        f_ = (p)[4 * (w) + (t)];                                                      \
        v_ = v_ < f_ ? f_ : v_;                                                       \
        f_ = (p)[5 * (w) + (t)];                                                      \
        o_ = (TOUT)(v_ > f_ ? f_ : v_);                                               \
        (yout) = o_;                                                                  \
        (bad) |= (o_ - o_) != 0;                                                      \
    } while (0)

/* The portable loop: branch-free, so the compiler may vectorise it with the baseline vectors (SSE2 on x86-64). */
#define IG_DEFINE_PORTABLE(NAME, TIN, TOUT)                                                         \
    static Py_ssize_t NAME(const double* p, Py_ssize_t w, const TIN* X, TOUT* Y, Py_ssize_t n) {  \
        Py_ssize_t i, t;                                                                            \
        for (i = 0; i < n; i++) {                                                                   \
            const TIN* x = X + i * w;                                                               \
            TOUT* y = Y + i * w;                                                                    \
            int bad = 0;                                                                            \
            for (t = 0; t < w; t++) IG_AFFINE_ONE(TOUT, p, w, t, x[t], y[t], bad);                  \
            if (bad) return i;                                                                      \
        }                                                                                           \
        return n;                                                                                   \
    }

IG_DEFINE_PORTABLE(ig_affine_rows_portable_f32_f32, float, float)
IG_DEFINE_PORTABLE(ig_affine_rows_portable_f32_f64, float, double)
IG_DEFINE_PORTABLE(ig_affine_rows_portable_f64_f32, double, float)
IG_DEFINE_PORTABLE(ig_affine_rows_portable_f64_f64, double, double)

#if IG_HAS_AVX_BUILD
#define IG_AVX static inline __attribute__((target("avx"), always_inline))

/* fill where v is NaN, else v. Written as the instruction: GCC 12 turns _mm256_blendv_pd on a comparison
   (and any ternary) into four scalar branches inside a target("avx") function, several times slower. */
IG_AVX __m256d ig_select_nan4(__m256d v, __m256d fill) {
    __m256d is_nan = _mm256_cmp_pd(v, v, _CMP_UNORD_Q), r;
    __asm__("vblendvpd %3, %2, %1, %0" : "=x"(r) : "x"(v), "x"(fill), "x"(is_nan));
    return r;
}

IG_AVX __m256d ig_load4_f32(const float* x) { return _mm256_cvtps_pd(_mm_loadu_ps(x)); }
IG_AVX __m256d ig_load4_f64(const double* x) { return _mm256_loadu_pd(x); }

/* Store 4 results; with is_checked, OR (stored - stored), 0 where finite and NaN where not, into the
   accumulator of the output type: a float32 output is checked after its rounding, which may overflow. */
IG_AVX void ig_store4_f32(float* y, __m256d v, int is_streaming, int is_checked, __m128* bad32, __m256d* bad64) {
    __m128 o = _mm256_cvtpd_ps(v);
    (void)bad64;
    if (is_streaming) _mm_stream_ps(y, o); else _mm_storeu_ps(y, o);
    if (is_checked) *bad32 = _mm_or_ps(*bad32, _mm_sub_ps(o, o));
}

IG_AVX void ig_store4_f64(double* y, __m256d v, int is_streaming, int is_checked, __m128* bad32, __m256d* bad64) {
    (void)bad32;
    if (is_streaming) {  /* two 16-byte stores: NumPy's large buffers are 16- but rarely 32-byte aligned */
        _mm_stream_pd(y, _mm256_castpd256_pd128(v));
        _mm_stream_pd(y + 2, _mm256_extractf128_pd(v, 1));
    } else {
        _mm256_storeu_pd(y, v);
    }
    if (is_checked) *bad64 = _mm256_or_pd(*bad64, _mm256_sub_pd(v, v));
}

/* The vector loop is written once per check set (ROW_LOOP is expanded with constant flags), so each copy
   carries only its own tests. Streaming stores need 16-byte alignment: rows start with scalar stores up to
   the next 16-byte boundary, and only element-aligned outputs stream at all (the caller checks). The scalar
   head and tail run the exact per-element checks. */
#define IG_AVX_ROWS(TIN, TOUT, LOAD4, STORE4, IS_PRECLIP, IS_OUTPUT)                                         \
    for (i = 0; i < n; i++) {                                                                                  \
        const TIN* x = X + i * w;                                                                              \
        TOUT* y = Y + i * w;                                                                                   \
        __m256d bad_u = _mm256_setzero_pd(), bad64 = _mm256_setzero_pd();                                      \
        __m128 bad32 = _mm_setzero_ps();                                                                       \
        int bad = 0;                                                                                           \
        head = is_streaming ? (Py_ssize_t)(((16 - ((uintptr_t)y & 15)) & 15) / sizeof(TOUT)) : 0;             \
        if (head > w) head = w;                                                                                \
        for (t = 0; t < head; t++) IG_AFFINE_ONE(TOUT, p, w, t, x[t], y[t], bad);                              \
        for (; t + 4 <= w; t += 4) {                                                                           \
            __m256d v = ig_select_nan4(LOAD4(x + t), _mm256_loadu_pd(p + t));                                  \
            v = _mm256_sub_pd(v, _mm256_loadu_pd(p + w + t));                                                  \
            v = _mm256_mul_pd(v, _mm256_loadu_pd(p + 2 * w + t));                                              \
            v = _mm256_add_pd(v, _mm256_loadu_pd(p + 3 * w + t));                                              \
            if (IS_PRECLIP) bad_u = _mm256_or_pd(bad_u, _mm256_sub_pd(v, v));                                  \
            /* max(low, v) is (low > v ? low : v) and min(high, v) is (high < v ? high : v): NaN v passes */   \
            v = _mm256_max_pd(_mm256_loadu_pd(p + 4 * w + t), v);                                             \
            v = _mm256_min_pd(_mm256_loadu_pd(p + 5 * w + t), v);                                             \
            STORE4(y + t, v, is_streaming, IS_OUTPUT, &bad32, &bad64);                                         \
        }                                                                                                      \
        for (; t < w; t++) IG_AFFINE_ONE(TOUT, p, w, t, x[t], y[t], bad);                                      \
        bad |= _mm256_movemask_pd(_mm256_cmp_pd(_mm256_or_pd(bad_u, bad64), _mm256_or_pd(bad_u, bad64),       \
                                                _CMP_UNORD_Q));                                                \
        bad |= _mm_movemask_ps(_mm_cmpunord_ps(bad32, bad32));                                                 \
        if (bad) break;                                                                                        \
    }

#define IG_DEFINE_AVX(NAME, TIN, TOUT, LOAD4, STORE4)                                                         \
    __attribute__((target("avx"))) static Py_ssize_t NAME(const double* p, Py_ssize_t w, const TIN* X,         \
                                                          TOUT* Y, Py_ssize_t n, int checks,                   \
                                                          int is_streaming) {                                  \
        Py_ssize_t i, t, head;                                                                                 \
        if (checks == IG_CHECK_PRECLIP) {                                                                      \
            IG_AVX_ROWS(TIN, TOUT, LOAD4, STORE4, 1, 0)                                                        \
        } else if (checks == IG_CHECK_OUTPUT) {                                                                \
            IG_AVX_ROWS(TIN, TOUT, LOAD4, STORE4, 0, 1)                                                        \
        } else {                                                                                               \
            IG_AVX_ROWS(TIN, TOUT, LOAD4, STORE4, 1, 1)                                                        \
        }                                                                                                      \
        if (is_streaming) _mm_sfence(); /* order the streamed rows before anything the caller writes next */  \
        return i;                                                                                              \
    }

IG_DEFINE_AVX(ig_affine_rows_avx_f32_f32, float, float, ig_load4_f32, ig_store4_f32)
IG_DEFINE_AVX(ig_affine_rows_avx_f32_f64, float, double, ig_load4_f32, ig_store4_f64)
IG_DEFINE_AVX(ig_affine_rows_avx_f64_f32, double, float, ig_load4_f64, ig_store4_f32)
IG_DEFINE_AVX(ig_affine_rows_avx_f64_f64, double, double, ig_load4_f64, ig_store4_f64)
#endif

/* Whether the AVX loop can run here: built for x86-64 and the CPU (and OS) support AVX. */
static int ig_is_avx_available(void) {
#if IG_HAS_AVX_BUILD
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx") != 0;
#else
    return 0;
#endif
}

static void ig_simd_init(void) { ig_is_avx_enabled = ig_is_avx_available(); }

/* Turn the AVX loop on (if available) or off; returns whether it was on. For tests of both loops. */
static int ig_set_simd(int is_enabled) {
    int was = ig_is_avx_enabled;
    ig_is_avx_enabled = is_enabled && ig_is_avx_available();
    return was;
}

/* The cheapest sufficient IG_CHECK_* set for clip bounds low[w], high[w] and an output whose largest finite
   value is max_out (FLT_MAX or DBL_MAX). */
static int ig_affine_checks(const double* p, Py_ssize_t w, double max_out) {
    const double* low = p + 4 * w;
    const double* high = p + 5 * w;
    int is_unclipped = 1, is_in_range = 1;
    Py_ssize_t t;
    for (t = 0; t < w; t++) {
        is_unclipped &= low[t] == -INFINITY && high[t] == INFINITY;
        is_in_range &= fabs(low[t]) <= max_out && fabs(high[t]) <= max_out;
    }
    if (is_in_range) return IG_CHECK_PRECLIP;
    if (is_unclipped) return IG_CHECK_OUTPUT;
    return IG_CHECK_PRECLIP | IG_CHECK_OUTPUT;
}

#if IG_HAS_AVX_BUILD
#define IG_DISPATCH(SUFFIX, TIN, TOUT)                                                                     \
    static Py_ssize_t ig_affine_rows_##SUFFIX(const double* p, Py_ssize_t w, const TIN* X, TOUT* Y,         \
                                              Py_ssize_t n, int checks, int is_streaming) {                 \
        if (ig_is_avx_enabled) return ig_affine_rows_avx_##SUFFIX(p, w, X, Y, n, checks, is_streaming);     \
        return ig_affine_rows_portable_##SUFFIX(p, w, X, Y, n);                                             \
    }
#else
#define IG_DISPATCH(SUFFIX, TIN, TOUT)                                                                     \
    static Py_ssize_t ig_affine_rows_##SUFFIX(const double* p, Py_ssize_t w, const TIN* X, TOUT* Y,         \
                                              Py_ssize_t n, int checks, int is_streaming) {                 \
        (void)checks;                                                                                       \
        (void)is_streaming;                                                                                 \
        return ig_affine_rows_portable_##SUFFIX(p, w, X, Y, n);                                             \
    }
#endif

IG_DISPATCH(f32_f32, float, float)
IG_DISPATCH(f32_f64, float, double)
IG_DISPATCH(f64_f32, double, float)
IG_DISPATCH(f64_f64, double, double)

#endif
