"""The dropout attention as PyTorch's fused CPU kernel plus sparse corrections over the dropped weights ("flash").

With A = softmax(scale q k^T), keep mask M and dropped set D (docs/method.md section 3):
* forward: (o0, lse) = fused kernel without dropout (o0 = A V); out_i = (o0_i - sum_{j in D_i} A_ij v_j) / (1 - p),
  A_ij = exp(scale q_i.k_j - lse_i) evaluated on D only (~p N^2 entries);
* backward, upstream g, g' = g / (1 - p): the fused backward run on (g', q, k, v, out (1 - p), lse), whose row term
  g'_i . out_i (1 - p) = g_i . out_i is exactly the dropout one; then over D, with W_ij = A_ij (g'_i . v_j):
  gq_i -= scale sum_j W_ij k_j, gk_j -= scale sum_i W_ij q_i, gv_j -= sum_i A_ij g'_i.
So a direction costs the attention without dropout plus passes over the dropped entries (attention_dropped.py).

D comes from the same per-(seed, row, col) draws as every backend's keep mask, enumerated in one pass
(attention_lists.py). Its lists (column, weight: 8 bytes per float32 entry) are kept from the forward for the
backward when they fit in about `SAVED_BYTES`; above that both passes go through rows in segments of about that
size and the backward makes each segment's lists again (memory stays bounded, never N x N).
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from spamo import _compat
from spamo.model import attention_kernel

_LOG2_E = 1.0 / math.log(2.0)
# dropped-entry lists kept between forward and backward, per call: at p = 0.1 this covers ~12,000 spots in float32
SAVED_BYTES = 2**27
# the one-pass lists (attention_lists.py) get the expected count plus this many standard deviations of room
LIST_MARGIN_SIGMAS = 8.0
# The fused kernel is handed the queries as up to QUERY_BLOCKS equal blocks of rows in its batch dimension (over the
# same keys and values, expanded, not copied): its backward then keeps more threads busy (benchmarks/results/train.md).
# Fixed by the shapes alone, never by the thread count, so the results stay the same bits on any thread count; each
# block has at least QUERY_BLOCK_ROWS rows, and the blocks' partial key and value gradients (one N x (d + dv) each)
# together stay under PARTIAL_GRADIENT_BYTES.
QUERY_BLOCKS = 4
QUERY_BLOCK_ROWS = 256
PARTIAL_GRADIENT_BYTES = 2**28


def available(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether this backend runs: CPU float32/float64, one width for q, k, v (the fused kernel's condition), the C
    kernel built, the private fused ops present."""
    return (q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64) and q.shape[1] == v.shape[1]
            and _compat.flash_attention_cpu_available() and attention_kernel.load() is not None)


