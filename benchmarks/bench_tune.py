"""Throughput of `spamo tune`: trials per hour, per-trial overhead, worker reuse, and the driver's memory.

    python benchmarks/bench_tune.py throughput      # ASHA vs no scheduler: 3,500 spots, 200 epochs, 12 trials
    python benchmarks/bench_tune.py throughput --preset hln_soft --trials 24     # ... on a harder simulation
    python benchmarks/bench_tune.py overhead --n-spots 1296 --epochs 20 --trials 8      # reused vs fresh workers
    python benchmarks/bench_tune.py memory --trials 300                                 # driver memory, tiny data
    python benchmarks/bench_tune.py memory --scheduler asha --epochs 8 --report-every 2   # ... with ASHA's rungs

- `throughput`: `spamo tune` with the default ASHA settings and with `--scheduler none` on the same configurations
  (the seeded sampler's first 11 proposals do not depend on results; checked on trials.parquet): wall time,
  trials/hour, epochs trained, best ARI of each, and where each trial's time went (epochs, reports, clustering,
  the rest, between trials). About 20 minutes on an idle 2-core machine with the defaults.
- `overhead`: the same search with reused Ray workers (the default) and with `--fresh-workers` (a new worker process
  per trial, as before): per-trial overhead = (first trial start to last trial end x concurrent trials - sum of
  training and clustering time) / trials, i.e. everything a trial costs besides training and clustering (worker
  start, imports, data and graph fetch, reports, Tune's bookkeeping).
- `memory`: a long search of a tiny dataset; the driver's resident memory is sampled every second with the number
  of trials ended: the curve (trials vs MiB at every 10%), the growth per 100 trials (least squares, after the first
  10% and before the outputs are written) and a verdict, flat when it is under `FLAT_MIB_PER_100`. The search runs
  as segments of `search.segments.SEGMENT_TRIALS` trials (one Ray Tune experiment each), so a 300-trial search has
  three, and the curve shows what each segment leaves behind. "Driver" is the `spamo tune` process; each segment's
  controller runs in a child process of it (search.segment_run), whose peak resident memory is reported apart, with
  the switch between two segments (from the last trial end of one to the first trial start of the next, read from
  trials.parquet: the ended segment's process ends, the next one starts, imports, joins Ray, builds its searcher,
  and its first worker starts).

Each section is appended to --out (default benchmarks/results/tune.md) with the machine and `uptime` (the load
average: the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
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


def tune(data: list[str], work: Path, name: str, args, *extra: str, sampler=None,
         output: list[str] | None = None) -> tuple[float, pd.DataFrame]:
    """One `spamo tune` process on `data` (its data options, see `simulated`); (wall seconds, trials table).
    `sampler(pid)` runs in a thread while it lives; `output` (a list) receives its output's lines."""
    command = [*CLI, "tune", *data, "--num-samples", str(args.trials), "--epochs", str(args.epochs), "--report-every",
               str(args.report_every), "--cpus-per-trial", "1", "--gpus-per-trial", "0", "--name", name,
               "--storage", str(work / "runs"), *extra]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watcher = threading.Thread(target=sampler, args=(process.pid,), daemon=True) if sampler else None
    if watcher:
        watcher.start()
    text, _ = process.communicate()
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{text[-3000:]}")
    if output is not None:
        output.extend(text.splitlines())
    return wall, pd.read_parquet(work / "runs" / name / "trials.parquet")


def simulated(work: Path, n_spots: int, preset: str | None = None) -> list[str]:
    """The data options of the searches: the default simulation at `n_spots` (easy: most configurations find its 5
    domains), or a graded preset of configs/benchmarks/selection.toml (its own size, seed and difficulty; generated
    under the work folder), where configurations differ and a scheduler that stops the wrong trials shows."""
    if preset is not None:
        from spamo.simulate import get_preset

        get_preset(preset).write(work / "Data" / preset)
        return ["--dataset", preset, "--data-root", str(work / "Data")]
    from spamo.simulate import write_simulation

    data = work / "sim"
    write_simulation(data, n_spots=n_spots, seed=0)
    return ["--data-dir", str(data), "--data-type", "Simulation", "--n-clusters", "5"]


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


