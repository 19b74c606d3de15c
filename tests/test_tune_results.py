"""The run folder's pictures leave the process as it was (search.results draws with matplotlib's object API)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter: the backend is process-wide state, and pytest's own may already have chosen one.
SCRIPT = """
import sys
from pathlib import Path
import matplotlib
matplotlib.use("svg")  # a session's own choice of backend, which drawing the tune pictures must keep
import optuna
import pandas as pd
from search.results import plot_history, plot_importances

out = Path(sys.argv[1])
frame = pd.DataFrame({"number": [1, 2, 3, 4], "status": ["finished", "stopped_early", "finished", "error"],
                      "ari": [0.4, 0.2, 0.7, None]})
plot_history(frame, "ari", out / "history.png")
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-1, log=True) + t.suggest_int("k", 5, 40) / 100, n_trials=8)
drawn = plot_importances(study, out / "importances.png")
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules, drawn)
"""


def test_tune_pictures_are_written_without_switching_the_backend_or_importing_pyplot(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    backend, pyplot, drawn = done.stdout.split()
    assert backend == "svg" and pyplot == "False" and drawn == "True"
    for name in ("history.png", "importances.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def final_report(epoch: int) -> dict:
    """A trial's result as Ray holds it: the scores, times and provenance search.trainable reports, Ray's own keys."""
    scores = {name: 0.5 + epoch / 1000 for name in ("ari", "nmi", "ami", "fmi", "asw", "spatial_coherence",
                                                    "consistency", "stability", "composite", "loss")}
    times = {name: float(epoch) for name in ("wall_s", "train_s", "report_s", "cluster_s", "graphs_s", "started_at")}
    return {**scores, **times, "epoch": epoch, "final": epoch == 30, "training_iteration": epoch // 10,
            "config_json": "{}" * 200, "node_id": "n" * 56, "config": {"lr": 0.01, "knn_k": 12}}


def test_an_ended_trial_keeps_only_what_ray_needs():
    from ray.tune.experiment import Trial

    from search.ledger import ForgetEnded

    trial = Trial("run_trial", stub=True, config={"lr": 0.01, "knn_k": 12}, experiment_tag="1_lr=0.01")
    for epoch in (10, 20, 30):
        trial.update_last_result(final_report(epoch))
    full_state = len("".join(trial.get_json_state()))
    assert {"nmi", "wall_s", "consistency"} <= set(trial.metric_analysis)

    ForgetEnded("spatial_coherence").on_trial_complete(0, [trial], trial)

    kept = {"spatial_coherence", "epoch", "final", "training_iteration"}
    assert kept <= set(trial.last_result) and not {"nmi", "ari", "config_json", "node_id"} & set(trial.last_result)
    assert set(trial.metric_analysis) == {"spatial_coherence", "training_iteration"} and trial.metric_n_steps == {}
    assert trial.metric_analysis["spatial_coherence"]["last"] == final_report(30)["spatial_coherence"]
    assert len("".join(trial.get_json_state())) < full_state / 3  # what Ray snapshots every few seconds
