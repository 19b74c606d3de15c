"""Throughput of `spamo tune`: trials per hour, per-trial overhead, worker reuse, and the driver's memory.

    python benchmarks/bench_tune.py throughput --n-spots 3500 --epochs 200 --trials 6   # ASHA vs no scheduler
    python benchmarks/bench_tune.py overhead --n-spots 1296 --epochs 20 --trials 8      # reused vs fresh workers
    python benchmarks/bench_tune.py memory --trials 300                                 # driver memory, tiny data

- `throughput`: `spamo tune` with the default ASHA settings and with `--scheduler none` (same seed, so the sampler
  proposes the same first configurations): wall time, trials/hour, epochs trained, best ARI of each.
- `overhead`: the same search with reused Ray workers (the default) and with `--fresh-workers` (a new worker process
  per trial, as before): per-trial overhead = (first trial start to last trial end x concurrent trials - sum of
  training and clustering time) / trials, i.e. everything a trial costs besides training and clustering (worker
  start, imports, data and graph fetch, reports, Tune's bookkeeping).
- `memory`: a long search of a tiny dataset; the driver's resident memory is sampled every second and reported
  after the first 10% of the trials and at the end (growth per 100 trials).

Each section is appended to --out (default benchmarks/results/tune.md) with the machine and `uptime` (the load
average: the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(ROOT / "cli.py")]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def machine() -> str:
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()}-core CPU ({platform.machine()}), {mem:.0f} GiB, torch {torch.__version__}"


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def tune(data: Path, work: Path, name: str, args, *extra: str, sampler=None) -> tuple[float, pd.DataFrame]:
    """One `spamo tune` process; (wall seconds, trials table). `sampler(pid)` runs in a thread while it lives."""
    command = [*CLI, "tune", "--data-dir", str(data), "--data-type", "Simulation", "--n-clusters", "5",
               "--num-samples", str(args.trials), "--epochs", str(args.epochs), "--report-every",
               str(args.report_every), "--cpus-per-trial", "1", "--gpus-per-trial", "0", "--name", name,
               "--storage", str(work / "runs"), *extra]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watcher = threading.Thread(target=sampler, args=(process.pid,), daemon=True) if sampler else None
    if watcher:
        watcher.start()
    output, _ = process.communicate()
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{output[-3000:]}")
    return wall, pd.read_parquet(work / "runs" / name / "trials.parquet")


def simulated(work: Path, n_spots: int) -> Path:
    from spamo.simulate import write_simulation

    data = work / "sim"
    write_simulation(data, n_spots=n_spots, seed=0)
    return data


def overhead_s(frame: pd.DataFrame, slots: int) -> float:
    """(span from the first trial's start to the last one's end x trials at once - training and clustering time)
    / trials: the driver's own start (data, Ray) is left out, every later worker start is in."""
    span = frame["finished_at"].max() - frame["started_at"].min()
    busy = (frame["train_s"].fillna(0) + frame["cluster_s"].fillna(0)).sum()
    return (span * slots - busy) / len(frame)


def worker_processes(run_dir: Path) -> int:
    """How many worker processes ran the trials (Ray records each result's process id)."""
    import json

    pids = set()
    for path in run_dir.glob("trial_*/result.json"):
        pids |= {json.loads(line)["pid"] for line in path.read_text().splitlines() if line.strip()}
    return len(pids)


def header(title: str, args) -> list[str]:
    return [f"### {title}", "", f"Machine: {machine()}. `uptime` at the start: `{args.uptime_start}`; at the end: "
            f"`{uptime()}`.", ""]


def throughput(args, work: Path) -> list[str]:
    data = simulated(work, args.n_spots)
    asha_wall, asha = tune(data, work, "asha", args, "--scheduler", "asha")
    fifo_wall, fifo = tune(data, work, "fifo", args, "--scheduler", "none")
    from search.space import SPACE_DIR, load_space

    searched = [c for c in load_space(SPACE_DIR / "default.toml").distributions if c in fifo and c in asha]
    same = fifo[searched].reset_index(drop=True).equals(asha[searched].reset_index(drop=True))
    lines = header(f"spamo tune throughput ({args.n_spots} spots, {args.epochs} epochs, {args.trials} trials, "
                   f"1 CPU per trial)", args)
    lines += ["| scheduler | wall (s) | trials | trials / hour | epochs trained | stopped early | best ARI |",
              "|---|---|---|---|---|---|---|"]
    for label, wall, frame in (("ASHA (default)", asha_wall, asha), ("none", fifo_wall, fifo)):
        best = frame.loc[frame["status"] == "finished", "ari"].max()
        lines.append(f"| {label} | {wall:.0f} | {len(frame)} | {3600 * len(frame) / wall:.1f} | "
                     f"{int(frame['epoch'].sum())} | {int((frame['status'] == 'stopped_early').sum())} | "
                     f"{best:.3f} |")
    lines += ["", f"Same configurations in both searches: {'yes' if same else 'no'} (searched columns compared).", ""]
    return lines