def slot_gaps(start: pd.Series, end: pd.Series, slots: int) -> tuple[float, float]:
    """(sum of the waits between a trial slot freeing and its next trial starting, time the first trials took to
    start): trials replayed in start order onto `slots` slots, each taking the slot freed last before it."""
    order = start.sort_values().index
    first = list(order[:slots])
    free = sorted(float(end[i]) for i in first)
    startup = float(sum(start[i] - start.min() for i in first))
    waits = 0.0
    for i in order[slots:]:
        ready = [t for t in free if t <= start[i]]
        slot = max(ready) if ready else min(free)
        waits += max(0.0, float(start[i]) - slot)
        free.remove(slot)
        free.append(float(end[i]))
    return waits, startup


def trial_times(frame: pd.DataFrame, slots: int) -> dict:
    """Where the trials' time went, per trial: training epochs, intermediate reports, final clustering, the rest of
    each trial (graphs, data, final scores, found.npz), the wait between one trial ending and the next starting in
    its slot (Ray stopping, resetting and starting trials), from each trial's last report (a trial ASHA stopped ends
    at its last intermediate report). Overhead = reports + rest + wait: everything a trial costs its slot besides
    training and clustering. Slots idle at the start (the first workers starting) and at the end (no trial left to
    run) are reported apart: they depend on how many trials there are, not on what one costs."""
    n = len(frame)
    column = lambda name: frame[name].astype(float).fillna(0.0) if name in frame else pd.Series(0.0, frame.index)
    wall, train, report, clustering = column("wall_s"), column("train_s"), column("report_s"), column("cluster_s")
    start = frame["started_at"].astype(float)
    end = start + wall
    span = float(end.max() - start.min())
    waits, startup = slot_gaps(start, end, slots)
    finished = frame["status"] == "finished"
    rest = (wall - train - clustering).where(finished, wall - train)  # a stopped trial: wall since start - train
    return {"span_s": span, "epochs_s": (train - report).sum() / n, "report_s": report.sum() / n,
            "cluster_s": clustering.sum() / n, "in_trial_s": rest.sum() / n, "between_s": waits / n,
            "overhead_s": (report.sum() + rest.sum() + waits) / n, "startup_s": startup,
            "idle_end_s": span * slots - float(wall.sum()) - waits - startup}


def throughput(args, work: Path) -> list[str]:
    data = simulated(work, args.n_spots, args.preset)
    slots = min(2, os.cpu_count() or 1)
    runs = []
    for label, name, scheduler in (("ASHA (default)", "asha", "asha"), ("none", "none", "none")):
        before = uptime()
        wall, frame = tune(data, work, name, args, "--scheduler", scheduler)
        runs.append((label, wall, frame, trial_times(frame, slots), before, uptime()))
    from search.space import SPACE_DIR, load_space

    asha, fifo = runs[0][2], runs[1][2]
    searched = [c for c in load_space(SPACE_DIR / "default.toml").distributions if c in fifo and c in asha]
    same = fifo[searched].reset_index(drop=True).equals(asha[searched].reset_index(drop=True))
    what = f"preset {args.preset}" if args.preset else f"{args.n_spots} spots"
    lines = header(f"spamo tune throughput ({what}, {args.epochs} epochs, {args.trials} trials, "
                   f"1 CPU per trial, {slots} at once, reports every {args.report_every} epochs)", args)
    lines += ["| scheduler | wall (s) | trials / hour | trials / hour in the search span | epochs trained | stopped "
              "early | with cross attention | best ARI (finished) | `uptime` before -> after |",
              "|---|---|---|---|---|---|---|---|---|"]
    for label, wall, frame, times, before, after in runs:
        best = frame.loc[frame["status"] == "finished", "ari"].max()
        attention = int(frame["use_cross_attn"].astype(bool).sum()) if "use_cross_attn" in frame else 0
        lines.append(f"| {label} | {wall:.0f} | {3600 * len(frame) / wall:.1f} | "
                     f"{3600 * len(frame) / times['span_s']:.1f} | {int(frame['epoch'].sum())} | "
                     f"{int((frame['status'] == 'stopped_early').sum())} | {attention} | {best:.3f} | "
                     f"`{before.split('load average:')[-1].strip()}` -> `{after.split('load average:')[-1].strip()}` |")
    lines += ["", "Per trial (seconds, mean over the trials):", "",
              "| scheduler | training epochs | intermediate reports | final clustering | rest of the trial | "
              "wait between trials | **overhead per trial** (reports + rest + wait) | slots idle: start, end (s, "
              "whole search) |", "|---|---|---|---|---|---|---|---|"]
    for label, wall, frame, times, before, after in runs:
        lines.append(f"| {label} | {times['epochs_s']:.1f} | {times['report_s']:.1f} | {times['cluster_s']:.1f} | "
                     f"{times['in_trial_s']:.1f} | {times['between_s']:.2f} | {times['overhead_s']:.1f} | "
                     f"{times['startup_s']:.0f}, {times['idle_end_s']:.0f} |")
    lines += ["", f"Same configurations in both searches: {'yes' if same else 'NO'} (the searched columns of both "
                  "trials.parquet files; the seeded sampler's first trials - the published point, then 10 random "
                  "ones - do not depend on results, so up to 12 trials match). Trials / hour: trials over the whole "
                  "command's wall time (data, Ray start, outputs included), and over the search span (first trial's "
                  "start to the last one's end). Overhead per trial: what a trial costs its slot besides training epochs and "
                  "the final clustering; slots idle at the start and the end of the search are apart (see "
                  "`trial_times`).", ""]
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


