"""Throughput of `spamo tune` against one `spamo run` process per configuration, and the compute ASHA saves.

    python benchmarks/bench_tune.py --n-spots 3500 --epochs 200 --trials 6     # the README's benchmark
    python benchmarks/bench_tune.py --n-spots 1296 --epochs 40 --trials 4      # a reduced run

Three measurements on one simulated dataset (written once):

1. `spamo tune --scheduler none`: every trial trains the full budget; trials share the preprocessed data and the
   feature graphs and run side by side (1 CPU each).
2. The same configurations (read back from (1)'s trials.parquet), each in its own `spamo run` process, one after
   the other (each process loads, preprocesses, builds graphs, trains, clusters; torch uses every core).
3. `spamo tune --scheduler asha`: the same seed, so the sampler proposes the same first configurations (Optuna's
   TPE samples its first 10 trials at random); ASHA stops poor ones early. Compute = epochs trained in all trials.

Writes a markdown table (machine named) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(ROOT / "cli.py")]


def timed(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def tune(data: Path, work: Path, name: str, scheduler: str, args) -> tuple[float, pd.DataFrame]:
    wall = timed([*CLI, "tune", "--data-dir", str(data), "--data-type", "Simulation", "--n-clusters", "5",
                  "--num-samples", str(args.trials), "--epochs", str(args.epochs), "--scheduler", scheduler,
                  "--report-every", str(args.report_every), "--cpus-per-trial", str(args.cpus_per_trial),
                  "--name", name, "--storage", str(work / "runs")], work)
    return wall, pd.read_parquet(work / "runs" / name / "trials.parquet")


def one_process_each(data: Path, work: Path, frame: pd.DataFrame) -> float:
    """Every configuration of `frame` as its own `spamo run` process, one after the other."""
    from spamo.io import dump_toml

    total = 0.0
    for _, row in frame.iterrows():
        config = {k: v for k, v in json.loads(row["config_json"]).items() if v is not None}
        path = work / f"run_{int(row['number'])}.toml"
        path.write_text(dump_toml({"spamo": config}))
        total += timed([*CLI, "run", "--data-dir", str(data), "--data-type", "Simulation", "--config", str(path),
                        "--out", str(work / f"run_{int(row['number'])}"), "--quiet", "--no-plot"], work)
    return total


def machine() -> str:
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()}-core CPU ({platform.machine()}), {mem:.0f} GiB, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-spots", type=int, default=3500)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--report-every", type=int, default=10)
    parser.add_argument("--cpus-per-trial", type=float, default=1)
    parser.add_argument("--skip-processes", action="store_true", help="skip the one-process-per-config baseline")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tune.md")
    args = parser.parse_args()

    from spamo.simulate import write_simulation

    work = Path(tempfile.mkdtemp(prefix="bench_tune_"))
    data = work / "sim"
    write_simulation(data, n_spots=args.n_spots, seed=0)
    fifo_wall, fifo = tune(data, work, "fifo", "none", args)
    asha_wall, asha = tune(data, work, "asha", "asha", args)
    proc_wall = None if args.skip_processes else one_process_each(data, work, fifo)

    from search.space import SPACE_DIR, load_space

    searched = [c for c in load_space(SPACE_DIR / "default.toml").distributions if c in fifo and c in asha]
    same_configs = fifo[searched].reset_index(drop=True).equals(asha[searched].reset_index(drop=True))
    rows = [
        ("spamo tune, no scheduler", fifo_wall, len(fifo), int(fifo["epoch"].sum()), fifo["ari"].max()),
        ("spamo tune, ASHA", asha_wall, len(asha), int(asha["epoch"].sum()),
         asha.loc[asha["status"] == "finished", "ari"].max()),
    ]
    if proc_wall is not None:
        rows.insert(1, ("one `spamo run` process per configuration", proc_wall, len(fifo),
                        int(fifo["epoch"].sum()), fifo["ari"].max()))
    lines = [
        f"### spamo tune throughput ({args.n_spots}-spot simulation, {args.epochs} epochs, {args.trials} trials)",
        "",
        f"Machine: {machine()}. Trials hold {args.cpus_per_trial:g} CPU each; intermediate reports every "
        f"{args.report_every} epochs.",
        "",
        "| mode | wall (s) | trials | trials / hour | epochs trained | best ARI |",
        "|---|---|---|---|---|---|",
    ]
    for mode, wall, n, epochs, best in rows:
        lines.append(f"| {mode} | {wall:.0f} | {n} | {3600 * n / wall:.1f} | {epochs} | {best:.3f} |")
    saved = 1 - rows[-1][3] / rows[0][3]
    lines += ["", f"ASHA trained {saved:.0%} fewer epochs than the full search"
                  + (" (same first configurations)" if same_configs else "")
                  + f"; best ARI {rows[-1][4]:.3f} vs {rows[0][4]:.3f}.", ""]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as fh:
        fh.write(text + "\n")


if __name__ == "__main__":
    main()
