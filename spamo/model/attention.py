"""Single-head attention over all N spots without ever holding the N x N score matrix.

* dropout off (evaluation, or dropout 0): `scaled_dot_product_attention`, whose CPU kernel is fused and frugal;
* dropout on CUDA: the same call with `dropout_p` (GPU kernels drop out inside the fused kernel);
* dropout on CPU: the CPU kernel would fall back to a path that builds N x N, so `BlockedDropoutAttention`
  processes blocks of queries and recomputes each block's softmax-dropout-product in the backward pass. The keep
  mask is a pure function of (call seed, query row, key column), regenerated wherever it is needed, so forward and
  backward see the same mask and no mask is ever stored whole. Memory: a few block x N buffers, reused.

Keep masks use 16 random bits per weight: a weight is dropped with probability round(p * 65536) / 65536, within
2^-17 of p, and kept weights are scaled by the inverse of the realised keep probability so the expectation is exact.
The bits are SplitMix64 (Steele, Lea and Flood 2014) seeded per call: element e = row * N_keys + col takes 16-bit
lane e % 4 of word e // 4 of the stream. Every draw depends only on (seed, row, col): the mask is the same on any
thread count and any block size.

Two interchangeable backends compute the blocked function (same masks, same formulas, results equal to float
rounding): "compiled" runs the row-wise passes (exp2, row sums, mask bits, mask products) in a small C kernel
(`attention_kernel.py`), one cache-hot pass per row instead of about twenty whole-buffer tensor passes per block;
"tensor" uses torch tensor operations only, for machines without a C compiler. A third, "flash"
(`attention_flash.py`), computes the same function (same masks) as PyTorch's fused kernel without dropout minus
sparse corrections over the dropped weights; it is the default for large problems (`default_backend`).

Precision (`SpamoConfig.attention_precision`, `PRECISIONS`): everything above is float32 (or float64), exact. The
"bfloat16" option, for very large problems on a GPU, hands PyTorch's fused CUDA kernel q, k and v in bfloat16: its
flash and memory-efficient kernels keep scores, softmax statistics and sums in float32 and round the weights (and
their gradients) to bfloat16 only as inputs of matrix products; the output comes back in q's dtype and gradients
flow back in it. On CPU it runs only without dropout (evaluation): a bfloat16 copy of the blocked backends measured
0-12% faster than float32, 0% on 2 threads (the conversions cost what the cheaper products save;
benchmarks/results/train.md), so training on CPU is refused up front (`spamo.training.check_device`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from spamo import _compat
from spamo.model import attention_flash, attention_kernel

_BITS = 16
_LEVELS = 1 << _BITS
_LOG2_E = 1.0 / math.log(2.0)
# block x N buffers: 2^22 elements (16 MB float32) measured best for the tensor backend on 2 cores (per-op overhead
# vs memory); the compiled backend's passes are row-wise, so smaller blocks keep a block's buffers in L2 between the
# matrix product that writes them and the pass that reads them (measured: benchmarks/results/train.md).
CACHE_BLOCK_ELEMENTS = 2**22
KERNEL_BLOCK_ELEMENTS = 2**18
BACKENDS = ("flash", "compiled", "tensor")
FLASH_MIN_PAIRS = 7000 * 7000  # the measured crossover of the flash and compiled backends (default_backend)
# spamo.choices.ATTENTION_PRECISIONS -> the dtype q, k, v are rounded to (None: computed in their own dtype, exact)
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}

_U64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment and its two output multipliers
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed(x: int) -> int:
    """A 64-bit pattern as the int64 value torch stores (two's complement)."""
    x &= _U64
    return x - (1 << 64) if x >> 63 else x


def _mix64(z: int) -> int:
    """SplitMix64's output function on a Python int."""
    z = ((z ^ (z >> 30)) * _MIX1) & _U64
    z = ((z ^ (z >> 27)) * _MIX2) & _U64
    return z ^ (z >> 31)


def effective_drop_probability(p: float) -> float:
    """The drop probability the 16-bit keep masks realise for a requested p."""
    return round(p * _LEVELS) / _LEVELS


def _threshold(p: float) -> int:
    """The int16 value below which a weight is dropped."""
    return -(_LEVELS // 2) + round(p * _LEVELS)


def call_key(seed: int) -> int:
    """The SplitMix64 seed of one attention call (its stream: word w = mix64(key + (w + 1) * gamma))."""
    return _mix64(seed & _U64)


def default_backend(n_queries: int = 0, n_keys: int = 0) -> str:
    """The fastest backend that runs here for an n_queries x n_keys attention (0, 0: the largest problems).

    "tensor" without the C kernel; else "flash" (fused kernel + dropped-entry passes) from `FLASH_MIN_PAIRS` weights
    on, where torch has the fused CPU ops; else "compiled". The crossover comes from one direction alone, side by
    side, one thread, N x N, d 64: compiled ahead at 2,500 and 5,000 spots, flash from 10,000 on. The whole epoch
    now (benchmarks/results/train.md, profile_epoch.py, one thread, epoch / no-dropout floor): 2,500 spots compiled
    1.37x (quiet window; 1.60x against flash 1.64x in the loaded hour before it), 10,000 spots flash 1.32x against
    compiled 1.35x, 30,000 spots flash 1.51x.
    """
    if attention_kernel.load() is None:
        return "tensor"
    if not _compat.flash_attention_cpu_available():
        return "compiled"
    return "compiled" if 0 < n_queries * n_keys < FLASH_MIN_PAIRS else "flash"


class _TensorMasks:
    """Keep masks from whole-tensor integer operations (the "tensor" backend).

    The integer work runs on int64 tensors, whose right shift is arithmetic, so every shift is followed by a mask to
    make it logical; the words of rows [r0, r1) are viewed as int16 lanes starting at lane (r0 * cols) % 4.
    """

    def __init__(self, seed: int, p: float, cols: int, max_rows: int):
        self.key = call_key(seed)
        self.cols = cols
        self.threshold = _threshold(p)
        words = (max_rows * cols + 3) // 4 + 1
        self.counter = torch.arange(words, dtype=torch.int64).mul_(_signed(_GAMMA))
        self.words = torch.empty(words, dtype=torch.int64)
        self.scratch = torch.empty(words, dtype=torch.int64)

    def _xorshift(self, z: torch.Tensor, scratch: torch.Tensor, shift: int) -> None:
        torch.bitwise_right_shift(z, shift, out=scratch)
        scratch.bitwise_and_((1 << (64 - shift)) - 1)
        z.bitwise_xor_(scratch)

    def fill(self, first_row: int, out: torch.Tensor) -> torch.Tensor:
        """Write the 0/1 keep weights of rows [first_row, first_row + len(out)) into the buffer `out`; return it.

        A float mask (one comparison into a float buffer) multiplies faster than boolean masking on CPU.
        """
        first = first_row * self.cols
        n = out.numel()
        w0 = first >> 2
        count = ((first + n + 3) >> 2) - w0
        z, scratch = self.words[:count], self.scratch[:count]
        torch.add(self.counter[:count], _signed(self.key + (w0 + 1) * _GAMMA), out=z)
        self._xorshift(z, scratch, 30)
        z.mul_(_signed(_MIX1))
        self._xorshift(z, scratch, 27)
        z.mul_(_signed(_MIX2))
        self._xorshift(z, scratch, 31)
        lane = first & 3
        bits = z.view(torch.int16)[lane: lane + n].view(out.shape)
        return torch.ge(bits, self.threshold, out=out)


def attention_keep_mask(seed: int, rows: int, cols: int, p: float, first_row: int = 0,
                        backend: str = "tensor") -> torch.Tensor:
    """The boolean keep mask of query rows [first_row, first_row + rows) x all `cols` keys of a call seeded `seed`.

    Deterministic in (seed, rows, cols, p, first_row) and the same from either backend: the backward pass, the dense
    test reference and the tests rebuild it.
    """
    if backend == "compiled":
        lib = attention_kernel.load()
        if lib is None:
            raise RuntimeError(f"compiled attention kernel unavailable: {attention_kernel.why_not()}")
        out = torch.empty(rows, cols, dtype=torch.uint8)
        lib.keep_mask(out.data_ptr(), rows, cols, first_row, call_key(seed), _threshold(p), torch.get_num_threads())
        return out.bool()
    masks = _TensorMasks(seed, p, cols, rows)
    return masks.fill(first_row, torch.empty(rows, cols)).bool()


def _compiled_forward(lib, q_scaled, k_t, v, out, logsumexp, key, threshold, keep_scale, rows):
    n_queries, n_keys = q_scaled.shape[0], k_t.shape[1]
    suffix = "f32" if q_scaled.dtype == torch.float32 else "f64"
    forward_rows = getattr(lib, f"forward_rows_{suffix}")
    threads = torch.get_num_threads()
    row_max = torch.empty(n_queries, 1, dtype=q_scaled.dtype)
    row_sum = torch.empty(n_queries, 1, dtype=q_scaled.dtype)
    weights_buffer = torch.empty(rows, n_keys, dtype=q_scaled.dtype)
    for start in range(0, n_queries, rows):
        stop = min(start + rows, n_queries)
        weights = weights_buffer[: stop - start]
        torch.mm(q_scaled[start:stop], k_t, out=weights)
        forward_rows(weights.data_ptr(), stop - start, n_keys, start, key, threshold, row_max[start:].data_ptr(),
                     row_sum[start:].data_ptr(), threads)
        torch.mm(weights, v, out=out[start:stop])
    out.mul_(row_sum.reciprocal().mul_(keep_scale))
    torch.add(row_max, row_sum.log2_(), out=logsumexp)


def _tensor_forward(q_scaled, k_t, v, out, logsumexp, seed, p, keep_scale, rows):
    n_queries, n_keys = q_scaled.shape[0], k_t.shape[1]
    weights_buffer, keep_buffer = (torch.empty(rows, n_keys, dtype=q_scaled.dtype) for _ in range(2))
    masks = _TensorMasks(seed, p, n_keys, rows)
    for start in range(0, n_queries, rows):
        stop = min(start + rows, n_queries)
        weights, keep = weights_buffer[: stop - start], keep_buffer[: stop - start]
        torch.mm(q_scaled[start:stop], k_t, out=weights)
        row_max = weights.amax(dim=1, keepdim=True)
        weights.sub_(row_max).exp2_()
        row_sum = weights.sum(dim=1, keepdim=True)
        logsumexp[start:stop] = row_max + row_sum.log2()  # base 2
        weights.mul_(masks.fill(start, keep))
        torch.mm(weights, v, out=out[start:stop])
        out[start:stop].mul_(keep_scale / row_sum)


class BlockedDropoutAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d)) with dropout, times v, block by block over the queries (exact, memory O(block N)).

    Every pass over a block x N buffer costs time, so constant factors (1/sqrt(d), the keep scale, log2(e)) are
    folded into the small N x d or block x d operands, block x N buffers are allocated once per call, scores are
    kept in base 2 (exp2 is cheaper than exp on CPU: softmax is the same function), and the backward pass uses
    dS = (P o M) o dP' - P o D (dP' = keep-scaled dO V^T, D the row term) to save a pass.

    `backend` is "compiled" (C kernel row passes) or "tensor" (torch operations); both give the same function.
    """

    @staticmethod
    def forward(ctx, q, k, v, p: float, seed: int, block_size: int, backend: str = "tensor"):  # type: ignore[override]
        lib = attention_kernel.load() if backend == "compiled" else None
        if backend == "compiled" and lib is None:
            raise RuntimeError(f"compiled attention kernel unavailable: {attention_kernel.why_not()}")
        if lib is not None:
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        scale = 1.0 / math.sqrt(q.shape[-1])
        keep_scale = 1.0 / (1.0 - effective_drop_probability(p))
        n_queries = q.shape[0]
        q_scaled, k_t = q * (scale * _LOG2_E), k.t()  # scores in base 2: s * log2(e)
        out = torch.empty(n_queries, v.shape[1], dtype=q.dtype, device=q.device)
        logsumexp = torch.empty(n_queries, 1, dtype=q.dtype, device=q.device)
        rows = min(block_size, n_queries)
        if lib is not None:
            _compiled_forward(lib, q_scaled, k_t, v, out, logsumexp, call_key(seed), _threshold(p), keep_scale, rows)
        else:
            _tensor_forward(q_scaled, k_t, v, out, logsumexp, seed, p, keep_scale, rows)
        ctx.save_for_backward(q, k, v, out, logsumexp)
        ctx.settings = (p, seed, block_size, scale, keep_scale, lib)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, out, logsumexp = ctx.saved_tensors
        p, seed, block_size, scale, keep_scale, lib = ctx.settings
        grad_out = grad_out.contiguous()
        n_queries, n_keys = q.shape[0], k.shape[0]
        q_scaled, k_t, v_t = q * (scale * _LOG2_E), k.t(), v.t()
        grad_scaled = grad_out * keep_scale  # the keep scale moved onto the small operand
        grad_q = torch.empty_like(q)
        grad_k = torch.zeros_like(k)
        grad_v = torch.zeros_like(v)
        # D_i = sum_j P_ij dP_ij = <grad_out_i, out_i>  (the softmax-backward row term)
        row_dot = (grad_out * out).sum(dim=1, keepdim=True)
        rows = min(block_size, n_queries)
        buffers = [torch.empty(rows, n_keys, dtype=q.dtype) for _ in range(3)]
        if lib is not None:
            suffix = "f32" if q.dtype == torch.float32 else "f64"
            probs_pass, scores_pass = getattr(lib, f"backward_probs_{suffix}"), getattr(lib, f"backward_scores_{suffix}")
            key, threshold, threads = call_key(seed), _threshold(p), torch.get_num_threads()
        else:
            masks = _TensorMasks(seed, p, n_keys, rows)
        for start in range(0, n_queries, rows):
            stop = min(start + rows, n_queries)
            probs, kept_probs, grad_scores = (b[: stop - start] for b in buffers)
            if lib is not None:
                torch.mm(q_scaled[start:stop], k_t, out=probs)
                probs_pass(probs.data_ptr(), kept_probs.data_ptr(), logsumexp[start:].data_ptr(), stop - start,
                           n_keys, start, key, threshold, threads)
            else:
                torch.addmm(logsumexp[start:stop], q_scaled[start:stop], k_t, beta=-1.0, out=probs).exp2_()
                masks.fill(start, kept_probs).mul_(probs)
            grad_v.addmm_(kept_probs.t(), grad_scaled[start:stop])
            torch.mm(grad_scaled[start:stop], v_t, out=grad_scores)
            # dS = P o (M o dP' - D) = (P o M) o dP' - P o D, without the 1/sqrt(d) factor
            if lib is not None:
                scores_pass(grad_scores.data_ptr(), probs.data_ptr(), kept_probs.data_ptr(),
                            row_dot[start:].data_ptr(), stop - start, n_keys, threads)
            else:
                grad_scores.mul_(kept_probs).addcmul_(probs, row_dot[start:stop], value=-1.0)
            torch.mm(grad_scores, k, out=grad_q[start:stop])
            grad_k.addmm_(grad_scores.t(), q[start:stop], alpha=scale)
        grad_q.mul_(scale)
        return grad_q, grad_k, grad_v, None, None, None, None


def _fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """PyTorch's fused kernel on (batch 1, head 1, N, d) views.

    The 4-D layout matters: given 3-D (1, N, d) inputs the CPU dispatcher takes the math path, which builds the
    N x N matrix (measured at N = 10,000: 1.4 GiB and 1.18 s per forward + backward, against 0.27 GiB and 0.67 s).
    """
    return F.scaled_dot_product_attention(q[None, None], k[None, None], v[None, None], dropout_p=dropout_p)[0, 0]


def _low_precision(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float,
                   dtype: torch.dtype) -> torch.Tensor:
    """The fused kernel on q, k, v rounded to `dtype` (float32 accumulation inside it); the output in q's dtype."""
    if dropout_p > 0.0 and q.device.type != "cuda":
        raise ValueError(f"{dtype} attention with dropout needs a CUDA device (got {q.device}): PyTorch's CPU "
                         "kernel would build the N x N weights")
    return _fused(q.to(dtype), k.to(dtype), v.to(dtype), dropout_p).to(q.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float, block_size: int = 512,
              backend: str | None = None, precision: str = "float32") -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with dropout `dropout_p` on the weights; q, k, v are (N, d) matrices.

    On CPU `block_size` is an upper bound on the query rows per block: blocks are capped so one block x N buffer
    holds at most `KERNEL_BLOCK_ELEMENTS` ("compiled") or `CACHE_BLOCK_ELEMENTS` ("tensor"); `backend` defaults to
    `default_backend()`. The mask does not depend on the block size or the backend. `precision` is a name of
    `PRECISIONS`: "float32" computes in q's dtype (exact), "bfloat16" see the module docstring.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"attention precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    if PRECISIONS[precision] is not None:
        return _low_precision(q, k, v, dropout_p, PRECISIONS[precision])
    if dropout_p <= 0.0:
        return _fused(q, k, v, 0.0)
    if q.device.type != "cpu":
        return _fused(q, k, v, dropout_p)
    seed = int(torch.randint(0, 2**62, (1,)).item())  # drawn from torch's seeded generator
    backend = backend or default_backend(q.shape[0], k.shape[0])
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "flash":
        if attention_flash.available(q, k, v):
            keep_scale = 1.0 / (1.0 - effective_drop_probability(dropout_p))
            return attention_flash.FlashDropoutAttention.apply(q, k, v, call_key(seed), _threshold(dropout_p),
                                                               keep_scale)
        backend = "compiled"  # the same function and masks without the fused ops
    if backend == "compiled" and (q.dtype not in (torch.float32, torch.float64) or attention_kernel.load() is None):
        backend = "tensor"
    budget = KERNEL_BLOCK_ELEMENTS if backend == "compiled" else CACHE_BLOCK_ELEMENTS
    rows = max(16, min(block_size, budget // max(k.shape[0], 1)))
    return BlockedDropoutAttention.apply(q, k, v, dropout_p, seed, rows, backend)
