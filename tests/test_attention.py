"""The exact cross attention with dropout: blocked function vs dense softmax, both backends, and its keep masks.

The keep masks are the published dropout: each weight kept with probability 1 - p, independently, the same from the
seed on any thread count, block size or backend.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from spamo import _compat
from spamo.model import BlockedDropoutAttention, attention, attention_keep_mask
from spamo.model import attention_flash, attention_kernel
from spamo.model.attention import _threshold, call_key, default_backend, effective_drop_probability

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# the compiled backend is tested wherever it builds, flash where torch also has the fused CPU ops; tensor everywhere
BACKENDS = ["tensor"] + (["compiled"] if attention_kernel.load() is not None else [])
FLASH = "compiled" in BACKENDS and _compat.flash_attention_cpu_available()
BACKENDS += ["flash"] if FLASH else []
needs_flash = pytest.mark.skipif(not FLASH, reason="flash backend unavailable (no C kernel or no fused CPU ops)")


def exact_dropout_attention(q, k, v, p, seed, block, backend):
    """The exact dropout attention through one backend's autograd function (flash has no blocks)."""
    if backend == "flash":
        keep_scale = 1.0 / (1.0 - effective_drop_probability(p))
        return attention_flash.FlashDropoutAttention.apply(q, k, v, call_key(seed), _threshold(p), keep_scale)
    return BlockedDropoutAttention.apply(q, k, v, p, seed, block, backend)


def dense_dropout_attention(q, k, v, p, seed):
    """softmax(q k^T / sqrt(d)) with the blocked function's keep mask, times v, all N x N at once."""
    mask = attention_keep_mask(seed, q.shape[0], k.shape[0], p)
    weights = torch.softmax(q @ k.t() / math.sqrt(q.shape[1]), dim=1)
    return (weights * mask / (1 - effective_drop_probability(p))) @ v


def assert_flash_matches_float64_dense(q, k, v, upstream, p: float, seed: int) -> None:
    """The flash backend's float32 output and gradients against the float64 dense function, within the float32
    log-sum-exp bound: 8 eps max(|lse|, 1) of each result's largest entry (scale 1 / sqrt(d), as the backend)."""
    wide = [t.detach().double().requires_grad_() for t in (q, k, v)]
    want = dense_dropout_attention(*wide, p, seed)
    want = (want, *torch.autograd.grad(want, wide, upstream.double()))
    out = exact_dropout_attention(q, k, v, p, seed, 0, "flash")
    got = (out, *torch.autograd.grad(out, (q, k, v), upstream))
    lse = torch.logsumexp(wide[0] @ wide[1].t() / q.shape[1] ** 0.5, dim=1).abs().max().item()
    for a, b in zip(got, want):
        bound = 8 * torch.finfo(torch.float32).eps * max(lse, 1.0) * b.abs().max().item()
        assert (a.double() - b).abs().max().item() <= bound, ((a.double() - b).abs().max(), bound)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_q,n_k,block", [(70, 70, 16), (33, 50, 64), (40, 41, 7)])
