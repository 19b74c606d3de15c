"""Seconds per training epoch and peak memory of SPAMO, sparse vs the dense N x N formulation.

HLN-like simulated problem: 2 modalities, 30-dim features with planted spatial domains, KNN_k 20 (correlation),
spatial k 3, latent 64, dropout 0.1, training mode, CPU, 2 threads. Every (implementation, N) runs in a fresh
subprocess so `resource.getrusage(RUSAGE_SELF).ru_maxrss` is that run's own high-water mark; the inputs are built
by the parent and handed over as an .npz file, so graph building does not count.

    python benchmarks/bench_train.py                       # N = 1,000 3,500 10,000 30,000 100,000
    python benchmarks/bench_train.py --sizes 1000 3500 --out /tmp/train.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

DEFAULT_SIZES = [1000, 3500, 10000, 30000, 100000]
DIM, KNN_K, SPATIAL_K, DOMAINS = 30, 20, 3, 10


def timed_epochs(n: int) -> tuple[int, int]:
    """(warm-up epochs, timed epochs) for N spots: fewer at large N where one epoch takes minutes."""
    if n <= 1000:
        return 1, 10
    if n <= 3500:
        return 1, 5
    if n <= 10000:
        return 1, 3
    if n <= 30000:
        return 1, 1
    return 0, 1


def make_inputs(n: int, path: Path, seed: int = 0) -> None:
    """Planted-domain features and their normalised graphs, saved as COO arrays."""
    from model_problems import normalised_knn_graph

    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, np.sqrt(n), size=(n, 2))
    labels = (coords[:, 0] // (np.sqrt(n) / DOMAINS)).astype(int).clip(0, DOMAINS - 1)
    arrays = {}
    for m in range(2):
        x = rng.normal(0, 2.0, size=(DOMAINS, DIM))[labels] + rng.normal(size=(n, DIM))
        x = x.astype(np.float32)
        # correlation distance ranks neighbours like euclidean distance between centred, unit-length rows
        unit = x - x.mean(1, keepdims=True)
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
        for kind, graph in (("spatial", normalised_knn_graph(coords, SPATIAL_K)),
                            ("feature", normalised_knn_graph(unit, KNN_K))):
            arrays[f"{kind}{m}_indices"] = graph.indices().numpy()
            arrays[f"{kind}{m}_values"] = graph.values().numpy()
        arrays[f"features{m}"] = x
    np.savez(path, **arrays)


def worker(impl: str, path: str, warmup: int, epochs: int) -> dict:
    """Train in this (fresh) process and report time per epoch and the process's peak RSS."""
    import torch

    torch.set_num_threads(int(os.environ.get("SPAMO_BENCH_THREADS", "2")))
    from spamo.config import SpamoConfig
    from spamo.training import Trainer

    data = np.load(path)
    n = data["features0"].shape[0]

    def graph(name):
        idx = torch.as_tensor(data[f"{name}_indices"])
        return torch.sparse_coo_tensor(idx, torch.as_tensor(data[f"{name}_values"]), (n, n)).coalesce()

    features = [torch.as_tensor(data[f"features{m}"]) for m in range(2)]
    spatial, feature = [graph(f"spatial{m}") for m in range(2)], [graph(f"feature{m}") for m in range(2)]
    config = SpamoConfig(data_type="10x", knn_k=KNN_K, spatial_k=SPATIAL_K, epochs=warmup + epochs,
                         device="cpu").resolve(2, n)
    trainer = Trainer(features, spatial, feature, config)
    if impl == "dense":
        from dense_reference import DenseSpamo

        trainer = DenseSpamo(trainer.model, features, spatial, feature, config)
    for _ in range(warmup):
        trainer.step()
    start = time.perf_counter()
    for _ in range(epochs):
        trainer.step()
    seconds = (time.perf_counter() - start) / epochs
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"impl": impl, "n": n, "epochs": epochs, "epoch_seconds": seconds, "peak_gib": peak_kib / 2**20}


def run_one(impl: str, n: int, path: Path) -> dict:
    warmup, epochs = timed_epochs(n)
    cmd = [sys.executable, __file__, "--worker", impl, str(path), str(warmup), str(epochs)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"impl": impl, "n": n, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict]) -> str:
    import torch

    lines = [
        "# Training speed and memory (bench_train.py)",
        "",
        f"Machine: {platform.machine()} 2-core CPU (shared), 24 GiB, torch {torch.__version__}, "
        f"{os.environ.get('SPAMO_BENCH_THREADS', '2')} torch threads. "
        "HLN-like simulation: 2 modalities x 30 features, KNN_k 20, spatial k 3, latent 64, dropout 0.1, "
        "training mode (blocked dropout attention). Peak = RSS high-water mark of a fresh process per row.",
        "",
        "| spots | implementation | s / epoch | peak RSS (GiB) | timed epochs |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n']:,} | {r['impl']} | failed: {r['error']} | | |")
        else:
            lines.append(f"| {r['n']:,} | {r['impl']} | {r['epoch_seconds']:.3g} | {r['peak_gib']:.2f} | {r['epochs']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES)
    parser.add_argument("--dense-max", type=int, default=10000, help="largest N run with the dense formulation")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train.md")
    parser.add_argument("--worker", nargs=4, metavar=("IMPL", "NPZ", "WARMUP", "EPOCHS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, path, warmup, epochs = args.worker
        print(json.dumps(worker(impl, path, int(warmup), int(epochs))))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = Path(tmp) / f"inputs_{n}.npz"
            make_inputs(n, path)
            for impl in ["sparse"] + (["dense"] if n <= args.dense_max else []):
                row = run_one(impl, n, path)
                print(json.dumps(row), flush=True)
                rows.append(row)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(markdown(rows))  # partial results survive an interrupted run
            os.remove(path)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
