"""Cross attention alone at N spots: PyTorch's fused kernel without dropout (the floor) vs spamo's exact blocked
dropout attention, one direction, forward + backward, d = 64, 2 threads.

    python benchmarks/bench_attention.py --n 10000
"""

from __future__ import annotations

import argparse
import importlib
import time

import torch


def seconds_per_call(fn, repeats: int) -> float:
    fn().sum().backward()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn().sum().backward()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    attention = importlib.import_module("spamo.model.attention")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(args.n, 64, generator=gen, requires_grad=True) for _ in range(3))
    floor = seconds_per_call(lambda: attention.attention(q, k, v, 0.0), args.repeats)
    blocked = seconds_per_call(lambda: attention.attention(q, k, v, 0.1), args.repeats)
    print(f"N={args.n}: fused kernel, no dropout {floor:.2f} s; blocked exact dropout 0.1 {blocked:.2f} s "
          f"(one direction, forward + backward, {args.threads} threads)")


if __name__ == "__main__":
    main()