def test_blocked_dropout_attention_matches_dense_values_and_gradients(n_q, n_k, block, backend):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(n_q, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    k = torch.randn(n_k, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.randn(n_k, 8, dtype=torch.float64, generator=gen, requires_grad=True)  # the fused kernel: v as wide as q
    upstream = torch.randn(n_q, 8, dtype=torch.float64, generator=gen)
    got = exact_dropout_attention(q, k, v, 0.3, 99, block, backend)
    got_grads = torch.autograd.grad(got, (q, k, v), upstream)
    want = dense_dropout_attention(q, k, v, 0.3, 99)
    want_grads = torch.autograd.grad(want, (q, k, v), upstream)
    assert torch.allclose(got, want, atol=1e-12)
    for a, b in zip(got_grads, want_grads):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_blocked_dropout_attention_gradcheck(backend):
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(9, 4, dtype=torch.float64, generator=gen, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda a, b, c: exact_dropout_attention(a, b, c, 0.25, 5, 4, backend), (q, k, v))


@pytest.mark.skipif("compiled" not in BACKENDS, reason=f"C kernel unavailable: {attention_kernel.why_not()}")
def test_all_backends_agree_in_float32_with_scores_far_below_the_row_max():
    """float32 is where the kernel's own exp2 runs: same values and gradients as torch's exp2, to float rounding.

    Large q, k make most weights underflow (scores far below the row maximum), the regime of the exp2 clamp. The
    flash backend is held to the float64 dense function instead: it weighs the dropped entries with the fused
    kernel's float32 log-sum-exp, whose rounding (a relative error of up to eps |lse| in every dropped weight, lse in
    the hundreds here) is its error bound; with the model's scores (lse ~ 10) that is ~1e-6 of |v|.
    """
    gen = torch.Generator().manual_seed(4)
    for spread in (1.0, 12.0):
        q, k, v = (spread * torch.randn(300, 16, generator=gen) for _ in range(3))
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        upstream = torch.randn(300, 16, generator=gen)
        results = []
        for backend, block in (("tensor", 64), ("compiled", 37)):  # different blocks: the mask must not care
            out = exact_dropout_attention(q, k, v, 0.1, 2024, block, backend)
            results.append((out, *torch.autograd.grad(out, (q, k, v), upstream)))
        for a, b in zip(*results):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item()), (a - b).abs().max()
        if FLASH:
            assert_flash_matches_float64_dense(q, k, v, upstream, 0.1, 2024)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keep_mask_is_reproducible_and_drops_at_rate_p(backend):
    a = attention_keep_mask(3, 200, 500, 0.1, backend=backend)
    assert torch.equal(a, attention_keep_mask(3, 200, 500, 0.1, backend=backend))
    assert not torch.equal(a, attention_keep_mask(4, 200, 500, 0.1, backend=backend))
    assert abs((~a).float().mean().item() - 0.1) < 0.005
    assert abs(effective_drop_probability(0.1) - 0.1) < 2**-16


@pytest.mark.parametrize("backend", BACKENDS)
def test_keep_mask_rows_do_not_depend_on_the_block_they_are_made_in(backend):
    whole = attention_keep_mask(8, 90, 37, 0.3, backend=backend)  # 37 columns: blocks start at every lane
    for first, rows in ((0, 1), (1, 5), (7, 30), (50, 40)):
        part = attention_keep_mask(8, rows, 37, 0.3, first_row=first, backend=backend)
        assert torch.equal(part, whole[first:first + rows])


@pytest.mark.skipif("compiled" not in BACKENDS, reason=f"C kernel unavailable: {attention_kernel.why_not()}")
def test_both_backends_make_the_same_keep_mask():
    for p in (0.1, 0.5, 0.9):
        assert torch.equal(attention_keep_mask(5, 123, 457, p, first_row=3, backend="compiled"),
                           attention_keep_mask(5, 123, 457, p, first_row=3, backend="tensor"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_keep_mask_drops_at_rate_p_in_every_bit_lane_and_independently(backend):
    """Each 64-bit draw feeds four neighbouring weights: every lane must drop at rate p, neighbours independently.

    (A sign-extending shift in the integer mixer, say, leaves the top lane's sign bit at 0: never dropped.)
    """
    dropped = (~attention_keep_mask(11, 500, 1000, 0.2, backend=backend)).float().view(-1)
    for lane, rate in enumerate(dropped.view(-1, 4).mean(0).tolist()):
        assert abs(rate - 0.2) < 0.005, f"lane {lane} drops at {rate:.3f}"
    neighbours = torch.corrcoef(torch.stack([dropped[:-1], dropped[1:]]))[0, 1].item()
    assert abs(neighbours) < 0.01
    rows = dropped.view(500, 1000)
    assert abs(torch.corrcoef(torch.stack([rows[:-1].reshape(-1), rows[1:].reshape(-1)]))[0, 1].item()) < 0.01
    other_call = (~attention_keep_mask(12, 500, 1000, 0.2, backend=backend)).float().view(-1)
    assert abs(torch.corrcoef(torch.stack([dropped, other_call]))[0, 1].item()) < 0.01


def test_keep_mask_words_are_splitmix64_outputs():
    """The tensor arithmetic (wrapping int64 products, masked shifts) equals SplitMix64 written on Python ints."""
    module = importlib.import_module("spamo.model.attention")  # the package re-exports the function of that name
    u64 = (1 << 64) - 1
    masks = module._TensorMasks(2024, 0.1, 1000, 4)
    masks.fill(0, torch.empty(4, 1000))
    key = call_key(2024)
    for j in (0, 1, 2, 517, 999):
        want = module._mix64((key + (j + 1) * module._GAMMA) & u64)
        assert int(masks.words[j]) & u64 == want, f"word {j}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_attention_is_the_same_on_one_and_two_threads(backend):
    """Thread-count invariance: the same seed gives the same mask (so the same output) on 1 and 2 threads."""
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(257, 16, generator=gen) for _ in range(3))
    outputs, masks = [], []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        outputs.append(attention(q, k, v, 0.2, block_size=64, backend=backend))
        masks.append(attention_keep_mask(9, 257, 300, 0.2, backend=backend))
    torch.set_num_threads(1)
    assert torch.equal(masks[0], masks[1])
    assert torch.allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)


def test_attention_without_dropout_is_exact_softmax_attention():
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(30, 6, generator=gen) for _ in range(3))
    want = torch.softmax(q @ k.t() / math.sqrt(6), dim=1) @ v
    assert torch.allclose(attention(q, k, v, 0.0), want, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_dropout_changes_output_and_keeps_expectation(backend):
    gen = torch.Generator().manual_seed(3)
    q, k = (torch.randn(64, 6, generator=gen) for _ in range(2))
    v = torch.ones(64, 3)
    torch.manual_seed(0)
    dropped = attention(q, k, v, 0.5, block_size=16, backend=backend)
    assert not torch.allclose(dropped, v)  # rows of weights no longer sum to one
    assert abs(dropped.mean().item() - 1.0) < 0.05  # inverse keep-probability scaling keeps the mean


def test_default_backend_is_flash_then_compiled_where_they_run_and_unknown_backends_are_refused():
    want = "flash" if FLASH else "compiled" if attention_kernel.load() is not None else "tensor"
    assert default_backend() == want
    if FLASH:  # small problems: the compiled backend measured faster
        assert default_backend(2500, 2500) == "compiled" and default_backend(10000, 10000) == "flash"
    with pytest.raises(ValueError, match="backend"):
        attention(torch.ones(4, 2), torch.ones(4, 2), torch.ones(4, 2), 0.1, backend="fast")


def test_attention_without_dropout_runs_the_fused_kernel_not_the_n_by_n_math_path():
    """The fused CPU kernel never materialises N x N; the math fallback (taken for 3-D inputs) does."""
    from torch.profiler import profile

    q, k, v = (torch.randn(300, 64, requires_grad=True) for _ in range(3))
    with profile() as prof:
        attention(q, k, v, 0.0).sum().backward()
    kernels = {event.name for event in prof.events() if "attention" in event.name}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in kernels, kernels
    assert not any("math" in name for name in kernels), kernels


@pytest.mark.skipif("compiled" not in BACKENDS, reason=f"C kernel unavailable: {attention_kernel.why_not()}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_sampled_row_dots_equal_the_gathered_products(dtype):
    """The feature graph's edge-value gradient: <left_i, right_j> per edge, kernel against the tensor formula."""
    gen = torch.Generator().manual_seed(7)
    left, right = (torch.randn(60, 24, generator=gen, dtype=dtype) for _ in range(2))
    rows = torch.randint(0, 60, (500,), generator=gen).sort().values
    cols = torch.randint(0, 60, (500,), generator=gen)
    want = (left[rows] * right[cols]).sum(1)
    got = attention_kernel.sampled_row_dots(left, right, rows, cols)
    assert torch.allclose(got, want, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6)
    torch.set_num_threads(2)
    assert torch.equal(attention_kernel.sampled_row_dots(left, right, rows, cols), got)  # any thread count
    assert attention_kernel.sampled_row_dots(left.to(torch.bfloat16), right.to(torch.bfloat16), rows, cols) is None


@needs_flash
def test_flash_backend_equals_dense_when_the_backward_rebuilds_the_dropped_lists(monkeypatch):
    """Above the saved-lists budget the backward makes the dropped lists again, rows in segments: same function."""
    gen = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(90, 8, dtype=torch.float64, generator=gen, requires_grad=True) for _ in range(3))
    upstream = torch.randn(90, 8, dtype=torch.float64, generator=gen)
    want = dense_dropout_attention(q, k, v, 0.3, 13)
    want_grads = torch.autograd.grad(want, (q, k, v), upstream)
    monkeypatch.setattr(attention_flash, "SAVED_BYTES", 12 * 40)  # ~40 entries a segment: many segments
    got = exact_dropout_attention(q, k, v, 0.3, 13, 0, "flash")
    assert torch.allclose(got, want, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), upstream), want_grads):
        assert torch.allclose(a, b, atol=1e-12)


