"""C source of the sparse passes over the DROPPED attention weights (compiled with the rest of attention_kernel.py).

Why: with keep mask M (dropped set D = not M) and A = softmax(scale q k^T), the dropout attention is
out = (A o M) V / (1 - p) = (A V - sum over D of A_ij v_j) / (1 - p). PyTorch's fused CPU kernel computes A V (and
its log-sum-exp) at the cost of attention without dropout; what dropout adds is a sum over the ~p N^2 dropped
entries only (docs/method.md section 3). The backward likewise is the fused kernel's backward (fed the keep-scaled
gradient and out (1 - p), which makes its row term the dropout one) minus corrections over D. These passes compute
the corrections, enumerating D from the same per-(seed, row, col) draws as the dense keep mask (`draws`, kept when
>= threshold), so the masks are those of every other backend and of the dense test reference.

* the lists of D (each row's dropped columns, increasing, with row offsets) come from attention_lists.py;
* `drop_forward`: the weights of the dropped entries, a_ij = exp2(sl (q_i.k_j - l_i)) with
  sl = scale log2(e) and l_i = lse_i / scale in double, and
  out_i <- (out_i - sum_j a_ij v_j) * keep_scale when out is given;
* `drop_grad_rows`: w_ij = a_ij (g'_i . v_j) (stored) and gq_i -= scale sum_j w_ij k_j (on one thread also the
  column pass's updates, in the same order);
* `drop_grad_cols`: gk_j -= scale sum_i w_ij q_i and gv_j -= sum_i a_ij g'_i.

Row passes share rows out over threads (each row's sums in a fixed order: column tile, then column); the column pass
shares column tiles out (each column's sums in increasing row order): results do not depend on the thread count.
Columns are visited in tiles of TILE so the k / v (or gk / gv) rows a tile touches stay in L2 across CHUNK rows.
The float32 width-64 bodies are AVX-512 code in attention_simd.py.
"""

DROPPED_COMMON = r"""
#include <omp.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#define IS_f32 1  /* which instantiation of the typed passes is float32 (the AVX-512 paths) */
#define IS_f64 0
#define TILE 1024
#define CHUNK 64
#define COLS_TILE 256  /* the column pass: narrower tiles (threads own tile ranges), taller chunks */
#define COLS_CHUNK 256
#define PREFETCH 6  /* entries ahead: the gathered rows of a segment are not in a pattern hardware prefetch sees */

/* First position in list[lo, hi) whose column is >= c (lists are increasing). */
static inline int64_t first_at_least(const int32_t *list, int64_t lo, int64_t hi, int64_t c) {
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (list[mid] < c) lo = mid + 1; else hi = mid;
    }
    return lo;
}
"""

