"""A small compiled C kernel for the row-wise passes of the blocked dropout attention (CPU).

Why: between its matrix products the blocked attention makes several whole-buffer passes per block (row max, exp2,
row sum, keep-mask bits, mask product; in the backward exp2, bits, two products). Each pass streams a block x N
buffer through memory, and the keep bits alone cost about a dozen integer tensor passes. This kernel does each
group in one cache-hot pass per row, with the mask bits made in registers:

* `forward_rows`:  P = exp2(S - rowmax) (row max and row sum returned), S <- P o M         (one pass after the max)
* `backward_probs`: P = exp2(S - lse) in place, PM <- P o M                                 (one pass)
* `backward_scores`: dS = PM o dP - P o D, in place in dP                                   (one pass)
* `sampled_row_dots`: <left_i, right_j> on the edges (i, j) of a sparse graph: the gradient of the learnable feature
  graph's edge values (spamo/model/sparse.py), which tensor operations gather as two edges x d copies.

M is the same keep mask as `attention.keep_mask_rows`: element e = row * cols + col of the call takes 16-bit lane
e % 4 of SplitMix64(key + (e // 4 + 1) * gamma) read as a signed int16, kept when >= threshold. It depends only on
(seed, row, col), so it is the same on any thread count and any block size. Rows are shared out with OpenMP
(torch's own libgomp, already loaded); `threads` comes from `torch.get_num_threads()`.

float32 uses its own exp2 (a degree-7 Taylor polynomial of 2^f on [-1/2, 1/2], relative error below 1e-8, and an
exponent-bit scale; inputs below -126 give 2^-126, a weight that no float32 row sum >= 1 can notice), so it
vectorises without -ffast-math (which would also change NaN handling); float64 calls libm's exp2 (tests).

The library is compiled once per machine with the system C compiler (`cc`, or `$CC`) into
`$SPAMO_CACHE_DIR/kernels` (default `~/.cache/spamo/kernels`), under a name hashed from the source, flags, compiler
and CPU, written atomically so concurrent processes (Ray workers) are safe. Without a compiler, or with
`SPAMO_ATTENTION_KERNEL=torch`, `load()` returns None and the attention uses tensor operations (same masks).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from spamo.model.attention_dropped import DROPPED_COMMON, DROPPED_TYPED
from spamo.model.attention_lists import DROPPED_LISTS
from spamo.model.attention_simd import DROPPED_SIMD

_COMMON = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#define GAMMA 0x9E3779B97F4A7C15ULL

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* 16-bit draws of elements [first, first + n) of the call's stream (scratch receives the 64-bit words). */
static inline const int16_t *draws(uint64_t key, int64_t first, int64_t n, uint64_t *scratch) {
    int64_t w0 = first >> 2, w1 = (first + n + 3) >> 2;
    uint64_t base = key + (uint64_t)(w0 + 1) * GAMMA;
    for (int64_t w = 0; w < w1 - w0; w++) scratch[w] = mix64(base + (uint64_t)w * GAMMA);
    return (const int16_t *)scratch + (first & 3);
}

static inline uint64_t *words_scratch(int64_t cols) {
    return (uint64_t *)malloc(sizeof(uint64_t) * (size_t)(cols / 4 + 3));
}

static inline float exp2_f32(float x) {
    /* 2^x = 2^r 2^f, r = x rounded to nearest (the 1.5 * 2^23 trick: no libm call, so the loop vectorises), f in
       [-1/2, 1/2], 2^f by its Taylor series to degree 7 (relative error < 1e-8). x below -126 gives 2^-126. */
    x = x < -126.0f ? -126.0f : x;
    float r = (x + 12582912.0f) - 12582912.0f;
    float f = x - r;
    float p = 1.52527338040598e-05f;
    p = p * f + 0.000154035303933816f;
    p = p * f + 0.00133335581464284f;
    p = p * f + 0.00961812910762848f;
    p = p * f + 0.0555041086648216f;
    p = p * f + 0.240226506959101f;
    p = p * f + 0.693147180559945f;
    p = p * f + 1.0f;
    int32_t bits = ((int32_t)r + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

/* The keep mask alone (tests, the dense reference, cross-checks of the tensor path). */
void keep_mask(uint8_t *out, int64_t rows, int64_t cols, int64_t row0, uint64_t key, int32_t threshold,
               int threads) {
    #pragma omp parallel num_threads(threads)
    {
        uint64_t *scratch = words_scratch(cols);
        #pragma omp for schedule(static)
        for (int64_t i = 0; i < rows; i++) {
            const int16_t *bits = draws(key, (row0 + i) * cols, cols, scratch);
            uint8_t *o = out + i * cols;
            for (int64_t j = 0; j < cols; j++) o[j] = (int32_t)bits[j] >= threshold;
        }
        free(scratch);
    }
}
"""

