"""What a key-tiled blocked attention would cost in matrix products alone, against the fused floor (issue 16).

The compiled backend (spamo/model/attention.py) runs one direction as blocks of query rows against ALL keys, the
block height chosen so one block x N buffer stays cache-sized: 104 rows at 2,500 spots, but 26 at 10,000, where the
products' short side makes them slow. Tiling the keys as well (a flash-style loop with an online softmax in the
forward) keeps both the block tall and its buffers in cache at any N. This times only that loop's seven products
per direction (forward S = Q K^T and O += P V; backward S again, dV += P^T dO, dP = dO V^T, dQ += dS K, dK += dS^T Q)
through torch.mm on random inputs, against the fused kernel without dropout (forward + backward) on the same
inputs, in one process; the row passes (exp2, masks) would come on top. No backend uses this layout yet.

    python benchmarks/bench_tiled_products.py --threads 1 --n 10000 --rows 128 --cols 1024
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

D = 64


def tiled_products(q, k, v, grad_out, rows: int, cols: int) -> None:
    n = q.shape[0]
    out, grad_q, grad_k, grad_v = (torch.zeros(n, D) for _ in range(4))
    scores, grad_scores = torch.empty(rows, cols), torch.empty(rows, cols)
    for r in range(0, n, rows):
        for c in range(0, n, cols):
            s = scores[: min(rows, n - r), : min(cols, n - c)]
            torch.mm(q[r:r + rows], k[c:c + cols].t(), out=s)
            out[r:r + rows].addmm_(s, v[c:c + cols])
    for r in range(0, n, rows):
        for c in range(0, n, cols):
            s = scores[: min(rows, n - r), : min(cols, n - c)]
            ds = grad_scores[: s.shape[0], : s.shape[1]]
            torch.mm(q[r:r + rows], k[c:c + cols].t(), out=s)
            grad_v[c:c + cols].addmm_(s.t(), grad_out[r:r + rows])
            torch.mm(grad_out[r:r + rows], v[c:c + cols].t(), out=ds)
            grad_q[r:r + rows].addmm_(ds, k[c:c + cols])
            grad_k[c:c + cols].addmm_(ds.t(), q[r:r + rows])


def fused_floor(q, k, v, grad_out) -> None:
    q4, k4, v4 = (x[None, None].clone().requires_grad_() for x in (q, k, v))
    F.scaled_dot_product_attention(q4, k4, v4).backward(grad_out[None, None])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=int, nargs="+", default=[2500, 10000])
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--cols", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for n in args.n:
        q, k, v, grad_out = (torch.randn(n, D) for _ in range(4))
        times = {"tiled products": [], "fused floor": []}
        for _ in range(args.rounds + 1):  # the first round warms up
            for name, fn in (("tiled products", lambda: tiled_products(q, k, v, grad_out, args.rows, args.cols)),
                             ("fused floor", lambda: fused_floor(q, k, v, grad_out))):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        tiled, floor = (statistics.median(t[1:]) for t in times.values())
        print(f"{n:,} spots, {args.threads} thread(s), tiles {args.rows} x {args.cols}: products {tiled:.3f} s, "
              f"floor {floor:.3f} s, ratio {tiled / floor:.2f}", flush=True)


if __name__ == "__main__":
    main()
