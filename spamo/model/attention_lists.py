"""C source that enumerates the DROPPED attention weights of the flash backend: per row, the columns whose draw is
below the threshold (compiled with the rest of attention_kernel.py).

Why one pass: the dropped set D is what the sparse passes of attention_dropped.py walk, stored as increasing column
lists with row offsets. Counting the rows first (for the offsets) and then enumerating them makes every one of the
N^2 draws twice, and enumerating inside the forward's tile loop competed for L2 with the gathered k / v tiles
(measured at 10,000 spots, one thread: 3-5 ns per dropped entry, against ~1 for a counting pass). `drop_lists`
makes the draws once, in a streaming pass: threads own contiguous row ranges, write their rows at a provisional
place (their share of a capacity the caller sizes from the expected count plus a margin of many standard
deviations), then the ranges are moved together. The layout is that of one thread walking the rows in order, so
it does not depend on the thread count. Should a range overflow its share (never seen; the margin makes it a
many-sigma event), the call says so and the caller counts exactly (`drop_counts`) and retries on one thread.

The draws are those of the dense keep mask (`draws`: per (seed, row, col)), kept when >= threshold.
"""

DROPPED_LISTS = r"""
#include <omp.h>
#define LIST_THREADS 256

/* |D_i| for rows [r0, r1) into counts[0 .. r1 - r0): the number of draws below the threshold. */
void drop_counts(int64_t *counts, int64_t r0, int64_t r1, int64_t cols, uint64_t key, int32_t threshold,
                 int threads) {
    #pragma omp parallel num_threads(threads)
    {
        uint64_t *scratch = words_scratch(cols);
        #pragma omp for schedule(static)
        for (int64_t i = r0; i < r1; i++) {
            const int16_t *bits = draws(key, i * cols, cols, scratch);
            int64_t c = 0;
            #pragma omp simd reduction(+:c)
            for (int64_t j = 0; j < cols; j++) c += (int32_t)bits[j] < threshold;
            counts[i - r0] = c;
        }
        free(scratch);
    }
}

/* The dropped columns of row i, increasing, into rowbuf (cols + 16 slots: the 16-lane stores stay inside it);
   returns their number. */
static inline int64_t dropped_columns(uint64_t key, int64_t i, int64_t cols, int32_t threshold, uint64_t *scratch,
                                      int32_t *rowbuf) {
    const int16_t *bits = draws(key, i * cols, cols, scratch);
    int64_t n = 0, j = 0;
#ifdef __AVX512F__
    /* 16 columns at a time: compare, compress the dropped columns' indices into a register, store, count */
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i limit = _mm512_set1_epi32(threshold);
    for (; j + 16 <= cols; j += 16) {
        __m512i b = _mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)(bits + j)));
        __mmask16 m = _mm512_cmplt_epi32_mask(b, limit);
        __m512i idx = _mm512_add_epi32(lane, _mm512_set1_epi32((int32_t)j));
        _mm512_storeu_si512((void *)(rowbuf + n), _mm512_maskz_compress_epi32(m, idx));
        n += __builtin_popcount((unsigned)m);
    }
#endif
    for (; j < cols; j++) {  /* branch-free: every column is written, the cursor moves on the dropped ones */
        rowbuf[n] = (int32_t)j;
        n += (int32_t)bits[j] < threshold;
    }
    return n;
}

/* The dropped columns of rows [r0, r1) into list[0 ..), row after row, and offsets[i + 1] for i in [r0, r1)
   (offsets[r0] given: row i's columns are list[offsets[i] - offsets[r0] .. offsets[i + 1] - offsets[r0])).
   Returns 1, or 0 when a thread's share of `capacity` was too small (then list and offsets are unusable). */
int drop_lists(int64_t *offsets, int32_t *list, int64_t capacity, int64_t r0, int64_t r1, int64_t cols,
               uint64_t key, int32_t threshold, int threads) {
    int64_t used[LIST_THREADS], start[LIST_THREADS];
    int ok = 1, team = 1;
    const int64_t rows = r1 - r0, base = offsets[r0];
    if (threads > LIST_THREADS) threads = LIST_THREADS;
    #pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        const int64_t a0 = r0 + rows * t / nt, a1 = r0 + rows * (t + 1) / nt;
        const int64_t lo = (int64_t)((double)capacity * (double)(a0 - r0) / (double)rows);
        const int64_t hi = t + 1 == nt ? capacity : (int64_t)((double)capacity * (double)(a1 - r0) / (double)rows);
        uint64_t *scratch = words_scratch(cols);
        int32_t *rowbuf = (int32_t *)malloc(sizeof(int32_t) * (size_t)(cols + 16));
        int64_t pos = lo;
        for (int64_t i = a0; i < a1; i++) {
            int64_t n = dropped_columns(key, i, cols, threshold, scratch, rowbuf);
            if (pos + n > hi) {
                #pragma omp atomic write
                ok = 0;
                break;
            }
            memcpy(list + pos, rowbuf, sizeof(int32_t) * (size_t)n);
            pos += n;
            offsets[i + 1] = pos - lo;  /* within the thread's range for now */
        }
        free(rowbuf);
        free(scratch);
        used[t] = pos - lo;
        start[t] = lo;
        #pragma omp single
        team = nt;
        #pragma omp single  /* the ranges moved together, in thread order (each moves down: no overlap ahead) */
        if (ok) {
            int64_t dest = 0;
            for (int s = 0; s < team; s++) {
                if (start[s] != dest) memmove(list + dest, list + start[s], sizeof(int32_t) * (size_t)used[s]);
                start[s] = dest;
                dest += used[s];
            }
        }
        if (ok)
            for (int64_t i = a0; i < a1; i++) offsets[i + 1] += base + start[t];
    }
    return ok;
}
"""
