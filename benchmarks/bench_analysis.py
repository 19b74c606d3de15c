"""Time and peak memory of `spamo analyze` on simulated run folders of growing size.

Each size runs in its own process (peak RSS is per process). The run folder is written from the simulator without
training (domains = ground truth, embedding = noisy one-hot of the truth): the analysis does not depend on how the
embedding was made. Gene sets: the planted RNA set of each domain plus 200 random sets of 30 genes.

    python benchmarks/bench_analysis.py --sizes 1296 10000 50000 --out benchmarks/results/analysis.md
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILES = {"RNA": "adata_RNA.h5ad", "ADT": "adata_ADT.h5ad", "ATAC": "adata_ATAC.h5ad"}


def write_run(root: Path, n_spots: int, seed: int = 0) -> tuple[Path, Path]:
    """Simulated modality files, a GMT, and a run folder whose embedding is the noisy one-hot truth."""
    import numpy as np

    from spamo import run_folder
    from spamo.simulate import simulate

    sim = simulate(n_spots, seed=seed, layout="sim")
    data = root / "data"
    data.mkdir(parents=True)
    for name, adata in sim.modalities.items():
        adata.write_h5ad(data / FILES[name])
    rng = np.random.default_rng(seed)
    fused = np.eye(64, dtype=np.float32)[sim.truth] + rng.normal(0, 0.3, (n_spots, 64)).astype(np.float32)
    fused /= np.linalg.norm(fused, axis=1, keepdims=True)
    run = root / "run"
    run.mkdir()
    run_folder.write_embedding(run_folder.RunEmbedding(
        spot_names=np.asarray(sim.modalities["RNA"].obs_names).astype(str), coords=sim.coords, fused=fused,
        per_modality={n: fused for n in sim.modalities}, labels=sim.truth, data_type="Simulation", dataset="sim",
        sources={n: str((data / FILES[n]).resolve()) for n in sim.modalities}), run / run_folder.EMBEDDING_FILE)
    genes = list(sim.modalities["RNA"].var_names)
    lines = [f"PLANTED_{d}\tplanted\t" + "\t".join(g) for d, g in sim.modalities["RNA"].uns["planted_features"].items()]
    lines += [f"RANDOM_{i}\trandom\t" + "\t".join(rng.choice(genes, 30, replace=False)) for i in range(200)]
    gmt = root / "sets.gmt"
    gmt.write_text("\n".join(lines) + "\n")
    return run, gmt


def measure(n_spots: int) -> dict:
    """One size, in this process: stage times from the progress messages, and peak RSS."""
    from spamo.analysis import analyze

    with tempfile.TemporaryDirectory() as tmp:
        run, gmt = write_run(Path(tmp), n_spots)
        marks: list[tuple[str, float]] = []
        start = time.perf_counter()
        analyze(run, gene_sets=[gmt], progress=lambda m: marks.append((m.split(":")[0], time.perf_counter())))
        total = time.perf_counter() - start
    stages: dict[str, float] = {}
    for (name, t0), (_, t1) in zip(marks, marks[1:] + [("end", start + total)]):
        stages[name] = stages.get(name, 0.0) + t1 - t0
    return {"n_spots": n_spots, "total_s": total, **{f"{k}_s": v for k, v in stages.items()},
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1296, 10000, 50000])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/analysis.md"))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    rows = []
    for n in args.sizes:
        done = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    header = ("| spots | total s | markers s (RNA+ADT+ATAC) | enrichment s (ORA + prerank, 205 sets x 5 domains) "
              "| PAGA s | tables + figures s | peak RSS GB |\n|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['n_spots']:,} | {r['total_s']:.1f} | {r.get('markers_s', 0):.1f} | {r.get('enrichment_s', 0):.1f} "
        f"| {r.get('PAGA_s', 0):.1f} | {r.get('writing tables_s', 0) + r.get('drawing figures_s', 0):.1f} "
        f"| {r['peak_rss_gb']:.2f} |\n" for r in rows)
    text = ("# `spamo analyze` speed and memory\n\n"
            f"Machine: 2-core CPU, 24 GiB, torch 2.13.0 CPU, {platform.python_implementation()} "
            f"{platform.python_version()}; shared with other jobs while measured. Simulated `sim` layout "
            "(RNA 1000 genes, ADT 100 proteins, ATAC 1000 peaks, 5 domains), Wilcoxon markers, 100 prerank "
            "permutations, `python benchmarks/bench_analysis.py`. Peak RSS includes the simulation of the data.\n\n"
            + header + body)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
