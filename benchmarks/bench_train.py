"""Seconds per training epoch and peak memory of SPAMO, sparse vs the dense N x N formulation.

HLN-like simulated problem: 2 modalities, 30-dim features with planted spatial domains, KNN_k 20 (correlation),
spatial k 3, latent 64, dropout 0.1, training mode, CPU with 2 threads or one CUDA GPU. Every (implementation, N)
runs in a fresh subprocess so `resource.getrusage(RUSAGE_SELF).ru_maxrss` (and on CUDA
`torch.cuda.max_memory_allocated`) is that run's own high-water mark; the inputs are built by the parent and handed
over as an .npz file, so graph building does not count.

    python benchmarks/bench_train.py                       # CPU, N = 1,000 3,500 10,000 30,000 100,000
    python benchmarks/bench_train.py --sizes 1000 3500 --out /tmp/train.md
    python benchmarks/bench_train.py --device cuda         # GPU, N = 1,000 ... 1,000,000 -> results/train_gpu.md
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

from spamo.choices import ATTENTION_PRECISIONS  # noqa: E402 - light (standard library only), after the path

DEFAULT_SIZES = [1000, 3500, 10000, 30000, 100000]
GPU_SIZES = [1000, 3500, 10000, 30000, 100000, 300000, 1000000]
FLOOR_MAX_N = 30000  # largest N whose fused-attention floor is measured beside the epochs (CPU)
DIM, KNN_K, SPATIAL_K, DOMAINS = 30, 20, 3, 10


def timed_epochs(n: int, device: str = "cpu") -> tuple[int, int]:
    """(warm-up epochs, timed epochs) for N spots: fewer at large N where one epoch takes minutes."""
    if device != "cpu":
        return (2, 10) if n <= 100000 else (1, 2) if n <= 300000 else (1, 1)
    if n <= 1000:
        return 1, 10
    if n <= 3500:
        return 1, 5
    if n <= 10000:
        return 1, 3
    if n <= 30000:
        return 1, 1
    return 0, 1


def gpu_neighbours(points: np.ndarray, k: int, device: str, block: int = 1024) -> np.ndarray:
    """Exact k nearest other points (euclidean) by blocked distance products on the GPU: (N, k) indices."""
    import torch

    x = torch.as_tensor(points, dtype=torch.float32, device=device)
    sq = (x * x).sum(1)
    out = np.empty((x.shape[0], k), dtype=np.int64)
    for start in range(0, x.shape[0], block):
        stop = min(start + block, x.shape[0])
        dist = sq[start:stop, None] - 2.0 * (x[start:stop] @ x.t()) + sq[None, :]
        dist[torch.arange(stop - start), torch.arange(start, stop)] = -1.0  # the point itself ranks first
        out[start:stop] = dist.topk(k + 1, dim=1, largest=False).indices[:, 1:].cpu().numpy()
    return out


def make_inputs(n: int, path: Path, seed: int = 0, device: str = "cpu") -> None:
    """Planted-domain features and their normalised graphs, saved as COO arrays (kNN on the GPU for CUDA runs)."""
    from model_problems import normalised_graph, normalised_knn_graph

    def knn_graph(points, k):
        if device == "cpu":
            return normalised_knn_graph(points, k)
        return normalised_graph(gpu_neighbours(points, k, device))

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
        for kind, graph in (("spatial", knn_graph(coords, SPATIAL_K)), ("feature", knn_graph(unit, KNN_K))):
            arrays[f"{kind}{m}_indices"] = graph.indices().numpy()
            arrays[f"{kind}{m}_values"] = graph.values().numpy()
        arrays[f"features{m}"] = x
    np.savez(path, **arrays)


def worker(impl: str, path: str, warmup: int, epochs: int, device: str = "cpu") -> dict:
    """Train in this (fresh) process and report time per epoch and the process's peak RSS (and GPU memory)."""
    import torch

    torch.set_num_threads(int(os.environ.get("SPAMO_BENCH_THREADS", "2")))
    from spamo.config import SpamoConfig
    from spamo.training import Trainer
    from train_inputs import load_inputs

    features, spatial, feature = load_inputs(path)
    n = features[0].shape[0]
    config = SpamoConfig(data_type="10x", knn_k=KNN_K, spatial_k=SPATIAL_K, epochs=warmup + epochs, device=device,
                         attention_precision=os.environ.get("SPAMO_BENCH_PRECISION", "float32")).resolve(2, n)
    trainer = Trainer(features, spatial, feature, config, device)
    if impl == "dense":
        from dense_reference import DenseSpamo

        on_device = [x.to(device) for x in features]
        trainer = DenseSpamo(trainer.model, on_device, [g.to(device) for g in spatial],
                             [g.to(device) for g in feature], config)
    cuda = device != "cpu"
    for _ in range(warmup):
        trainer.step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(epochs):
        trainer.step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / epochs
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    row = {"impl": impl, "n": n, "epochs": epochs, "epoch_seconds": seconds, "peak_gib": peak_kib / 2**20}
    if cuda:
        row["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        row["gpu"] = torch.cuda.get_device_name()
    elif n <= FLOOR_MAX_N:
        row["floor_seconds"] = fused_attention_floor(n)
    return row


def fused_attention_floor(n: int, repeats: int = 3) -> float:
    """Seconds for one attention direction (forward + backward, d = 64) with PyTorch's fused kernel and no dropout.

    The floor the issue quotes for this CPU (0.69 s at 10,000 spots), measured in the same process as the epochs
    so the row shows how fast the machine was at the time (it is a VM whose speed drifts with its neighbours).
    """
    import torch

    from spamo.model import attention

    q, k, v = (torch.randn(n, 64, requires_grad=True) for _ in range(3))
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        attention(q, k, v, 0.0).sum().backward()
        best = min(best, time.perf_counter() - start)
    return best


def run_one(impl: str, n: int, path: Path, device: str = "cpu", repeats: int = 1) -> dict:
    """One row: `repeats` fresh processes; the median run's figures, plus the range of s / epoch over the runs.

    Repeats are there because the project machine is a VM whose speed drifts with its neighbours (the same run has
    measured 1.9 and 2.4 s / epoch at 10,000 spots within half an hour).
    """
    warmup, epochs = timed_epochs(n, device)
    cmd = [sys.executable, __file__, "--worker", impl, str(path), str(warmup), str(epochs), device]
    runs = []
    for _ in range(repeats):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"impl": impl, "n": n, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    runs.sort(key=lambda r: r["epoch_seconds"])
    row = dict(runs[len(runs) // 2])
    row["repeats"] = repeats
    row["range"] = (runs[0]["epoch_seconds"], runs[-1]["epoch_seconds"])
    return row


def markdown(rows: list[dict], device: str = "cpu") -> str:
    import torch

    if device != "cpu":
        gpu = next((r["gpu"] for r in rows if "gpu" in r), "CUDA GPU")
        lines = [
            "# Training speed and memory on a GPU (bench_train.py --device cuda)",
            "",
            f"Machine: one {gpu}, torch {torch.__version__}. Same HLN-like problem as the CPU table: "
            "2 modalities x 30 features, KNN_k 20, spatial k 3, latent 64, dropout 0.1, training mode (fused "
            "dropout attention). GPU peak = `torch.cuda.max_memory_allocated` of a fresh process per row.",
            "",
            "| spots | implementation | attention precision | s / epoch | peak GPU memory (GiB) | peak host RSS (GiB) "
            "| timed epochs |",
            "|---:|---|---|---:|---:|---:|---:|",
        ]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['n']:,} | {r['impl']} | {r['precision']} | failed: {r['error']} | | | |")
            else:
                lines.append(f"| {r['n']:,} | {r['impl']} | {r['precision']} | {r['epoch_seconds']:.3g} "
                             f"| {r['gpu_peak_gib']:.2f} | {r['peak_gib']:.2f} | {r['epochs']} |")
        return "\n".join(lines) + "\n"
    lines = [
        "# Training speed and memory (bench_train.py)",
        "",
        f"Machine: {platform.machine()} 2-core CPU VM, 24 GiB, torch {torch.__version__}, no other jobs (the VM's "
        "speed drifts with its host: the floor column is measured in the same processes), "
        f"{os.environ.get('SPAMO_BENCH_THREADS', '2')} torch threads. "
        "HLN-like simulation: 2 modalities x 30 features, KNN_k 20, spatial k 3, latent 64, dropout 0.1, "
        "training mode (blocked dropout attention). Peak = RSS high-water mark of a fresh process per run; "
        "with several runs per row, the median run is shown.",
        "",
        "| spots | implementation | s / epoch | peak RSS (GiB) | timed epochs | runs (s / epoch range) "
        "| fused-attention floor, s / direction (same run) |",
        "|---:|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n']:,} | {r['impl']} | failed: {r['error']} | | | | |")
        else:
            spread = f"{r['repeats']} ({r['range'][0]:.3g}-{r['range'][1]:.3g})" if r["repeats"] > 1 else "1"
            floor = f"{r['floor_seconds']:.3g}" if "floor_seconds" in r else ""
            lines.append(f"| {r['n']:,} | {r['impl']} | {r['epoch_seconds']:.3g} | {r['peak_gib']:.2f} | {r['epochs']} "
                         f"| {spread} | {floor} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--sizes", type=int, nargs="+", help="spot counts (default: CPU or GPU list above)")
    parser.add_argument("--dense-max", type=int, help="largest N run with the dense formulation "
                        "(default 10,000; at 30,000 it needs more than 80 GiB of GPU memory)")
    parser.add_argument("--out", type=Path, help="markdown table (default results/train.md or train_gpu.md)")
    parser.add_argument("--repeats", type=int, default=1, help="fresh runs per row; the median is reported")
    parser.add_argument("--precision", nargs="+", default=["float32"], choices=ATTENTION_PRECISIONS,
                        help="attention_precision of the sparse rows, each on the same inputs (bfloat16: CUDA only)")
    parser.add_argument("--worker", nargs=5, metavar=("IMPL", "NPZ", "WARMUP", "EPOCHS", "DEVICE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, path, warmup, epochs, device = args.worker
        print(json.dumps(worker(impl, path, int(warmup), int(epochs), device)))
        return
    cpu = args.device == "cpu"
    sizes = args.sizes or (DEFAULT_SIZES if cpu else GPU_SIZES)
    dense_max = args.dense_max if args.dense_max is not None else 10000
    out = args.out or ROOT / "benchmarks" / "results" / ("train.md" if cpu else "train_gpu.md")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = Path(tmp) / f"inputs_{n}.npz"
            tick = time.perf_counter()
            make_inputs(n, path, device=args.device)
            print(f"inputs for {n:,} spots: {time.perf_counter() - tick:.1f} s", flush=True)
            runs = [("sparse", p) for p in args.precision] + ([("dense", "float32")] if n <= dense_max else [])
            for impl, precision in runs:
                os.environ["SPAMO_BENCH_PRECISION"] = precision  # the worker's (a fresh process's) setting
                row = {**run_one(impl, n, path, args.device, args.repeats), "precision": precision}
                print(json.dumps(row), flush=True)
                rows.append(row)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(markdown(rows, args.device))  # partial results survive an interrupted run
            os.remove(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(rows, args.device))
    print(markdown(rows, args.device))


if __name__ == "__main__":
    main()