@needs_flash
def test_flash_backend_with_the_queries_in_padded_row_blocks_equals_dense(monkeypatch):
    """The fused kernel run on the queries as row blocks in its batch dimension (90 rows in 4 blocks: two zero rows
    of padding) is the same function, and the padding adds nothing to any gradient."""
    monkeypatch.setattr(attention_flash, "QUERY_BLOCK_ROWS", 16)
    assert attention_flash.query_blocks(90, 90, 16, 8) == 4
    gen = torch.Generator().manual_seed(18)
    q, k, v = (torch.randn(90, 8, dtype=torch.float64, generator=gen, requires_grad=True) for _ in range(3))
    upstream = torch.randn(90, 8, dtype=torch.float64, generator=gen)
    want = dense_dropout_attention(q, k, v, 0.3, 13)
    want_grads = torch.autograd.grad(want, (q, k, v), upstream)
    got = exact_dropout_attention(q, k, v, 0.3, 13, 0, "flash")
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), upstream), want_grads):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-12)


def test_query_blocks_follow_the_shapes_and_the_memory_budget_not_the_threads():
    assert attention_flash.query_blocks(300, 300, 128, 4) == 1  # under two blocks' rows: one block
    assert attention_flash.query_blocks(700, 700, 128, 4) == 2
    assert attention_flash.query_blocks(10000, 10000, 128, 4) == attention_flash.QUERY_BLOCKS
    # one block's partial key and value gradients (1,000,000 x 128 float32 = 512 MB) exceed the budget: one block
    assert attention_flash.query_blocks(1_000_000, 1_000_000, 128, 4) == 1