_TYPED = r"""
/* S (rows x cols, row-major) <- exp2(S - rowmax) o M; rowmax and the row sums of exp2(S - rowmax) returned. */
void forward_rows_SUFFIX(real *s, int64_t rows, int64_t cols, int64_t row0, uint64_t key, int32_t threshold,
                         real *rowmax, real *rowsum, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        uint64_t *scratch = words_scratch(cols);
        #pragma omp for schedule(static)
        for (int64_t i = 0; i < rows; i++) {
            const int16_t *bits = draws(key, (row0 + i) * cols, cols, scratch);
            real *x = s + i * cols;
            real m = x[0];
            #pragma omp simd reduction(max:m)
            for (int64_t j = 1; j < cols; j++) m = x[j] > m ? x[j] : m;
            double sum = 0.0;  /* chunks of 1024 summed in the vector lanes, chunk sums in double */
            for (int64_t c0 = 0; c0 < cols; c0 += 1024) {
                int64_t c1 = c0 + 1024 < cols ? c0 + 1024 : cols;
                real part = 0;
                #pragma omp simd reduction(+:part)
                for (int64_t j = c0; j < c1; j++) {
                    real e = EXP2(x[j] - m);
                    part += e;
                    x[j] = (int32_t)bits[j] >= threshold ? e : (real)0;
                }
                sum += (double)part;
            }
            rowmax[i] = m;
            rowsum[i] = (real)sum;
        }
        free(scratch);
    }
}

/* S <- P = exp2(S - lse) in place and kept <- P o M. */
void backward_probs_SUFFIX(real *s, real *kept, const real *lse, int64_t rows, int64_t cols, int64_t row0,
                           uint64_t key, int32_t threshold, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        uint64_t *scratch = words_scratch(cols);
        #pragma omp for schedule(static)
        for (int64_t i = 0; i < rows; i++) {
            const int16_t *bits = draws(key, (row0 + i) * cols, cols, scratch);
            real *x = s + i * cols;
            real *y = kept + i * cols;
            real l = lse[i];
            #pragma omp simd
            for (int64_t j = 0; j < cols; j++) {
                real e = EXP2(x[j] - l);
                x[j] = e;
                y[j] = (int32_t)bits[j] >= threshold ? e : (real)0;
            }
        }
        free(scratch);
    }
}

/* out[e] = <left[rows[e]], right[cols[e]]> for every edge e (a sampled dense-dense product on a sparse support:
   the gradient of a graph's edge values), without the edges x d gathers tensor operations need. */
void sampled_row_dots_SUFFIX(const real *left, const real *right, const int64_t *rows, const int64_t *cols,
                             int64_t edges, int64_t d, real *out, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t e = 0; e < edges; e++) {
        const real *a = left + rows[e] * d;
        const real *b = right + cols[e] * d;
        real acc = 0;
        #pragma omp simd reduction(+:acc)
        for (int64_t k = 0; k < d; k++) acc += a[k] * b[k];
        out[e] = acc;
    }
}

/* dP <- dS = (P o M) o dP - P o D (D the per-row softmax-backward term), in place. */
void backward_scores_SUFFIX(real *dp, const real *probs, const real *kept, const real *rowdot, int64_t rows,
                            int64_t cols, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < rows; i++) {
        real *g = dp + i * cols;
        const real *p = probs + i * cols;
        const real *pm = kept + i * cols;
        real d = rowdot[i];
        #pragma omp simd
        for (int64_t j = 0; j < cols; j++) g[j] = pm[j] * g[j] - p[j] * d;
    }
}
"""

SOURCE = _COMMON + DROPPED_COMMON + DROPPED_LISTS + DROPPED_SIMD + "".join(
    (_TYPED + DROPPED_TYPED).replace("SUFFIX", suffix).replace("real", real).replace("EXP2", exp2)
    for suffix, real, exp2 in (("f32", "float", "exp2_f32"), ("f64", "double", "exp2"))
)

FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", "-fPIC", "-shared", "-std=c11"]

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_loaded = False
_why_not = ""


def cache_dir() -> Path:
    """Where compiled kernels live: $SPAMO_CACHE_DIR/kernels, else ~/.cache/spamo/kernels (XDG_CACHE_HOME honoured)."""
    root = os.environ.get("SPAMO_CACHE_DIR")
    if root:
        return Path(root) / "kernels"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "spamo" / "kernels"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor()