def ray_head_pids(driver: int) -> list[int]:
    """The GCS server and raylet a local driver started (its children of those names)."""
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if int(fields.get("PPid", "0").strip() or 0) == driver and fields.get("Name", "").strip() in (
                "gcs_server", "raylet"):
            out.append(int(status.parent.name))
    return out


def segment_processes(driver: int) -> list[int]:
    """The driver's children that run a segment (search.segment_process's command line)."""
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            command = (status.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields.get("PPid", "0").strip() or 0) == driver and b"search.segment_process" in command:
            out.append(int(status.parent.name))
    return out


def segment_switches(frame: pd.DataFrame, size: int) -> list[float]:
    """Seconds from the last trial end of each segment (`size` trials, numbered from 1) to the first trial start of
    the next."""
    segment = (frame["number"] - 1) // size
    ends, starts = frame.groupby(segment)["finished_at"].max(), frame.groupby(segment)["started_at"].min()
    return [float(starts[k + 1] - ends[k]) for k in ends.index if k + 1 in starts.index]


def fit_slope(points: list[tuple[int, float]]) -> tuple[float, float, float]:
    """Least-squares fit of RSS (MiB) against trials ended: (slope in MiB per 100 trials, its standard error, the
    residuals' standard deviation in MiB: how much RSS jitters around the line). The samples are a second apart and
    not independent, so the standard error is a lower bound of the slope's noise."""
    import numpy as np

    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    if len(points) < 4 or np.ptp(x) == 0:
        return float("nan"), float("nan"), float("nan")
    (slope, intercept), cov = np.polyfit(x, y, 1, cov=True)
    residual = y - (slope * x + intercept)
    return float(slope * 100), float(np.sqrt(cov[0, 0]) * 100), float(residual.std())


# The driver's memory is called flat when it grows by less than this per 100 trials over the search (after the
# first 10%, before the outputs): under 100 MiB over a 10,000-trial search.
FLAT_MIB_PER_100 = 1.0
SEGMENT_LINE = re.compile(r"segment \d+ done \(process \d+: ([\d.]+) s to start, ([\d.]+) s to end\)")