def overhead(args, work: Path) -> list[str]:
    data = simulated(work, args.n_spots)
    slots = min(2, os.cpu_count() or 1)
    rows = []
    for label, flag in (("fresh worker per trial (before)", "--fresh-workers"), ("reused workers (now)",
                                                                               "--reuse-workers")):
        wall, frame = tune(data, work, flag.strip("-"), args, "--scheduler", "none", flag)
        in_trial = (frame["wall_s"] - frame["train_s"] - frame["cluster_s"]).mean()
        rows.append((label, wall, frame, overhead_s(frame, slots), in_trial,
                     worker_processes(work / "runs" / flag.strip("-"))))
    lines = header(f"Per-trial overhead ({args.n_spots} spots, {args.epochs} epochs, {args.trials} trials, "
                   f"scheduler none, {slots} trials at once)", args)
    lines += ["| workers | wall (s) | trials / hour | mean train (s) | mean clustering (s) | overhead per trial (s) "
              "| of which inside the trial (s) | worker processes |", "|---|---|---|---|---|---|---|---|"]
    for label, wall, frame, per_trial, in_trial, processes in rows:
        lines.append(f"| {label} | {wall:.0f} | {3600 * len(frame) / wall:.1f} | {frame['train_s'].mean():.1f} | "
                     f"{frame['cluster_s'].mean():.1f} | {per_trial:.1f} | {in_trial:.1f} | {processes} |")
    lines += ["", "Overhead per trial = (time from the first trial's start to the last trial's end x trials at once - "
                  "sum of training and clustering) / trials (worker starts included, the driver's own start not); "
                  "inside the trial = its wall time minus training and clustering (graph fetch, data, reports).", ""]
    return lines


def memory(args, work: Path) -> list[str]:
    data = simulated(work, args.n_spots)
    samples: list[tuple[float, int, float]] = []  # (time, trials ended, RSS MiB)
    ledger = work / "runs" / "mem" / "ledger"

    def sample(pid: int) -> None:
        while True:
            value = rss_mib(pid)
            if value is None:
                return
            ended = len(list(ledger.glob("*.json"))) if ledger.is_dir() else 0
            samples.append((time.time(), ended, value))
            time.sleep(1.0)

    wall, frame = tune(data, work, "mem", args, "--scheduler", "none", sampler=sample)
    early = [s for s in samples if s[1] >= max(1, args.trials // 10)]
    at_early = max(s[2] for s in samples if s[1] <= early[0][1]) if early else float("nan")
    last = max(s[2] for s in samples)
    tail = [s[2] for s in samples if args.trials * 0.9 <= s[1] < args.trials]  # before the outputs are written
    growth = (max(tail) - at_early) / (args.trials * 0.8 / 100) if tail and early else float("nan")
    lines = header(f"Driver memory over a {args.trials}-trial search ({args.n_spots} spots, {args.epochs} epochs)",
                   args)
    lines += ["| trials | wall (s) | trials / hour | driver RSS after 10% of trials (MiB) | "
              "driver RSS peak, outputs included (MiB) | growth per 100 trials during the search (MiB) |",
              "|---|---|---|---|---|---|",
              f"| {len(frame)} | {wall:.0f} | {3600 * len(frame) / wall:.1f} | {at_early:.0f} | {last:.0f} | "
              f"{growth:.1f} |", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("throughput", "overhead", "memory"))
    parser.add_argument("--n-spots", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--report-every", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tune.md")
    args = parser.parse_args()
    defaults = {"throughput": (3500, 200, 6), "overhead": (1296, 20, 8), "memory": (300, 2, 300)}[args.what]
    args.n_spots = args.n_spots or defaults[0]
    args.epochs = args.epochs or defaults[1]
    args.trials = args.trials or defaults[2]
    if args.what == "memory":
        args.report_every = min(args.report_every, args.epochs)
    args.uptime_start = uptime()
    work = Path(tempfile.mkdtemp(prefix="bench_tune_"))
    lines = {"throughput": throughput, "overhead": overhead, "memory": memory}[args.what](args, work)
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as fh:
        fh.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
