"""`spamo tune` on one GPU shared by fractional trials: the real command line, a real local Ray, a real CUDA device.

Four trials of `--gpus-per-trial 0.25` on a local Ray that sees one GPU: every trial must finish, train on CUDA, and
at least two of them must have run at the same time (Ray packed them onto the one GPU, as the fraction asks).
Skipped where torch sees no CUDA device (CI, the project machines); run on a GPU machine with
`python -m pytest -q -rA tests/test_tune_gpu.py`. The command line is started as `python cli.py` from the checkout,
with the checkout on PYTHONPATH, so the test needs no installed `spamo` script.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from test_tune import ROOT, finite, run, tune_args

pytestmark = [pytest.mark.ray,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")]

N_TRIALS = 4
GPU_SHARE = 0.25
EPOCHS = 30


@pytest.fixture(scope="module")
def gpu_sim(simulated_folder) -> Path:
    return simulated_folder("tune_gpu_data", n_spots=1000)  # also under pandas 3, as on the GPU image (spamo.io)


def overlapping_pairs(frame: pd.DataFrame) -> list[tuple[int, int, float]]:
    """(trial, trial, seconds) for every two trials whose [started_at, finished_at] intervals overlap."""
    rows = list(frame[["number", "started_at", "finished_at"]].itertuples(index=False))
    pairs = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            shared = min(a.finished_at, b.finished_at) - max(a.started_at, b.started_at)
            if shared > 0:
                pairs.append((int(a.number), int(b.number), float(shared)))
    return pairs


def peak_concurrency(frame: pd.DataFrame) -> int:
    """Most trials running at one moment (a start at the very moment of a finish is counted after it)."""
    events = sorted([(t, 1) for t in frame["started_at"]] + [(t, -1) for t in frame["finished_at"]],
                    key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_fractional_gpu_trials_share_one_gpu(gpu_sim, tmp_path):
    env = dict(os.environ, SPAMO_DISABLE_R="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    env.pop("RAY_ADDRESS", None)  # a local Ray of its own, started by the driver, that sees this machine's GPU
    done = run(tune_args(gpu_sim, tmp_path, "gpu", "--num-samples", str(N_TRIALS), "--epochs", str(EPOCHS),
                         "--scheduler", "none", "--gpus-per-trial", str(GPU_SHARE),
                         "--max-concurrent", str(N_TRIALS), "--report-every", "5"),
               env=env, timeout=480)
    log = "".join(done.stdout.split())  # rich wraps long lines: compare without any whitespace
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{N_TRIALS}trialsof1CPU+{GPU_SHARE:g}GPU" in log, done.stdout[-3000:]
    assert "noGPUinthecluster" not in log

    frame = pd.read_parquet(tmp_path / "gpu" / "trials.parquet").sort_values("number").reset_index(drop=True)
    timeline = frame[["number", "status", "device", "epoch", "started_at", "finished_at", "train_s", "ari"]].copy()
    origin = timeline["started_at"].min()
    timeline["started_at"] -= origin
    timeline["finished_at"] -= origin
    pairs = overlapping_pairs(frame)
    print(timeline.to_string(index=False))
    print(f"overlapping pairs (trial, trial, seconds): {[(a, b, round(s, 2)) for a, b, s in pairs]}")
    print(f"peak concurrency: {peak_concurrency(frame)}; search span {frame['finished_at'].max() - origin:.1f} s")

    assert len(frame) == N_TRIALS and sorted(frame["number"]) == list(range(1, N_TRIALS + 1))
    assert (frame["status"] == "finished").all(), frame[["number", "status", "error"]]
    assert frame["device"].astype(str).str.startswith("cuda").all(), frame[["number", "device"]]
    assert (frame["epoch"] == EPOCHS).all()
    for _, row in frame.iterrows():
        assert all(finite(row[s]) for s in ("ari", "nmi", "asw", "loss")), row
        assert math.isfinite(row["started_at"]) and row["finished_at"] > row["started_at"]
    assert frame["node_id"].nunique() == 1  # one machine, one GPU
    assert pairs, f"no two trials overlapped in time:\n{timeline}"
    assert peak_concurrency(frame) >= 2
