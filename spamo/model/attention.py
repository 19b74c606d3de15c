"""Single-head attention over all N spots without ever holding the N x N score matrix.

* dropout off (evaluation, or dropout 0): `scaled_dot_product_attention`, whose CPU kernel is fused and frugal;
* dropout on CUDA: the same call with `dropout_p` (GPU kernels drop out inside the fused kernel);
* dropout on CPU: the CPU kernel would fall back to a path that builds N x N, so `BlockedDropoutAttention`
  processes blocks of queries and recomputes each block's softmax-dropout-product in the backward pass. The dropout
  mask of a block is regenerated from a per-block seed (`attention_keep_mask`), so forward and backward see the same
  mask and no mask is ever stored whole. Memory: a few block x N buffers, reused from block to block.

Keep masks use 16 random bits per weight: a weight is dropped with probability round(p * 65536) / 65536, within
2^-17 of p, and kept weights are scaled by the inverse of the realised keep probability so the expectation is exact.
The bits are SplitMix64 outputs (Steele, Lea and Flood 2014) of a counter keyed per (call, block), computed with
whole-tensor integer operations: every draw depends only on (seed, block, position), so the mask is the same on any
thread count, and it costs about half of torch's single-threaded Mersenne Twister, which dominated the blocked kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_BITS = 16
_LEVELS = 1 << _BITS
_LOG2_E = 1.0 / math.log(2.0)
CACHE_BLOCK_ELEMENTS = 2**22  # block x N buffers of 16 MB (float32): measured best on 2 cores (per-op overhead vs cache)

_U64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment and its two output multipliers
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed(x: int) -> int:
    """A 64-bit pattern as the int64 value torch stores (two's complement)."""
    x &= _U64
    return x - (1 << 64) if x >> 63 else x


def _mix64(z: int) -> int:
    """SplitMix64's output function on a Python int (used to derive per-block keys)."""
    z = ((z ^ (z >> 30)) * _MIX1) & _U64
    z = ((z ^ (z >> 27)) * _MIX2) & _U64
    return z ^ (z >> 31)


def effective_drop_probability(p: float) -> float:
    """The drop probability the 16-bit keep masks realise for a requested p."""
    return round(p * _LEVELS) / _LEVELS


class _KeepMasks:
    """Keep masks of one attention call: uniform 16-bit draws compared with a threshold, block by block.

    Block b's 64-bit words are mix64(key_b + (j + 1) * gamma), j = 0, 1, ... with key_b = mix64(mix64(seed) + b);
    each word gives four 16-bit draws. The integer work runs on int64 tensors, whose right shift is arithmetic, so
    every shift is followed by a mask to make it logical.
    """

    def __init__(self, seed: int, p: float, max_elements: int):
        self.key = _mix64(seed & _U64)
        self.threshold = -(_LEVELS // 2) + round(p * _LEVELS)  # int16 value below which a weight is dropped
        words = (max_elements + 3) // 4
        self.counter = torch.arange(1, words + 1, dtype=torch.int64).mul_(_signed(_GAMMA))
        self.words = torch.empty(words, dtype=torch.int64)
        self.scratch = torch.empty(words, dtype=torch.int64)

    def _xorshift(self, z: torch.Tensor, scratch: torch.Tensor, shift: int) -> None:
        torch.bitwise_right_shift(z, shift, out=scratch)
        scratch.bitwise_and_((1 << (64 - shift)) - 1)
        z.bitwise_xor_(scratch)

    def fill(self, block: int, out: torch.Tensor) -> torch.Tensor:
        """Write block `block`'s 0/1 keep weights into the float buffer `out` (any shape) and return it.

        A float mask (one comparison into a float buffer) multiplies faster than boolean masking on CPU.
        """
        n = out.numel()
        count = (n + 3) // 4
        z, scratch = self.words[:count], self.scratch[:count]
        block_key = _mix64((self.key + block * _GAMMA) & _U64)
        torch.add(self.counter[:count], _signed(block_key), out=z)
        self._xorshift(z, scratch, 30)
        z.mul_(_signed(_MIX1))
        self._xorshift(z, scratch, 27)
        z.mul_(_signed(_MIX2))
        self._xorshift(z, scratch, 31)
        bits = z.view(torch.int16)[:n].view(out.shape)
        return torch.ge(bits, self.threshold, out=out)


def attention_keep_mask(seed: int, block: int, rows: int, cols: int, p: float) -> torch.Tensor:
    """The boolean keep mask (rows x cols) of query block `block` for a call seeded with `seed`.

    Deterministic in (seed, block, rows, cols, p): the backward pass and the dense test reference rebuild it.
    """
    return _KeepMasks(seed, p, rows * cols).fill(block, torch.empty(rows, cols)).bool()


class BlockedDropoutAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d)) with dropout, times v, block by block over the queries (exact, memory O(block N)).

    Every pass over a block x N buffer costs time, so constant factors (1/sqrt(d), the keep scale, log2(e)) are
    folded into the small N x d or block x d operands, block x N buffers are allocated once per call, scores are
    kept in base 2 (exp2 runs at less than half the cost of exp on CPU: softmax is the same function), and the
    backward pass uses dS = (P o M) o dP' - P o D (dP' = keep-scaled dO V^T, D the row term) to save a pass.
    """

    @staticmethod
    def forward(ctx, q, k, v, p: float, seed: int, block_size: int):  # type: ignore[override]
        scale = 1.0 / math.sqrt(q.shape[-1])
        keep_scale = 1.0 / (1.0 - effective_drop_probability(p))
        n_queries, n_keys = q.shape[0], k.shape[0]
        q_scaled, k_t = q * (scale * _LOG2_E), k.t()  # scores in base 2: s * log2(e)
        out = torch.empty(n_queries, v.shape[1], dtype=q.dtype, device=q.device)
        logsumexp = torch.empty(n_queries, 1, dtype=q.dtype, device=q.device)
        rows = min(block_size, n_queries)
        weights_buffer, keep_buffer = (torch.empty(rows, n_keys, dtype=q.dtype) for _ in range(2))
        masks = _KeepMasks(seed, p, rows * n_keys)
        for block, start in enumerate(range(0, n_queries, block_size)):
            stop = min(start + block_size, n_queries)
            weights, keep = weights_buffer[: stop - start], keep_buffer[: stop - start]
            torch.mm(q_scaled[start:stop], k_t, out=weights)
            row_max = weights.amax(dim=1, keepdim=True)
            weights.sub_(row_max).exp2_()
            row_sum = weights.sum(dim=1, keepdim=True)
            logsumexp[start:stop] = row_max + row_sum.log2()  # base 2
            weights.mul_(masks.fill(block, keep))
            torch.mm(weights, v, out=out[start:stop])
            out[start:stop].mul_(keep_scale / row_sum)
        ctx.save_for_backward(q, k, v, out, logsumexp)
        ctx.settings = (p, seed, block_size, scale, keep_scale)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, out, logsumexp = ctx.saved_tensors
        p, seed, block_size, scale, keep_scale = ctx.settings
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
        masks = _KeepMasks(seed, p, rows * n_keys)
        for block, start in enumerate(range(0, n_queries, block_size)):
            stop = min(start + block_size, n_queries)
            probs, kept_probs, grad_scores = (b[: stop - start] for b in buffers)
            torch.addmm(logsumexp[start:stop], q_scaled[start:stop], k_t, beta=-1.0, out=probs).exp2_()
            masks.fill(block, kept_probs).mul_(probs)
            grad_v.addmm_(kept_probs.t(), grad_scaled[start:stop])
            torch.mm(grad_scaled[start:stop], v_t, out=grad_scores)
            # dS = P o (M o dP' - D) = (P o M) o dP' - P o D, without the 1/sqrt(d) factor
            grad_scores.mul_(kept_probs).addcmul_(probs, row_dot[start:stop], value=-1.0)
            torch.mm(grad_scores, k, out=grad_q[start:stop])
            grad_k.addmm_(grad_scores.t(), q[start:stop], alpha=scale)
        grad_q.mul_(scale)
        return grad_q, grad_k, grad_v, None, None, None


def _fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """PyTorch's fused kernel on (batch 1, head 1, N, d) views.

    The 4-D layout matters: given 3-D (1, N, d) inputs the CPU dispatcher takes the math path, which builds the
    N x N matrix (measured at N = 10,000: 1.4 GiB and 1.18 s per forward + backward, against 0.27 GiB and 0.67 s).
    """
    return F.scaled_dot_product_attention(q[None, None], k[None, None], v[None, None], dropout_p=dropout_p)[0, 0]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float, block_size: int = 512) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with dropout `dropout_p` on the weights; q, k, v are (N, d) matrices.

    On CPU `block_size` is an upper bound on the query rows per block: blocks are capped so one block x N buffer
    holds at most `CACHE_BLOCK_ELEMENTS` (measured faster: every block op is memory-bound).
    """
    if dropout_p <= 0.0:
        return _fused(q, k, v, 0.0)
    if q.device.type != "cpu":
        return _fused(q, k, v, dropout_p)
    seed = int(torch.randint(0, 2**62, (1,)).item())  # drawn from torch's seeded generator
    rows = max(64, min(block_size, CACHE_BLOCK_ELEMENTS // max(k.shape[0], 1)))
    return BlockedDropoutAttention.apply(q, k, v, dropout_p, seed, rows)