@needs_flash
def test_flash_backend_is_bit_for_bit_the_same_on_one_two_and_three_threads():
    """Rows own their sums, columns sum their rows in increasing order (one fused pass or a column pass); the fused
    kernel's two query blocks (700 rows) add their partial gradients in block order."""
    assert attention_flash.query_blocks(700, 700, 128, 4) == 2
    gen = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(700, 64, generator=gen, requires_grad=True) for _ in range(3))
    upstream = torch.randn(700, 64, generator=gen)
    results = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        out = exact_dropout_attention(q, k, v, 0.1, 77, 0, "flash")
        results.append((out, *torch.autograd.grad(out, (q, k, v), upstream)))
    torch.set_num_threads(1)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@needs_flash
def test_flash_backend_runs_the_fused_kernel_both_ways_with_dropout_on():
    from torch.profiler import profile

    q, k, v = (torch.randn(300, 64, requires_grad=True) for _ in range(3))
    with profile() as prof:
        attention(q, k, v, 0.1, backend="flash").sum().backward()
    kernels = {event.name for event in prof.events() if "attention" in event.name}
    assert {"aten::_scaled_dot_product_flash_attention_for_cpu",
            "aten::_scaled_dot_product_flash_attention_for_cpu_backward"} <= kernels, kernels


@needs_flash
def test_flash_backend_falls_back_to_the_compiled_one_where_the_fused_kernel_does_not_apply():
    """v narrower than q (the fused CPU kernel wants one width): the same function through the compiled backend."""
    gen = torch.Generator().manual_seed(10)
    q, k = (torch.randn(40, 8, dtype=torch.float64, generator=gen) for _ in range(2))
    v = torch.randn(40, 3, dtype=torch.float64, generator=gen)
    assert not attention_flash.available(q, k, v)
    torch.manual_seed(0)
    got = attention(q, k, v, 0.2, backend="flash")
    torch.manual_seed(0)
    assert torch.equal(got, attention(q, k, v, 0.2, backend="compiled"))


@needs_flash
def test_flash_backend_in_float32_at_the_model_width_matches_the_float64_dense_function():
    """d = 64 float32 is where the AVX-512 bodies run (16 dots reduced together, partial sums in registers): held
    to the float64 dense function within the float32 log-sum-exp bound of the test above (scores of the model's
    scale: lse ~ 7 here)."""
    gen = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(600, 64, generator=gen, requires_grad=True) for _ in range(3))
    upstream = torch.randn(600, 64, generator=gen)
    assert_flash_matches_float64_dense(q, k, v, upstream, 0.1, 5)


@needs_flash
@pytest.mark.parametrize("threads", [1, 2])
def test_flash_backend_gives_the_same_bits_when_the_one_pass_lists_overflow_their_room(monkeypatch, threads):
    """Too little room for the dropped lists (a negative margin): the exact count and a one-range retry give the
    lists, so the results are bit for bit those of the ordinary path."""
    gen = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(200, 64, generator=gen, requires_grad=True) for _ in range(3))
    upstream = torch.randn(200, 64, generator=gen)
    torch.set_num_threads(threads)
    results = []
    for margin in (attention_flash.LIST_MARGIN_SIGMAS, -40.0):
        monkeypatch.setattr(attention_flash, "LIST_MARGIN_SIGMAS", margin)
        out = exact_dropout_attention(q, k, v, 0.1, 21, 0, "flash")
        results.append((out, *torch.autograd.grad(out, (q, k, v), upstream)))
    torch.set_num_threads(1)
    for a, b in zip(*results):
        assert torch.equal(a, b)