def query_blocks(n_q: int, n_k: int, width: int, itemsize: int) -> int:
    """How many row blocks of the queries the fused kernel runs as its batch (see QUERY_BLOCKS)."""
    by_memory = PARTIAL_GRADIENT_BYTES // max(n_k * width * itemsize, 1)
    return int(max(1, min(QUERY_BLOCKS, n_q // QUERY_BLOCK_ROWS, by_memory)))


def _rows_padded(t: torch.Tensor, rows: int) -> torch.Tensor:
    """t with zero rows appended up to `rows` (t itself when it has them): a zero query row with a zero upstream
    gradient adds exactly nothing to any gradient of the fused kernel's backward."""
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros((rows - t.shape[0], *t.shape[1:]))])


class _Call:
    """Shapes, constants, the dropped lists' row offsets and the kernel entry points of one attention call."""

    def __init__(self, q, k, v, key: int, threshold: int, keep_scale: float):
        self.lib = attention_kernel.load()
        suffix = "f32" if q.dtype == torch.float32 else "f64"
        self.forward_pass, self.rows_pass, self.cols_pass = (
            getattr(self.lib, f"{name}_{suffix}") for name in ("drop_forward", "drop_grad_rows", "drop_grad_cols"))
        self.n_q, self.n_k, self.d, self.dv = q.shape[0], k.shape[0], q.shape[1], v.shape[1]
        self.scale = 1.0 / math.sqrt(self.d)
        self.key, self.threshold, self.keep_scale = key, threshold, keep_scale
        self.drop_probability = (threshold + 2**15) / 2**16  # the draws are int16: dropped below the threshold
        self.dtype = q.dtype
        self.threads = torch.get_num_threads()
        self.blocks = query_blocks(self.n_q, self.n_k, self.d + self.dv, q.element_size())
        self.padded_rows = -(-self.n_q // self.blocks) * self.blocks
        self.offsets = torch.zeros(self.n_q + 1, dtype=torch.int64)  # row i's entries: offsets[i] .. offsets[i + 1]

    def segments(self) -> list[tuple[int, int]]:
        """Row ranges [r0, r1) whose lists (column + weight per entry) hold about `SAVED_BYTES` at most."""
        per_row = max(self.n_k * self.drop_probability, 1.0)
        rows = max(int(SAVED_BYTES / (4 + torch.finfo(self.dtype).bits // 8) / per_row), 1)
        return [(r0, min(r0 + rows, self.n_q)) for r0 in range(0, self.n_q, rows)]

    def lists(self, segment: tuple[int, int], threads: int) -> torch.Tensor:
        """The dropped columns of the segment's rows, row after row (int32); fills their offsets."""
        r0, r1 = segment
        expected = (r1 - r0) * self.n_k * self.drop_probability
        capacity = max(int(expected + LIST_MARGIN_SIGMAS * math.sqrt(expected * threads) + 16 * threads + 16), 0)
        cols = torch.empty(capacity, dtype=torch.int32)
        if not self.lib.drop_lists(self.offsets.data_ptr(), cols.data_ptr(), capacity, r0, r1, self.n_k, self.key,
                                   self.threshold, threads):
            counts = torch.empty(r1 - r0, dtype=torch.int64)  # a share overflowed: count exactly, one range
            self.lib.drop_counts(counts.data_ptr(), r0, r1, self.n_k, self.key, self.threshold, threads)
            cols = torch.empty(int(counts.sum()), dtype=torch.int32)
            if not self.lib.drop_lists(self.offsets.data_ptr(), cols.data_ptr(), cols.numel(), r0, r1, self.n_k,
                                       self.key, self.threshold, 1):
                raise RuntimeError("dropped-entry lists do not fit their exact count")  # a kernel bug, not input
        return cols[: int(self.offsets[r1] - self.offsets[r0])]

    def weights(self, q, k, v, rows_lse, out, segment, cols, a, threads: int):
        """The segment's dropped weights into a; out corrected when not None."""
        r0, r1 = segment
        self.forward_pass(q.data_ptr(), k.data_ptr(), v.data_ptr(), rows_lse.data_ptr(),
                          out.data_ptr() if out is not None else None, r0, r1, self.n_k, self.d, self.dv,
                          self.scale * _LOG2_E, self.keep_scale, self.offsets.data_ptr(), int(self.offsets[r0]),
                          cols.data_ptr(), a.data_ptr(), threads)

    def corrections(self, q, k, v, grad_scaled, rows_lse, segments, lists, threads: int):
        """The dropped entries' terms of (grad q, grad k, grad v), from zero (the caller adds the fused backward's)."""
        grads = [torch.zeros_like(t) for t in (q, k, v)]
        grad_q, grad_k, grad_v = (g.data_ptr() for g in grads)
        fused = threads == 1  # one thread: the column updates ride along the row pass (same order, same bits)
        for segment in segments:
            if lists is not None:
                cols, a = lists
            else:
                cols = self.lists(segment, threads)
                a = torch.empty(cols.numel(), dtype=q.dtype)
                self.weights(q, k, v, rows_lse, None, segment, cols, a, threads)
            w = torch.empty_like(a)
            r0, r1 = segment
            common = (r0, r1, self.n_k, self.d, self.dv, self.scale, self.offsets.data_ptr(), int(self.offsets[r0]),
                      cols.data_ptr(), a.data_ptr(), w.data_ptr(), threads)
            self.rows_pass(grad_scaled.data_ptr(), k.data_ptr(), v.data_ptr(), grad_q, q.data_ptr(),
                           grad_k if fused else None, grad_v if fused else None, *common)
            if not fused:
                self.cols_pass(q.data_ptr(), grad_scaled.data_ptr(), grad_k, grad_v, *common)
        return grads


_helper: ThreadPoolExecutor | None = None  # one long-lived thread (and its OpenMP team) for the corrections
_helper_lock = threading.Lock()


def _concurrently(fn):
    """fn() started on the helper thread; returns its future."""
    global _helper
    with _helper_lock:
        if _helper is None:
            _helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spamo-flash")
    return _helper.submit(fn)


class FlashDropoutAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d)) with dropout (keep mask from `key`, `threshold`), times v; q, k, v (N, d), CPU."""

    @staticmethod
    def forward(ctx, q, k, v, key: int, threshold: int, keep_scale: float):  # type: ignore[override]
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        call = _Call(q, k, v, key, threshold, keep_scale)
        out, lse = _compat.flash_attention_cpu(_rows_padded(q, call.padded_rows), k, v, call.scale, call.blocks)
        out, lse = out[: call.n_q].contiguous(), lse[: call.n_q].contiguous()
        rows_lse = lse.double() / call.scale  # l_i of the kernel's passes: the log-sum-exp in units of q.k
        segments = call.segments()
        for segment in segments:
            cols = call.lists(segment, call.threads)
            a = torch.empty(cols.numel(), dtype=q.dtype)
            call.weights(q, k, v, rows_lse, out, segment, cols, a, call.threads)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.call, ctx.rows_lse, ctx.segments = call, rows_lse, segments
        ctx.lists = (cols, a) if len(segments) == 1 else None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        call = ctx.call
        grad_scaled = (grad_out * call.keep_scale).contiguous()
        args = (q, k, v, grad_scaled, ctx.rows_lse, ctx.segments, ctx.lists)
        # The fused backward does not keep every thread busy (it shares out batch x heads first: the query blocks
        # here), so with two or more threads the corrections run beside it.
        helper = _concurrently(lambda: call.corrections(*args, call.threads - 1)) if call.threads > 1 else None
        rows = call.padded_rows
        grads = _compat.flash_attention_cpu_backward(
            _rows_padded(grad_scaled, rows), _rows_padded(q, rows), k, v, _rows_padded(out / call.keep_scale, rows),
            _rows_padded(lse, rows), call.scale, call.blocks)
        grads = (grads[0][: call.n_q], grads[1], grads[2])
        corrections = helper.result() if helper is not None else call.corrections(*args, 1)
        ctx.lists = None
        grad_q, grad_k, grad_v = (g.add_(c) for g, c in zip(grads, corrections))
        return grad_q, grad_k, grad_v, None, None, None
