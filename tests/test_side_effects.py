"""Drawing spamo's pictures changes nothing process-wide: the caller's matplotlib backend stays, and the evaluation's
pictures (matplotlib's object API) do not even import pyplot. Run in a fresh interpreter, so no other test's imports
hide a `matplotlib.use`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("svg")  # the caller's own choice, which drawing must leave alone
out = Path(sys.argv[1])

from evaluation.report import plot_best_domains, plot_seed_spread
from evaluation.selection import CHOICES, draw_selection

rng = np.random.default_rng(0)
coords = rng.uniform(size=(60, 2))
prepared = SimpleNamespace(truth=rng.integers(0, 3, 60), coords=coords, n_spots=60)
plot_best_domains(prepared, rng.integers(0, 3, 60), rng.integers(0, 3, 60), "sim", out / "domains.png")
seed_runs = pd.DataFrame({"dataset": "sim", "config_from": "sim", "config_rank": [1, 1, 2, 2],
                          "ari": [0.5, 0.6, 0.4, 0.45], "sm_ari": [0.55, 0.6, 0.5, 0.4]})
best = pd.DataFrame({"dataset": ["sim", "sim"], "rank": [1, 2], "metric": ["ari", "ari"]})
plot_seed_spread(seed_runs, best, out / "seed_spread.png")
draw_selection(pd.DataFrame({"dataset": "sim", "choice": list(CHOICES), "ari_mean": [0.5, 0.7, 0.6],
                             "ari_sd": [0.01, 0.02, 0.03]}), out)
assert "matplotlib.pyplot" not in sys.modules, "an evaluation picture imported pyplot"

from spamo.analysis.figures import plot_top_markers_spatial

labels = pd.Categorical(np.repeat(["0", "1", "2"], 20))
plot_top_markers_spatial(coords, labels, {"RNA": {"0": ("Gene0001", rng.uniform(size=60))}},
                         out / "top_markers_spatial.png")
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
print("ok")
"""


def test_drawing_leaves_the_backend_alone_and_the_evaluation_pictures_need_no_pyplot(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MPLBACKEND", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
    for name in ("domains.png", "seed_spread.png", "selection.png", "top_markers_spatial.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