def _compile(compiler: str) -> Path:
    digest = hashlib.sha256("\n".join([SOURCE, " ".join(FLAGS), compiler, platform.machine(), _cpu_model()])
                            .encode()).hexdigest()[:16]
    target = cache_dir() / f"attention_{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        source = Path(tmp) / "attention.c"
        source.write_text(SOURCE)
        built = Path(tmp) / "attention.so"
        proc = subprocess.run([compiler, *FLAGS, str(source), "-o", str(built), "-lm"], capture_output=True,
                              text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "compiler failed")
        os.replace(built, target)  # atomic: a concurrent process sees the old state or the whole library
    return target


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, u64, i32, c = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_int32, ctypes.c_int
    for name in ("f32", "f64"):
        getattr(lib, f"forward_rows_{name}").argtypes = [p, i64, i64, i64, u64, i32, p, p, c]
        getattr(lib, f"backward_probs_{name}").argtypes = [p, p, p, i64, i64, i64, u64, i32, c]
        getattr(lib, f"backward_scores_{name}").argtypes = [p, p, p, p, i64, i64, c]
        getattr(lib, f"sampled_row_dots_{name}").argtypes = [p, p, p, p, i64, i64, p, c]
        real = ctypes.c_float if name == "f32" else ctypes.c_double
        getattr(lib, f"drop_forward_{name}").argtypes = [p, p, p, p, p, i64, i64, i64, i64, i64, ctypes.c_double,
                                                         real, p, i64, p, p, c]
        getattr(lib, f"drop_grad_rows_{name}").argtypes = [p, p, p, p, p, p, p, i64, i64, i64, i64, i64, real, p,
                                                           i64, p, p, p, c]
        getattr(lib, f"drop_grad_cols_{name}").argtypes = [p, p, p, p, i64, i64, i64, i64, i64, real, p, i64, p, p,
                                                           p, c]
        for fn in ("drop_forward", "drop_grad_rows", "drop_grad_cols"):
            getattr(lib, f"{fn}_{name}").restype = None
    lib.drop_counts.argtypes = [p, i64, i64, i64, u64, i32, c]
    lib.drop_counts.restype = None
    lib.drop_lists.argtypes = [p, p, i64, i64, i64, i64, u64, i32, c]
    lib.drop_lists.restype = c
    lib.keep_mask.argtypes = [p, i64, i64, i64, u64, i32, c]
    for fn in ("forward_rows_f32", "forward_rows_f64", "backward_probs_f32", "backward_probs_f64",
               "backward_scores_f32", "backward_scores_f64", "sampled_row_dots_f32", "sampled_row_dots_f64",
               "keep_mask"):
        getattr(lib, fn).restype = None
    return lib


def load() -> ctypes.CDLL | None:
    """The compiled kernel library, building it on first use; None where it cannot be built (see `why_not()`)."""
    global _library, _loaded, _why_not
    if _loaded:
        return _library
    with _lock:
        if _loaded:
            return _library
        try:
            if os.environ.get("SPAMO_ATTENTION_KERNEL", "").lower() == "torch":
                raise RuntimeError("SPAMO_ATTENTION_KERNEL=torch")
            compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
            if not compiler:
                raise RuntimeError("no C compiler (cc, gcc or $CC) on PATH")
            import torch  # noqa: F401  (torch's libgomp must be loaded first so the kernel shares its OpenMP pool)

            _library = _bind(ctypes.CDLL(str(_compile(compiler))))
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            _library, _why_not = None, str(error)
        _loaded = True
    return _library


def sampled_row_dots(left, right, rows, cols):
    """<left[rows[e]], right[cols[e]]> per edge through the kernel, or None where it does not apply.

    Applies to CPU float32 / float64 matrices of one dtype and int64 edge indices; the caller falls back to tensor
    operations on None (no compiler, CUDA, other dtypes). The per-edge sum order is fixed: thread-count invariant.
    """
    import torch

    if (left.device.type != "cpu" or right.device.type != "cpu" or left.dtype != right.dtype
            or left.dtype not in (torch.float32, torch.float64) or rows.dtype != torch.int64
            or cols.dtype != torch.int64 or left.shape[1] != right.shape[1]):
        return None
    lib = load()
    if lib is None:
        return None
    left, right, rows, cols = (t.contiguous() for t in (left, right, rows, cols))
    out = torch.empty(rows.numel(), dtype=left.dtype)
    fn = lib.sampled_row_dots_f32 if left.dtype == torch.float32 else lib.sampled_row_dots_f64
    fn(left.data_ptr(), right.data_ptr(), rows.data_ptr(), cols.data_ptr(), rows.numel(), left.shape[1],
       out.data_ptr(), torch.get_num_threads())
    return out


def why_not() -> str:
    """Why `load()` returned None ('' when the kernel is in use or not tried yet)."""
    return _why_not
