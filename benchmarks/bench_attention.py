"""Cross attention alone at N spots, one direction, forward + backward, d = 64: PyTorch's fused kernel without
dropout (the floor) against spamo's exact blocked dropout attention, per backend and block budget, all in ONE
process and interleaved (round r runs every variant once), so a shared machine's drift hits all variants alike.
Reports the median and range over the rounds.

    python benchmarks/bench_attention.py --n 2500 10000 --rounds 7
    python benchmarks/bench_attention.py --n 10000 --budgets 16 18 20 22   # block budgets 2^k elements (compiled)
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import statistics
import time

import torch

from spamo import _compat
from spamo.model import attention_flash

attention_module = importlib.import_module("spamo.model.attention")  # the module (the package re-exports the function)


class FusedInQueryBlocks(torch.autograd.Function):
    """The floor's fused kernel (no dropout) with the queries in the row blocks the flash backend hands it
    (attention_flash.query_blocks): what the flash backend's fused part costs, without its dropped-entry passes."""

    @staticmethod
    def forward(ctx, q, k, v):  # type: ignore[override]
        blocks = attention_flash.query_blocks(q.shape[0], k.shape[0], q.shape[1] + v.shape[1], q.element_size())
        scale = 1.0 / math.sqrt(q.shape[1])
        out, lse = _compat.flash_attention_cpu(q, k, v, scale, blocks)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.blocks = scale, blocks
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        return _compat.flash_attention_cpu_backward(grad_out.contiguous(), *ctx.saved_tensors, ctx.scale, ctx.blocks)


def one_query_block(fn):
    """fn run with the flash backend's fused kernel on all queries as one block (the code before query blocks)."""
    def call():
        before = attention_flash.QUERY_BLOCKS
        attention_flash.QUERY_BLOCKS = 1
        try:
            return fn()
        finally:
            attention_flash.QUERY_BLOCKS = before
    return call


def one_call(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a loaded machine with one thread, CPU time is the cost."""
    start, cpu = time.perf_counter(), time.process_time()
    fn().sum().backward()
    return time.perf_counter() - start, time.process_time() - cpu


def variants(q, k, v, budgets: list[int]) -> dict:
    """name -> zero-argument callable; the compiled backend once per block budget."""
    out = {"fused, no dropout (floor)": lambda: attention_module.attention(q, k, v, 0.0),
           "tensor backend, dropout 0.1": lambda: attention_module.attention(q, k, v, 0.1, 2048, backend="tensor")}
    if _compat.flash_attention_cpu_available() and q.shape[1] == v.shape[1]:
        out["fused, no dropout, queries in row blocks"] = lambda: FusedInQueryBlocks.apply(q, k, v)
    if attention_module.attention_kernel.load() is not None:
        if attention_module.default_backend() == "flash":
            flash = lambda: attention_module.attention(q, k, v, 0.1, backend="flash")  # noqa: E731
            out["flash backend (fused + dropped-entry passes), dropout 0.1"] = flash
            out["flash backend, queries in one block (before), dropout 0.1"] = one_query_block(flash)
        for b in budgets:
            def call(b=b):
                before = attention_module.KERNEL_BLOCK_ELEMENTS
                attention_module.KERNEL_BLOCK_ELEMENTS = 2**b
                try:
                    return attention_module.attention(q, k, v, 0.1, 2048, backend="compiled")
                finally:
                    attention_module.KERNEL_BLOCK_ELEMENTS = before
            out[f"compiled backend, dropout 0.1, blocks of 2^{b}"] = call
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[2500, 10000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-tensor", action="store_true", help="leave out the (slow) tensor backend")
    parser.add_argument("--budgets", type=int, nargs="+",
                        default=[int(attention_module.KERNEL_BLOCK_ELEMENTS).bit_length() - 1])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}; load average at start {os.getloadavg()}")
    for n in args.n:
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(n, 64, generator=gen, requires_grad=True) for _ in range(3))
        calls = variants(q, k, v, args.budgets)
        if args.no_tensor:
            calls.pop("tensor backend, dropout 0.1")
        times = {name: [] for name in calls}
        for fn in calls.values():
            one_call(fn)  # warm-up (and the kernel's one-time build)
        for _ in range(args.rounds):
            for name, fn in calls.items():
                times[name].append(one_call(fn))
        print(f"\nN = {n:,}, {args.rounds} rounds, s per direction (forward + backward), wall | process CPU:")
        for clock in (0, 1):
            floor = statistics.median(t[clock] for t in times["fused, no dropout (floor)"])
            for name, runs in times.items():
                t = [r[clock] for r in runs]
                med = statistics.median(t)
                print(f"  {'wall' if clock == 0 else 'cpu ':4s} {name:58s} median {med:.4f}  range {min(t):.4f}-"
                      f"{max(t):.4f}  ({med / floor:.2f}x floor)")
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