DROPPED_TYPED = r"""
/* Dot product and axpy of one row pair. float32 rows of a multiple of 16 use AVX-512 where the CPU has it (two
   accumulators, one tree reduction); everything else a plain loop the compiler vectorises. */
static inline __attribute__((always_inline)) real dot_SUFFIX(const real *x, const real *y, int64_t d) {
#if defined(__AVX512F__) && IS_SUFFIX
    if (d % 16 == 0) {
        const float *xf = (const float *)x, *yf = (const float *)y;
        __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
        int64_t c = 0;
        for (; c + 32 <= d; c += 32) {
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(xf + c), _mm512_loadu_ps(yf + c), s0);
            s1 = _mm512_fmadd_ps(_mm512_loadu_ps(xf + c + 16), _mm512_loadu_ps(yf + c + 16), s1);
        }
        if (c < d) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(xf + c), _mm512_loadu_ps(yf + c), s0);
        return (real)_mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
    }
#endif
    real s = 0;
    #pragma omp simd reduction(+:s)
    for (int64_t c = 0; c < d; c++) s += x[c] * y[c];
    return s;
}

static inline __attribute__((always_inline)) void axpy_SUFFIX(real *y, real a, const real *x, int64_t d) {
#if defined(__AVX512F__) && IS_SUFFIX
    if (d % 16 == 0) {
        float *yf = (float *)y;
        const float *xf = (const float *)x;
        __m512 av = _mm512_set1_ps((float)a);
        for (int64_t c = 0; c < d; c += 16)
            _mm512_storeu_ps(yf + c, _mm512_fmadd_ps(av, _mm512_loadu_ps(xf + c), _mm512_loadu_ps(yf + c)));
        return;
    }
#endif
    #pragma omp simd
    for (int64_t c = 0; c < d; c++) y[c] += a * x[c];
}

/* acc[0..4 d) += sum over entries e in [e0, e1) of x[e] m_{cols[e]}, in four interleaved partial sums (entry e
   into part (e - e0) % 4): consecutive entries do not wait on each other's store. */
static inline __attribute__((always_inline)) void gather_sum_SUFFIX(real *acc, const real *x, const int32_t *cols,
                                                                    int64_t e0, int64_t e1, const real *m,
                                                                    int64_t d) {
    int64_t e = e0;
    for (; e + 4 <= e1; e += 4) {
        axpy_SUFFIX(acc, x[e], m + (int64_t)cols[e] * d, d);
        axpy_SUFFIX(acc + d, x[e + 1], m + (int64_t)cols[e + 1] * d, d);
        axpy_SUFFIX(acc + 2 * d, x[e + 2], m + (int64_t)cols[e + 2] * d, d);
        axpy_SUFFIX(acc + 3 * d, x[e + 3], m + (int64_t)cols[e + 3] * d, d);
    }
    for (int64_t part = 0; e < e1; e++, part++) axpy_SUFFIX(acc + part * d, x[e], m + (int64_t)cols[e] * d, d);
}

/* The per-row segment work (one row's entries in one column tile) is written once, always inlined, and expanded
   for d = dv = 64 and 32 (constant trip counts: unrolled vector code) and for any width, inside the parallel loops
   (OpenMP outlines a parallel region before inlining, so the expansion must happen in its body). */
#define WIDTHS(call) \
    if (d == 64 && dv == 64) call(64, 64); else if (d == 32 && dv == 32) call(32, 32); else call(d, dv)

/* a_e = exp2(sl (q_i.k_j - l)) for the segment's entries (l = the row's log-sum-exp over the scale, in double:
   the difference is formed without rounding the large score and l apart); acc (4 dv partial sums) += a_e v_j when
   acc is given. */
static inline __attribute__((always_inline)) void forward_segment_SUFFIX(
        const real *qi, const real *k, const real *v, double l, double sl, const int32_t *cols, real *a, int64_t e0,
        int64_t e1, real *acc, int64_t d, int64_t dv) {
#if defined(__AVX512F__) && IS_SUFFIX
    if (d == 64 && dv == 64) {  /* attention_simd.py */
        dots_64((float *)a, (const float *)qi, (const float *)k, cols, e0, e1);
        #pragma omp simd
        for (int64_t e = e0; e < e1; e++) a[e] = EXP2((real)(((double)a[e] - l) * sl));
        if (acc) gather_sum_64((float *)acc, (const float *)a, cols, e0, e1, (const float *)v);
        return;
    }
#endif
    for (int64_t e = e0; e < e1; e++) {
        if (e + PREFETCH < e1) __builtin_prefetch(k + (int64_t)cols[e + PREFETCH] * d);
        a[e] = (real)(((double)dot_SUFFIX(qi, k + (int64_t)cols[e] * d, d) - l) * sl);
    }
    #pragma omp simd
    for (int64_t e = e0; e < e1; e++) a[e] = EXP2(a[e]);
    if (acc) gather_sum_SUFFIX(acc, a, cols, e0, e1, v, dv);
}

/* w_e = a_e (g'_i . v_j); acc (4 d partial sums) += w_e k_j. */
static inline __attribute__((always_inline)) void rows_segment_SUFFIX(
        const real *gi, const real *k, const real *v, const int32_t *cols, const real *a, real *w, int64_t e0,
        int64_t e1, real *acc, int64_t d, int64_t dv) {
#if defined(__AVX512F__) && IS_SUFFIX
    if (d == 64 && dv == 64) {  /* attention_simd.py */
        dots_64((float *)w, (const float *)gi, (const float *)v, cols, e0, e1);
        #pragma omp simd
        for (int64_t e = e0; e < e1; e++) w[e] *= a[e];
        gather_sum_64((float *)acc, (const float *)w, cols, e0, e1, (const float *)k);
        return;
    }
#endif
    for (int64_t e = e0; e < e1; e++) {
        if (e + PREFETCH < e1) __builtin_prefetch(v + (int64_t)cols[e + PREFETCH] * dv);
        w[e] = dot_SUFFIX(gi, v + (int64_t)cols[e] * dv, dv);
    }
    #pragma omp simd
    for (int64_t e = e0; e < e1; e++) w[e] *= a[e];
    gather_sum_SUFFIX(acc, w, cols, e0, e1, k, d);
}

/* Rows [r0, r1): entries of row i live at positions offsets[i] - base .. offsets[i + 1] - base of cols / a.
   out (may be NULL): n_q x dv, holds A V on entry and the dropout output on return. */
static inline __attribute__((always_inline)) void drop_forward_body_SUFFIX(
        const real *q, const real *k, const real *v, const double *lse, real *out, int64_t r0, int64_t r1,
        int64_t n_k, int64_t d, int64_t dv, double sl, real keep_scale, const int64_t *offsets, int64_t base,
        const int32_t *cols, real *a, int threads) {
    int64_t chunks = (r1 - r0 + CHUNK - 1) / CHUNK;
    #pragma omp parallel num_threads(threads)
    {
        real *acc = (real *)malloc(sizeof(real) * (size_t)(CHUNK * 4 * dv));
        int64_t cur[CHUNK];
        #pragma omp for schedule(static)
        for (int64_t ch = 0; ch < chunks; ch++) {
            int64_t i0 = r0 + ch * CHUNK, i1 = i0 + CHUNK < r1 ? i0 + CHUNK : r1;
            for (int64_t i = i0; i < i1; i++) cur[i - i0] = offsets[i] - base;
            memset(acc, 0, sizeof(real) * (size_t)(CHUNK * 4 * dv));
            for (int64_t c0 = 0; c0 < n_k; c0 += TILE) {
                int64_t c1 = c0 + TILE;
                for (int64_t i = i0; i < i1; i++) {
                    int64_t e0 = cur[i - i0], end = offsets[i + 1] - base, e1 = e0;
                    while (e1 < end && cols[e1] < c1) e1++;
#define SEGMENT(D, DV) forward_segment_SUFFIX(q + i * D, k, v, lse[i], sl, cols, a, e0, e1, \
                                              out ? acc + (i - i0) * 4 * DV : NULL, D, DV)
                    WIDTHS(SEGMENT);
#undef SEGMENT
                    cur[i - i0] = e1;
                }
            }
            if (out) {
                for (int64_t i = i0; i < i1; i++) {
                    real *o = out + i * dv;
                    const real *ac = acc + (i - i0) * 4 * dv;
                    #pragma omp simd
                    for (int64_t c = 0; c < dv; c++)
                        o[c] = (o[c] - ((ac[c] + ac[dv + c]) + (ac[2 * dv + c] + ac[3 * dv + c]))) * keep_scale;
                }
            }
        }
        free(acc);
    }
}

void drop_forward_SUFFIX(const real *q, const real *k, const real *v, const double *lse, real *out, int64_t r0,
                         int64_t r1, int64_t n_k, int64_t d, int64_t dv, double sl, real keep_scale,
                         const int64_t *offsets, int64_t base, const int32_t *cols, real *a, int threads) {
    drop_forward_body_SUFFIX(q, k, v, lse, out, r0, r1, n_k, d, dv, sl, keep_scale, offsets, base, cols, a, threads);
}

/* w_ij = a_ij (g'_i . v_j) stored at the entries' positions; gq_i -= scale sum_j w_ij k_j. With gk given (one
   thread only) the column pass's updates are made here too, entry by entry: chunks, and rows within a chunk, come in
   increasing order, so every column still sums its rows in increasing order, bit for bit as `drop_grad_cols`. */
/* One column's updates from the entries order[start..stop) (rows rowof[..], increasing). */
static inline __attribute__((always_inline)) void column_updates_SUFFIX(
        real *gkj, real *gvj, const real *q, const real *gp, const int64_t *order, const int32_t *rowof,
        int64_t start, int64_t stop, const real *a, const real *w, real scale, int64_t d, int64_t dv) {
#if defined(__AVX512F__) && IS_SUFFIX
    if (d == 64 && dv == 64) {  /* the same fused multiply-adds as axpy, the two rows held in registers */
        float *gkf = (float *)gkj, *gvf = (float *)gvj;
        const float *qf = (const float *)q, *gf = (const float *)gp;
        __m512 g0 = _mm512_loadu_ps(gkf), g1 = _mm512_loadu_ps(gkf + 16), g2 = _mm512_loadu_ps(gkf + 32),
               g3 = _mm512_loadu_ps(gkf + 48), h0 = _mm512_loadu_ps(gvf), h1 = _mm512_loadu_ps(gvf + 16),
               h2 = _mm512_loadu_ps(gvf + 32), h3 = _mm512_loadu_ps(gvf + 48);
        for (int64_t s = start; s < stop; s++) {
            int64_t e = order[s], i = rowof[s];
            const float *qi = qf + i * 64, *gi = gf + i * 64;
            __m512 x = _mm512_set1_ps((float)(-scale * w[e])), y = _mm512_set1_ps((float)(-a[e]));
            g0 = _mm512_fmadd_ps(x, _mm512_loadu_ps(qi), g0);
            g1 = _mm512_fmadd_ps(x, _mm512_loadu_ps(qi + 16), g1);
            g2 = _mm512_fmadd_ps(x, _mm512_loadu_ps(qi + 32), g2);
            g3 = _mm512_fmadd_ps(x, _mm512_loadu_ps(qi + 48), g3);
            h0 = _mm512_fmadd_ps(y, _mm512_loadu_ps(gi), h0);
            h1 = _mm512_fmadd_ps(y, _mm512_loadu_ps(gi + 16), h1);
            h2 = _mm512_fmadd_ps(y, _mm512_loadu_ps(gi + 32), h2);
            h3 = _mm512_fmadd_ps(y, _mm512_loadu_ps(gi + 48), h3);
        }
        _mm512_storeu_ps(gkf, g0); _mm512_storeu_ps(gkf + 16, g1);
        _mm512_storeu_ps(gkf + 32, g2); _mm512_storeu_ps(gkf + 48, g3);
        _mm512_storeu_ps(gvf, h0); _mm512_storeu_ps(gvf + 16, h1);
        _mm512_storeu_ps(gvf + 32, h2); _mm512_storeu_ps(gvf + 48, h3);
        return;
    }
#endif
    for (int64_t s = start; s < stop; s++) {
        int64_t e = order[s], i = rowof[s];
        axpy_SUFFIX(gkj, -scale * w[e], q + i * d, d);
        axpy_SUFFIX(gvj, -a[e], gp + i * dv, dv);
    }
}

/* The column updates of rows [i0, i1) in columns [c0, c0 + width), row i's entries at seg0[i - i0] ..
   seg1[i - i0]: bucketed by column (stable: rows stay increasing), then each gk / gv row updated in one burst while
   it sits in registers (count: width + 1 slots; order, rowof: room for the entries). */
static inline __attribute__((always_inline)) void tile_columns_SUFFIX(
        real *gk, real *gv, const real *q, const real *gp, const int32_t *cols, const real *a, const real *w,
        real scale, int64_t i0, int64_t i1, const int64_t *seg0, const int64_t *seg1, int64_t c0, int64_t width,
        int64_t *count, int64_t *order, int32_t *rowof, int64_t d, int64_t dv) {
    memset(count, 0, sizeof(int64_t) * (size_t)(width + 1));
    for (int64_t i = i0; i < i1; i++)
        for (int64_t e = seg0[i - i0]; e < seg1[i - i0]; e++) count[cols[e] - c0 + 1]++;
    for (int64_t t = 0; t < width; t++) count[t + 1] += count[t];
    for (int64_t i = i0; i < i1; i++)
        for (int64_t e = seg0[i - i0]; e < seg1[i - i0]; e++) {
            int64_t slot = count[cols[e] - c0]++;
            order[slot] = e;
            rowof[slot] = (int32_t)i;
        }
    for (int64_t t = 0, start = 0; t < width; t++) {  /* count[t] is now the end of column t's run */
        int64_t stop = count[t], j = c0 + t;
#define COLUMN(D, DV) column_updates_SUFFIX(gk + j * D, gv + j * DV, q, gp, order, rowof, start, stop, a, w, scale, \
                                            D, DV)
        if (stop > start) WIDTHS(COLUMN);
#undef COLUMN
        start = stop;
    }
}

static inline __attribute__((always_inline)) void drop_grad_rows_body_SUFFIX(
        const real *gp, const real *k, const real *v, real *gq, const real *q, real *gk, real *gv, int64_t r0,
        int64_t r1, int64_t n_k, int64_t d, int64_t dv, real scale, const int64_t *offsets, int64_t base,
        const int32_t *cols, const real *a, real *w, int threads) {
    int64_t chunks = (r1 - r0 + CHUNK - 1) / CHUNK;
    #pragma omp parallel num_threads(threads)
    {
        real *acc = (real *)malloc(sizeof(real) * (size_t)(CHUNK * 4 * d));
        /* with gk: a chunk-tile's entries bucketed by column (stable: rows stay increasing), so each gk / gv row
           is updated in one burst while it sits in L1, with the chunk's q / g' rows */
        int64_t *order = gk ? (int64_t *)malloc(sizeof(int64_t) * (size_t)(CHUNK * TILE)) : NULL;
        int32_t *rowof = gk ? (int32_t *)malloc(sizeof(int32_t) * (size_t)(CHUNK * TILE)) : NULL;
        int64_t cur[CHUNK], seg0[CHUNK], seg1[CHUNK], count[TILE + 1];
        #pragma omp for schedule(static)
        for (int64_t ch = 0; ch < chunks; ch++) {
            int64_t i0 = r0 + ch * CHUNK, i1 = i0 + CHUNK < r1 ? i0 + CHUNK : r1;
            for (int64_t i = i0; i < i1; i++) cur[i - i0] = offsets[i] - base;
            memset(acc, 0, sizeof(real) * (size_t)(CHUNK * 4 * d));
            for (int64_t c0 = 0; c0 < n_k; c0 += TILE) {
                int64_t c1 = c0 + TILE;
                for (int64_t i = i0; i < i1; i++) {
                    int64_t e0 = cur[i - i0], end = offsets[i + 1] - base, e1 = e0;
                    while (e1 < end && cols[e1] < c1) e1++;
#define SEGMENT(D, DV) rows_segment_SUFFIX(gp + i * DV, k, v, cols, a, w, e0, e1, acc + (i - i0) * 4 * D, D, DV)
                    WIDTHS(SEGMENT);
#undef SEGMENT
                    seg0[i - i0] = e0;
                    seg1[i - i0] = cur[i - i0] = e1;
                }
                if (gk) tile_columns_SUFFIX(gk, gv, q, gp, cols, a, w, scale, i0, i1, seg0, seg1, c0, TILE, count, order,
                                            rowof, d, dv);
            }
            for (int64_t i = i0; i < i1; i++) {
                real *g = gq + i * d;
                const real *ac = acc + (i - i0) * 4 * d;
                #pragma omp simd
                for (int64_t c = 0; c < d; c++)
                    g[c] -= scale * ((ac[c] + ac[d + c]) + (ac[2 * d + c] + ac[3 * d + c]));
            }
        }
        free(rowof);
        free(order);
        free(acc);
    }
}

void drop_grad_rows_SUFFIX(const real *gp, const real *k, const real *v, real *gq, const real *q, real *gk, real *gv,
                           int64_t r0, int64_t r1, int64_t n_k, int64_t d, int64_t dv, real scale,
                           const int64_t *offsets, int64_t base, const int32_t *cols, const real *a, real *w,
                           int threads) {
    drop_grad_rows_body_SUFFIX(gp, k, v, gq, q, gk, gv, r0, r1, n_k, d, dv, scale, offsets, base, cols, a, w,
                               threads);
}

/* gk_j -= scale sum_i w_ij q_i, gv_j -= sum_i a_ij g'_i over rows [r0, r1): each thread owns a contiguous range of
   column tiles and walks all rows in chunks of COLS_CHUNK, bucketing each chunk-tile's entries by column as the
   fused row pass does (every column still sums its rows in increasing order). */
static inline __attribute__((always_inline)) void drop_grad_cols_body_SUFFIX(
        const real *q, const real *gp, real *gk, real *gv, int64_t r0, int64_t r1, int64_t n_k, int64_t d,
        int64_t dv, real scale, const int64_t *offsets, int64_t base, const int32_t *cols, const real *a,
        const real *w, int threads) {
    const int64_t tiles = (n_k + COLS_TILE - 1) / COLS_TILE, chunks = (r1 - r0 + COLS_CHUNK - 1) / COLS_CHUNK;
    #pragma omp parallel num_threads(threads)
    {
        const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        const int64_t t0 = tiles * t / nt, t1 = tiles * (t + 1) / nt;
        int64_t *order = (int64_t *)malloc(sizeof(int64_t) * (size_t)(COLS_CHUNK * COLS_TILE));
        int32_t *rowof = (int32_t *)malloc(sizeof(int32_t) * (size_t)(COLS_CHUNK * COLS_TILE));
        int64_t *seg0 = (int64_t *)malloc(sizeof(int64_t) * 3 * COLS_CHUNK), *seg1 = seg0 + COLS_CHUNK;
        int64_t *cur = seg1 + COLS_CHUNK, count[COLS_TILE + 1];
        for (int64_t ch = 0; ch < chunks && t0 < t1; ch++) {
            int64_t i0 = r0 + ch * COLS_CHUNK, i1 = i0 + COLS_CHUNK < r1 ? i0 + COLS_CHUNK : r1;
            for (int64_t i = i0; i < i1; i++)
                cur[i - i0] = first_at_least(cols, offsets[i] - base, offsets[i + 1] - base, t0 * COLS_TILE);
            for (int64_t tile = t0; tile < t1; tile++) {
                int64_t c0 = tile * COLS_TILE, c1 = c0 + COLS_TILE, width = c1 < n_k ? COLS_TILE : n_k - c0;
                for (int64_t i = i0; i < i1; i++) {
                    int64_t e1 = cur[i - i0], end = offsets[i + 1] - base;
                    seg0[i - i0] = e1;
                    while (e1 < end && cols[e1] < c1) e1++;
                    seg1[i - i0] = cur[i - i0] = e1;
                }
                tile_columns_SUFFIX(gk, gv, q, gp, cols, a, w, scale, i0, i1, seg0, seg1, c0, width, count, order,
                                    rowof, d, dv);
            }
        }
        free(seg0);
        free(rowof);
        free(order);
    }
}

void drop_grad_cols_SUFFIX(const real *q, const real *gp, real *gk, real *gv, int64_t r0, int64_t r1, int64_t n_k,
                           int64_t d, int64_t dv, real scale, const int64_t *offsets, int64_t base,
                           const int32_t *cols, const real *a, const real *w, int threads) {
    drop_grad_cols_body_SUFFIX(q, gp, gk, gv, r0, r1, n_k, d, dv, scale, offsets, base, cols, a, w, threads);
}
"""
