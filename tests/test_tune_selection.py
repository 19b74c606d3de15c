"""Selection in `spamo tune`: every label-free criterion is a trials.parquet column and a valid --metric, trials
keep what they found (found.npz), and `--rescore` recomputes the criteria of a finished search without training.

Real Ray, real Optuna storage, the real command line in a subprocess, on a tiny simulation with a few epochs.
"""

from __future__ import annotations

import math
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from search.results import METRICS
from search.tuning import choose_metric, metric_reason
from spamo.selection import CRITERIA, DEFAULT_LABEL_FREE, FOUND_FILE

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_every_criterion_is_a_metric_and_the_default_says_why():
    for name in (*CRITERIA, "asw", "spatial_coherence"):
        assert name in METRICS and choose_metric(name, has_truth=False) == name
    assert choose_metric(None, has_truth=False) == DEFAULT_LABEL_FREE
    assert choose_metric(None, has_truth=True) == "ari"
    assert metric_reason(DEFAULT_LABEL_FREE, None).startswith(DEFAULT_LABEL_FREE)
    assert "ground truth" in metric_reason("ari", None)


@pytest.mark.ray
def test_trials_keep_what_they_found_and_rescore_needs_no_training(tmp_path):
    from spamo.simulate import write_simulation

    data = write_simulation(tmp_path / "sim", n_spots=300, seed=3)
    common = ["--data-dir", str(data), "--data-type", "Simulation", "--n-clusters", "5", "--storage", str(tmp_path),
              "--report-every", "2", "--epochs", "4", "--scheduler", "none"]
    # the search without kept embeddings runs beside the one with them (two local Rays, as `spamo evaluate`'s test
    # runs its two searches): most of either is starting Python, Ray and its workers, one core each
    bare_search = _start_cli("tune", *common, "--name", "bare", "--num-samples", "1", "--no-keep-embeddings")
    done = _cli("tune", *common, "--name", "kept", "--num-samples", "2", "--metric", "consistency")
    bare_out, bare_err = bare_search.communicate(timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "optimising consistency: asked for with --metric" in done.stdout.replace("\n", " ")
    run_dir = tmp_path / "kept"
    frame = pd.read_parquet(run_dir / "trials.parquet")
    finished = frame[frame["status"] == "finished"]
    assert len(finished) == 2
    for column in (*CRITERIA, "asw", "spatial_coherence"):
        assert finished[column].map(lambda v: math.isfinite(v)).all(), column
    assert finished["consistency"].between(0, 1).all()
    for _, row in finished.iterrows():
        found = list(run_dir.glob(f"trial_*_{row['trial_id']}/{FOUND_FILE}"))
        assert len(found) == 1
        with np.load(found[0]) as arrays:
            assert arrays["fused"].dtype == np.float16 and arrays["fused"].shape[0] == 300
            assert arrays["labels"].shape == (300,) and arrays["previous_kmeans"].shape == (300,)
    best = tomllib.loads((run_dir / "best_config.toml").read_text())
    assert best["tune"]["metric"] == "consistency" and "--metric" in best["tune"]["why"]

    before = finished.set_index("trial_id")
    rescored = _cli("tune", "--rescore", "kept", "--storage", str(tmp_path), "--metric", "spatial_coherence")
    assert rescored.returncode == 0, rescored.stdout[-3000:] + rescored.stderr[-3000:]
    assert "rescored 2 trial(s)" in rescored.stdout
    after = pd.read_parquet(run_dir / "trials.parquet").set_index("trial_id").loc[before.index]
    # from the float16 embedding and the kept labels: the same criteria, without any training
    assert np.allclose(after["spatial_coherence"], before["spatial_coherence"])
    assert np.allclose(after["stability"], before["stability"])
    assert np.allclose(after["consistency"], before["consistency"], atol=0.05)
    best = tomllib.loads((run_dir / "best_config.toml").read_text())
    assert best["tune"]["metric"] == "spatial_coherence"
    assert best["tune"]["value"] == pytest.approx(after["spatial_coherence"].max())

    assert bare_search.returncode == 0, bare_out[-3000:] + bare_err[-3000:]
    assert not list((tmp_path / "bare").glob(f"trial_*/{FOUND_FILE}"))
    refused = _cli("tune", "--rescore", "bare", "--storage", str(tmp_path))
    assert refused.returncode == 2 and "no-keep-embeddings" in refused.stderr
