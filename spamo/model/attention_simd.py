"""C source of the AVX-512 bodies of the dropped-entry passes for float32 rows of width 64 (the model's case).

Why: per dropped entry the passes of attention_dropped.py do one dot product of a gathered row and one gathered
axpy. Done entry by entry, each dot ends in a horizontal reduction (a dependent chain of shuffles and adds, ~9
operations) and each axpy loads and stores its partial sum in memory. Here 16 dots are reduced together by a
transpose-and-add tree (30 shuffles and 15 adds for all 16, the chains independent) and the four partial sums of
a row's gathered sum stay in 16 registers for the whole segment (attention_dropped.py: `forward_segment`,
`rows_segment`). The gathered rows of the next group of entries are prefetched while the current one computes
(all four cache lines of a 256-byte row; the rows are scattered, so hardware prefetch does not see them).

Summation orders are fixed by an entry's position in its row's segment (never by threads): results stay the same
on any thread count. The gathered sums make the same fused multiply-adds in the same order as the generic
`gather_sum` (entry e into partial sum (e - e0) % 4).
"""

DROPPED_SIMD = r"""
#ifdef __AVX512F__
#include <immintrin.h>
#define SIMD_AHEAD 16  /* entries ahead whose gathered rows are prefetched */

static inline __attribute__((always_inline)) void prefetch_row64(const float *row) {
    _mm_prefetch((const char *)row, _MM_HINT_T0);
    _mm_prefetch((const char *)(row + 16), _MM_HINT_T0);
    _mm_prefetch((const char *)(row + 32), _MM_HINT_T0);
    _mm_prefetch((const char *)(row + 48), _MM_HINT_T0);
}

/* Lane t: x . m_{cols[t]} for 16 entries (x in four registers, rows of m 64 wide). Entry order[t] goes into
   product p[t] so that the transpose tree below leaves entry t in lane t. */
static inline __attribute__((always_inline)) __m512 dots16_64(const __m512 *x, const float *m, const int32_t *cols) {
    static const int order[16] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};
    __m512 p[16], u[8], w[4], y[2];
    for (int t = 0; t < 16; t++) {
        const float *r = m + (int64_t)cols[order[t]] * 64;
        __m512 s = _mm512_mul_ps(x[0], _mm512_loadu_ps(r));
        s = _mm512_fmadd_ps(x[1], _mm512_loadu_ps(r + 16), s);
        s = _mm512_fmadd_ps(x[2], _mm512_loadu_ps(r + 32), s);
        p[t] = _mm512_fmadd_ps(x[3], _mm512_loadu_ps(r + 48), s);
    }
    for (int t = 0; t < 8; t++)  /* halves: lanes 0-7 hold p[2t]'s partial sums, 8-15 p[2t + 1]'s */
        u[t] = _mm512_add_ps(_mm512_shuffle_f32x4(p[2 * t], p[2 * t + 1], 0x44),
                             _mm512_shuffle_f32x4(p[2 * t], p[2 * t + 1], 0xEE));
    for (int t = 0; t < 4; t++)  /* quarters: four products' 4-lane partial sums each */
        w[t] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * t], u[2 * t + 1], 0x88),
                             _mm512_shuffle_f32x4(u[2 * t], u[2 * t + 1], 0xDD));
    for (int t = 0; t < 2; t++)
        y[t] = _mm512_add_ps(_mm512_unpacklo_ps(w[2 * t], w[2 * t + 1]), _mm512_unpackhi_ps(w[2 * t], w[2 * t + 1]));
    return _mm512_add_ps(_mm512_shuffle_ps(y[0], y[1], 0x44), _mm512_shuffle_ps(y[0], y[1], 0xEE));
}

/* out[e] = x . m_{cols[e]} for e in [e0, e1): groups of 16 through the tree, the rest one by one. */
static inline __attribute__((always_inline)) void dots_64(float *out, const float *xrow, const float *m,
                                                         const int32_t *cols, int64_t e0, int64_t e1) {
    __m512 x[4] = {_mm512_loadu_ps(xrow), _mm512_loadu_ps(xrow + 16), _mm512_loadu_ps(xrow + 32),
                   _mm512_loadu_ps(xrow + 48)};
    int64_t e = e0;
    for (; e + 16 <= e1; e += 16) {
        for (int64_t t = e + SIMD_AHEAD; t < e + SIMD_AHEAD + 16 && t < e1; t++)
            prefetch_row64(m + (int64_t)cols[t] * 64);
        _mm512_storeu_ps(out + e, dots16_64(x, m, cols + e));
    }
    for (; e < e1; e++) {
        const float *r = m + (int64_t)cols[e] * 64;
        __m512 s = _mm512_mul_ps(x[0], _mm512_loadu_ps(r));
        s = _mm512_fmadd_ps(x[1], _mm512_loadu_ps(r + 16), s);
        s = _mm512_fmadd_ps(x[2], _mm512_loadu_ps(r + 32), s);
        out[e] = _mm512_reduce_add_ps(_mm512_fmadd_ps(x[3], _mm512_loadu_ps(r + 48), s));
    }
}

#define SIMD_AXPY(part, e) do { \
        const float *r_ = m + (int64_t)cols[e] * 64; \
        __m512 b_ = _mm512_set1_ps(x[e]); \
        for (int c_ = 0; c_ < 4; c_++) s[4 * (part) + c_] = _mm512_fmadd_ps(b_, _mm512_loadu_ps(r_ + 16 * c_), \
                                                                            s[4 * (part) + c_]); \
    } while (0)

/* acc[0 .. 256) (four partial sums of 64) += sum over e in [e0, e1) of x[e] m_{cols[e]}, entry e into partial sum
   (e - e0) % 4, the partial sums held in registers. */
static inline __attribute__((always_inline)) void gather_sum_64(float *acc, const float *x, const int32_t *cols,
                                                               int64_t e0, int64_t e1, const float *m) {
    __m512 s[16];
    for (int t = 0; t < 16; t++) s[t] = _mm512_loadu_ps(acc + 16 * t);
    int64_t e = e0;
    for (; e + 4 <= e1; e += 4) {
        SIMD_AXPY(0, e);
        SIMD_AXPY(1, e + 1);
        SIMD_AXPY(2, e + 2);
        SIMD_AXPY(3, e + 3);
    }
    if (e < e1) SIMD_AXPY(0, e);
    if (e + 1 < e1) SIMD_AXPY(1, e + 1);
    if (e + 2 < e1) SIMD_AXPY(2, e + 2);
    for (int t = 0; t < 16; t++) _mm512_storeu_ps(acc + 16 * t, s[t]);
}
#undef SIMD_AXPY
#endif
"""
