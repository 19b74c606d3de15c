"""Drawing spamo's pictures changes nothing process-wide: no `matplotlib.use` (the caller's backend, a notebook's,
stays), and no figure is made through pyplot (pyplot's figures are global state: they would pile up in the caller's
session). Both are watched while the pictures are drawn."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from evaluation.report import plot_best_domains, plot_seed_spread
from evaluation.selection import CHOICES, draw_selection
from spamo.analysis.figures import plot_top_markers_spatial


@pytest.fixture()
def watched(monkeypatch):
    """Fail on any backend switch or pyplot figure; yields the backend in use before drawing."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"process-wide matplotlib state changed: {args}")

    backend = matplotlib.get_backend()
    monkeypatch.setattr(matplotlib, "use", refuse)
    monkeypatch.setattr(plt, "figure", refuse)
    monkeypatch.setattr(plt, "switch_backend", refuse)
    yield backend
    assert matplotlib.get_backend() == backend


def test_evaluation_and_analysis_pictures_leave_the_session_alone(watched, tmp_path):
    rng = np.random.default_rng(0)
    coords = rng.uniform(size=(60, 2))
    prepared = SimpleNamespace(truth=rng.integers(0, 3, 60), coords=coords, n_spots=60)
    plot_best_domains(prepared, rng.integers(0, 3, 60), rng.integers(0, 3, 60), "sim", tmp_path / "domains.png")
    seed_runs = pd.DataFrame({"dataset": "sim", "config_from": "sim", "config_rank": [1, 1, 2, 2],
                              "ari": [0.5, 0.6, 0.4, 0.45], "sm_ari": [0.55, 0.6, 0.5, 0.4]})
    best = pd.DataFrame({"dataset": ["sim", "sim"], "rank": [1, 2], "metric": ["ari", "ari"]})
    plot_seed_spread(seed_runs, best, tmp_path / "seed_spread.png")
    draw_selection(pd.DataFrame({"dataset": "sim", "choice": list(CHOICES), "ari_mean": [0.5, 0.7, 0.6],
                                 "ari_sd": [0.01, 0.02, 0.03]}), tmp_path)
    labels = pd.Categorical(np.repeat(["0", "1", "2"], 20))
    plot_top_markers_spatial(coords, labels, {"RNA": {"0": ("Gene0001", rng.uniform(size=60))}},
                             tmp_path / "top_markers_spatial.png")
    for name in ("domains.png", "seed_spread.png", "selection.png", "top_markers_spatial.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
