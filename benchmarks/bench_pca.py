"""The preprocessing's PCA (`spamo.preprocessing.pca`) by solver and BLAS threads, at the shapes spamo meets: the
solver `pca_solver` picks against the others, all in ONE process and interleaved (round r runs every variant once),
so a shared machine's drift hits them alike. Reports the median and range of the wall seconds over the rounds, the
largest difference of each variant's scores from ARPACK's, and the load.

Shapes (spots x features, components): the 2,500-spot HLN simulation's RNA (1,000 genes, 99 components: the
simulation has 100 proteins), the real HLN's (3,484 x 3,000 HVG, 30 components), Mouse Brain's (9,196 x 3,000,
50 components). The matrices are random normal with a few strong directions, dense, or sparse at a third
non-zero (as log-normalised counts are) with `--sparse`.

    python benchmarks/bench_pca.py --rounds 3
    python benchmarks/bench_pca.py --shapes 2500x1000x99 9196x3000x50 --sparse --out /tmp/pca.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from spamo.preprocessing import PCA_SOLVERS, pca, pca_solver

SHAPES = ("2500x1000x99", "3484x3000x30", "9196x3000x50")


def matrix(n: int, p: int, sparse: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p))
    x[:, :20] += rng.standard_normal((n, 1)) * np.linspace(3, 1, 20)  # a few strong directions, as in real data
    if sparse:
        x[rng.random(x.shape) < 2 / 3] = 0.0
        return sp.csr_matrix(x)
    return x


def variants(n: int, p: int, k: int) -> dict[str, dict]:
    """name -> keyword arguments of `pca`: the default, then every solver on one thread and on the pool."""
    out = {f"default ({pca_solver(n, p, k)})": {}}
    for solver in PCA_SOLVERS:
        if solver == "full" and n * p > 12_000_000:
            continue  # minutes at these sizes, and never chosen there
        out[f"{solver}, 1 thread"] = {"solver": solver, "threads": 1}
        out[f"{solver}, all threads"] = {"solver": solver, "threads": os.cpu_count()}
    return out


def one_call(x, k: int, solver: str | None = None, threads: int | None = None) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    scores = pca(x, k, seed=0, solver=solver, blas_threads=threads)
    return time.perf_counter() - start, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), help="NxPxK (spots x features x components)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sparse", action="store_true", help="CSR input at a third non-zero (default: dense)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (markdown)")
    args = parser.parse_args()
    lines = [f"# PCA by solver (bench_pca.py, {'sparse' if args.sparse else 'dense'} input, {args.rounds} rounds)",
             "", f"Load average at the start: {os.getloadavg()[0]:.1f}; {os.cpu_count()} cores.", "",
             "| spots x features, components | variant | wall s, median (range) | max abs diff from ARPACK |",
             "|---|---|---|---:|"]
    for shape in args.shapes:
        n, p, k = (int(v) for v in shape.lower().split("x"))
        x = matrix(n, p, args.sparse)
        runs = variants(n, p, k)
        times: dict[str, list[float]] = {name: [] for name in runs}
        scores: dict[str, np.ndarray] = {}
        one_call(x[:200], min(k, 10))  # scikit-learn's import and threadpoolctl's first look at the libraries
        for _ in range(args.rounds):
            for name, kwargs in runs.items():
                seconds, scores[name] = one_call(x, k, **kwargs)
                times[name].append(seconds)
        reference = scores["arpack, 1 thread"]
        for name, values in times.items():
            diff = float(np.abs(scores[name] - reference).max())
            lines.append(f"| {n:,} x {p:,}, {k} | {name} | {statistics.median(values):.2f} "
                         f"({min(values):.2f}-{max(values):.2f}) | {diff:.1e} |")
            print(lines[-1], flush=True)
    lines += ["", f"Load average at the end: {os.getloadavg()[0]:.1f}.", ""]
    if args.out:
        args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
