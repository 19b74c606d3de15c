"""Time and peak memory of spatial and feature graph construction (docs/method.md section 2).

Each case runs in a fresh Python process so its peak resident memory (ru_maxrss) is its own; the import-only
baseline of such a process is reported beside it.

    python benchmarks/bench_graphs.py --sizes 10000 100000 1000000 --out benchmarks/results/graphs.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def _grid_coords(n: int):
    import numpy as np

    side = int(np.ceil(np.sqrt(n)))
    ys, xs = np.divmod(np.arange(n), side)
    return np.column_stack([xs + 0.5 * (ys % 2), ys * np.sqrt(3) / 2]).astype(np.float64)  # hexagonal, Visium-like


def _features(n: int, dim: int = 30, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, dim)) * 3
    out = centres[rng.integers(0, 12, n)] + rng.normal(size=(n, dim)) * np.linspace(2, 0.2, dim)
    return out.astype(np.float32)


def run_case(kind: str, n: int, k: int) -> dict:
    """One measurement inside this process."""
    import torch

    from spamo.graphs import EXACT_MAX_SPOTS, feature_graph, spatial_graph

    if kind == "baseline":
        return {"kind": kind, "n": n, "seconds": 0.0, "peak_mib": _peak_mib()}
    points = _grid_coords(n) if kind == "spatial" else _features(n)
    start = time.perf_counter()
    graph = spatial_graph(points, k) if kind == "spatial" else feature_graph(points, k)
    seconds = time.perf_counter() - start
    method = "exact (KD-tree)" if kind == "spatial" else ("exact (blocked)" if n <= EXACT_MAX_SPOTS else "approximate (IVF + refine)")
    return {
        "kind": kind,
        "n": n,
        "k": k,
        "method": method,
        "seconds": round(seconds, 2),
        "nnz": int(graph._nnz()),
        "peak_mib": _peak_mib(),
        "threads": torch.get_num_threads(),
        "load": round(os.getloadavg()[0], 1),
    }


def _peak_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--knn-k", type=int, default=20)
    parser.add_argument("--spatial-k", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/graphs.md"))
    parser.add_argument("--case", nargs=3, metavar=("KIND", "N", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        kind, n, k = args.case
        print(json.dumps(run_case(kind, int(n), int(k))))
        return
    rows = [_child("baseline", 0, 0)]
    for n in args.sizes:
        rows.append(_child("spatial", n, args.spatial_k))
        rows.append(_child("feature", n, args.knn_k))
        _write(args.out, rows, args)
    _write(args.out, rows, args)


def _child(kind: str, n: int, k: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--case", kind, str(n), str(k)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        row = {"kind": kind, "n": n, "k": k, "error": proc.stderr.strip().splitlines()[-1:]}
    else:
        row = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row


def _write(out: Path, rows: list[dict], args) -> None:
    baseline = next(r["peak_mib"] for r in rows if r["kind"] == "baseline")
    lines = [
        "# Graph construction: time and peak memory",
        "",
        f"Machine: 2-core CPU, 24 GiB RAM, torch 2.13.0 CPU, Python {platform.python_version()}; "
        f"`python benchmarks/bench_graphs.py --sizes {' '.join(map(str, args.sizes))}`.",
        "Spatial graph: hexagonal grid coordinates, k = "
        f"{args.spatial_k}. Feature graph: 30-dimensional clustered features, KNN_k = {args.knn_k}, correlation "
        "distance. Each case runs in a fresh process; peak RSS includes the interpreter with torch imported "
        f"(baseline {baseline} MiB).",
        "",
        "The machine is shared: the 1-minute load average at the end of each case is given (2 = both cores busy).",
        "",
        "| graph | spots | k | search | seconds | nnz | peak RSS (MiB) | above baseline (MiB) | load |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["kind"] == "baseline":
            continue
        if "error" in r:
            lines.append(f"| {r['kind']} | {r['n']:,} | {r['k']} | failed: {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['kind']} | {r['n']:,} | {r['k']} | {r['method']} | {r['seconds']} | {r['nnz']:,} | "
            f"{r['peak_mib']:,} | {r['peak_mib'] - baseline:,.1f} | {r['load']} |"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
