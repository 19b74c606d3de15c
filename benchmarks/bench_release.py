"""The whole 200-epoch job side by side: the published release against `spamo run`, on the same input, same machine,
interleaved (issue #16: >= 30x).

The release is not part of this repository and never will be (its licence is not ours): `--release DIR` names a
folder holding the release's Python package as published (its `model.py`, `trainer.py` and `preprocess.py`). The
release calls that package `spamo`, as this project is called, and its main script imports it by that name, so that
script is not run: the package is loaded as `spamo_release`, and this script replays the main script's 10x path
(docs/method.md section 1) by calling the release's own functions in the same order, as with its `--skip_plot` (its
picture's UMAP over 500 neighbours is left out). Like that script, the release child runs with
OMP_NUM_THREADS=MKL_NUM_THREADS=1 (set there before torch is imported); `--release-threads` changes that.

Input: bench_run.py's 2,500-spot RNA + ADT simulation in the HLN layout (8 domains). Settings: the release's
defaults, which are spamo's `--dataset hln` defaults (KNN_k 20, weights 5/5, dgi 0.1, spatial 0.01, AdamW, lr 0.01,
weight decay 5e-3, no scheduler, dropout 0.1, seed 2025; the feature graphs' edge values differ, distance against
spamo's default connectivity, which costs the same), `--epochs` epochs. Clustering on the release side: PCA to 20
components and R mclust EEE (seed 2020), as the release's utils do, through spamo's call of the same model. Both
sides' labels are scored against the truth with spamo's ARI, to show that both did the job.

What each side's time holds:
- release: the child process's wall clock from start to exit (imports, reading, preprocessing, graphs, training,
  clustering, writing the labels), no picture;
- spamo: `spamo run --dataset hln` (bench_run.one_run) with its picture, unless `--no-plot`.
So the ratio favours the release.

    python benchmarks/bench_release.py --release /path/to/release-src --epochs 200        # spamo, release, spamo
    python benchmarks/bench_release.py --release /path/to/release-src --epochs 2 --rounds 1  # a quick check
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_run import DOMAINS, SPOTS, make_input, one_run  # noqa: E402

from spamo.metrics import machine_named, score_label_files  # noqa: E402

RELEASE_FILES = ("model.py", "trainer.py", "preprocess.py")
SEED, CLUSTER_SEED, PCS = 2025, 2020, 20
SETTINGS = SimpleNamespace(KNN_k=20, RNA_weight=5.0, ADT_weight=5.0, alpha=0.9)


def load_release(folder: Path):
    """The release's package from `folder`, imported as `spamo_release` (its relative imports resolve inside it)."""
    spec = importlib.util.spec_from_file_location("spamo_release", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["spamo_release"] = package
    if (folder / "__init__.py").exists():
        spec.loader.exec_module(package)
    return (importlib.import_module("spamo_release.preprocess"), importlib.import_module("spamo_release.trainer"))


def release_child(folder: Path, data: Path, out: Path, epochs: int) -> None:
    """One release job in this (fresh) process; prints its stage timings as one JSON line."""
    import numpy as np
    import scanpy as sc
    import torch

    from spamo.clustering import cluster

    threads = torch.get_num_threads()  # what the training runs on (clustering limits its own threads)
    marks = {"start": time.perf_counter()}
    preprocess, trainer = load_release(folder)
    rna = sc.read_h5ad(data / "adata_RNA.h5ad")
    adt = sc.read_h5ad(data / "adata_ADT.h5ad")
    rna.var_names_make_unique()
    adt.var_names_make_unique()
    preprocess.fix_seed(SEED)
    marks["read"] = time.perf_counter()
    sc.pp.filter_genes(rna, min_cells=10)
    sc.pp.highly_variable_genes(rna, flavor="seurat_v3", n_top_genes=3000)
    sc.pp.normalize_total(rna, target_sum=1e4)
    sc.pp.log1p(rna)
    sc.pp.scale(rna)
    rna.obsm["feat"] = preprocess.pca(rna[:, rna.var["highly_variable"]], n_comps=adt.n_vars - 1)
    adt = preprocess.clr_normalize_each_cell(adt)
    sc.pp.scale(adt)
    adt.obsm["feat"] = preprocess.pca(adt, n_comps=adt.n_vars - 1)
    prepared = preprocess.construct_neighbor_graph(rna, adt, datatype="10x", Arg=SETTINGS)
    marks["preprocess"] = time.perf_counter()
    job = trainer.Train(prepared, datatype="10x", device=torch.device("cpu"), dim_output=64, Arg=SETTINGS,
                        dgi_weight=0.1, spatial_weight=0.01, epochs_override=epochs, dropout=0.1,
                        use_cross_attn=True, random_seed=SEED, optimizer_type="adamw", lr_scheduler_type="none")
    output = job.train()
    marks["train"] = time.perf_counter()
    # the release's utils: PCA to 20 components, R mclust "EEE", seed 2020: spamo's call of the same model
    labels = cluster(output["emb_combined"], DOMAINS, "mclust", n_pcs=PCS, seed=CLUSTER_SEED)
    out.mkdir(parents=True, exist_ok=True)
    np.savetxt(out / "labels.txt", labels, fmt="%d")
    marks["cluster"] = time.perf_counter()
    stages = list(marks)
    timings = {f"{b}_s": round(marks[b] - marks[a], 2) for a, b in zip(stages, stages[1:])}
    print("RELEASE_TIMINGS " + json.dumps({"timings": timings, "threads": threads}), flush=True)


def release_run(folder: Path, data: Path, out: Path, epochs: int, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(folder), str(data), str(out), str(epochs)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return {"error": f"release job failed (exit {proc.returncode}): {last}"}
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RELEASE_TIMINGS "))
    return {"wall": wall, **json.loads(line.split(" ", 1)[1])}


def ari_against_truth(labels_file: Path, truth_file: Path) -> float:
    return machine_named(score_label_files(truth_file, labels_file))["ari"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", type=Path, required=True,
                        help="folder with the release's package (" + ", ".join(RELEASE_FILES) + ")")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1, help="release runs; spamo runs before each and after all")
    parser.add_argument("--release-threads", type=int, default=1, help="the release's main script sets 1")
    parser.add_argument("--no-plot", action="store_true", help="spamo runs without the picture")
    args = parser.parse_args()
    missing = [name for name in RELEASE_FILES if not (args.release / name).is_file()]
    if missing:
        parser.error(f"--release {args.release}: no {', '.join(missing)} there (the release's package folder)")
    if args.epochs < 1 or args.rounds < 1 or args.release_threads < 1:
        parser.error("--epochs, --rounds and --release-threads must be at least 1")
    spamo_rows, release_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        data_root = Path(tmp) / "data"
        make_input(data_root)
        truth = data_root / "HLN" / "GT_labels.txt"

        def spamo_once(i: int) -> None:
            out = Path(tmp) / f"spamo_{i}"
            row = one_run(ROOT, data_root, out, args.epochs, not args.no_plot, None)
            if "wall" in row:
                row["ari"] = ari_against_truth(out / "labels.txt", truth)
            spamo_rows.append(row)
            print("spamo", row, flush=True)

        for r in range(args.rounds):
            spamo_once(r)
            out = Path(tmp) / f"release_{r}"
            row = release_run(args.release.resolve(), data_root / "HLN", out, args.epochs, args.release_threads)
            if "wall" in row:
                row["ari"] = ari_against_truth(out / "labels.txt", truth)
            release_rows.append(row)
            print("release", row, flush=True)
        spamo_once(args.rounds)
    print(report(spamo_rows, release_rows, args))


def report(spamo_rows: list, release_rows: list, args) -> str:
    ok_s = [r["wall"] for r in spamo_rows if "wall" in r]
    ok_r = [r["wall"] for r in release_rows if "wall" in r]
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, load "
             f"{os.getloadavg()[0]:.1f} at the end; {SPOTS:,} spots, {args.epochs} epochs, "
             f"release threads {args.release_threads}, spamo picture {'no' if args.no_plot else 'yes'}.", ""]
    lines += [f"- spamo run {i + 1}: " + _row(r) for i, r in enumerate(spamo_rows)]
    lines += [f"- release run {i + 1}: " + _row(r) for i, r in enumerate(release_rows)]
    if ok_s and ok_r:
        ratio = statistics.median(ok_r) / statistics.median(ok_s)
        lines += ["", f"release / spamo (medians): {ratio:.1f}x (release {statistics.median(ok_r):.1f} s, spamo "
                      f"{statistics.median(ok_s):.1f} s; spamo range {min(ok_s):.1f}-{max(ok_s):.1f} s)"]
    return "\n".join(lines)


def _row(row: dict) -> str:
    if "wall" not in row:
        return row.get("error", "failed")
    stages = row.get("timings", {})
    return (f"{row['wall']:.1f} s wall, ARI {row.get('ari', float('nan')):.3f}; stages: "
            + ", ".join(f"{k} {v:.1f}" for k, v in stages.items() if isinstance(v, (int, float))))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        release_child(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