def memory(args, work: Path) -> list[str]:
    data = simulated(work, args.n_spots)
    samples: list[tuple[int, float, float]] = []  # (trials ended, driver RSS MiB, GCS + raylet RSS MiB)
    children: dict[int, float] = {}  # segment process id -> its peak RSS (MiB) over the samples
    ledger = work / "runs" / "mem" / "ledger"

    def sample(pid: int) -> None:
        head: list[int] = []
        while True:
            value = rss_mib(pid)
            if value is None:
                return
            head = head or ray_head_pids(pid)
            ended = len(list(ledger.glob("*.json"))) if ledger.is_dir() else 0
            samples.append((ended, value, sum(rss_mib(p) or 0.0 for p in head)))
            for child in segment_processes(pid):
                children[child] = max(children.get(child, 0.0), rss_mib(child) or 0.0)
            time.sleep(1.0)

    said: list[str] = []
    wall, frame = tune(data, work, "mem", args, "--scheduler", args.scheduler, sampler=sample, output=said)
    n = args.trials
    during = [s for s in samples if n / 10 <= s[0] < n]  # after the warm-up, before the outputs are written
    slope, slope_error, jitter = fit_slope([(s[0], s[1]) for s in during])
    head_slope = fit_slope([(s[0], s[2]) for s in during if s[2] > 0])[0]
    verdict = ("flat" if slope < FLAT_MIB_PER_100 else "GROWS") + f" (limit {FLAT_MIB_PER_100:g} MiB per 100 trials)"
    lines = header(f"Driver memory over a {n}-trial search ({args.n_spots} spots, {args.epochs} epochs, scheduler "
                   f"{args.scheduler})", args)
    lines += [f"Wall {wall:.0f} s, {3600 * len(frame) / wall:.0f} trials / hour. Resident memory sampled every second "
              f"with the number of trials ended (median of the samples around each point):", "",
              "| trials ended | driver RSS (MiB) | Ray GCS + raylet RSS (MiB) |", "|---|---|---|"]
    half = max(1, n // 20)
    for i in range(1, 11):
        mark = i * n // 10
        near = [s for s in samples if abs(s[0] - mark) <= half and (s[0] < n or i == 10)]
        if near:
            driver = sorted(s[1] for s in near)[len(near) // 2]
            head = sorted(s[2] for s in near)[len(near) // 2]
            lines.append(f"| {mark} | {driver:.0f} | {head:.0f} |")
    peak = max(s[1] for s in samples) if samples else float("nan")
    lines += ["", f"Driver growth during the search: **{slope:.1f} MiB per 100 trials** (least squares over "
                  f"{len(during)} samples from {n // 10} to {n - 1} trials ended; standard error {slope_error:.1f}, "
                  f"RSS within {jitter:.1f} MiB (one standard deviation) of the line): **{verdict}**; at that rate "
                  f"10,000 trials add {slope * 100:.0f} MiB. Ray's GCS and raylet: {head_slope:.1f} MiB per 100 "
                  f"trials. Driver peak, outputs (trials.parquet, pictures) included: {peak:.0f} MiB.", ""]
    from search.segments import SEGMENT_TRIALS

    switches = segment_switches(frame, SEGMENT_TRIALS)
    # the driver's own account of each segment's process: "segment k done (process P: X s to start, Y s to end)"
    starts = [m.group(1, 2) for m in (SEGMENT_LINE.search(line) for line in said) if m]
    lines += [f"Segments ({SEGMENT_TRIALS} trials each): {len(children)} segment processes, peak RSS "
              f"{', '.join(f'{children[p]:.0f}' for p in sorted(children)) or '-'} MiB; each took "
              f"{', '.join(f'{a} s to start and {b} s to end' for a, b in starts) or '-'}; between segments, last "
              f"trial end to next first trial start: {', '.join(f'{s:.1f}' for s in switches) or '-'} s.", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("throughput", "overhead", "memory"))
    parser.add_argument("--n-spots", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--report-every", type=int, default=10)
    parser.add_argument("--preset", default=None, help="throughput: a graded simulation of "
                        "configs/benchmarks/selection.toml instead of the default one (--n-spots is then ignored)")
    parser.add_argument("--scheduler", choices=("none", "asha"), default="none", help="memory: the search's scheduler")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tune.md")
    args = parser.parse_args()
    defaults = {"throughput": (3500, 200, 12), "overhead": (1296, 20, 8), "memory": (300, 2, 300)}[args.what]
    args.n_spots = args.n_spots or defaults[0]
    args.epochs = args.epochs or defaults[1]
    args.trials = args.trials or defaults[2]
    if args.what == "memory":
        args.report_every = min(args.report_every, args.epochs)
    if args.preset is not None:  # an unknown preset is one line (exit 2), before anything is made
        from spamo.errors import SpamoInputError
        from spamo.simulate import get_preset

        try:
            get_preset(args.preset)
        except SpamoInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
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
