"""The run picture: spamo's own layout of the embedding's neighbour graph (the default) and umap-learn's (exact
neighbours handed in, numba's disk cache switched on), a PNG written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spamo import plots
from spamo.errors import SpamoInputError

ROOT = Path(__file__).resolve().parents[1]


def test_nearest_neighbours_are_exact_and_start_with_the_point_itself():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(300, 8)).astype(np.float32)
    indices, distances = plots.nearest_neighbours(points, 15)
    full = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=2)
    want = np.argsort(full, axis=1, kind="stable")[:, :15]
    assert (indices[:, 0] == np.arange(300)).all() and np.allclose(distances[:, 0], 0, atol=1e-3)
    assert np.allclose(np.sort(full, axis=1)[:, :15], distances, atol=1e-4)
    assert (np.sort(indices, axis=1) == np.sort(want, axis=1)).mean() > 0.999  # ties at float precision aside


@pytest.mark.slow
def test_umap_functions_get_numba_disk_caching_and_the_picture_is_written(tmp_path):
    import umap.layouts

    plots._cache_umap_compilation()
    assert type(umap.layouts._nb_optimize_layout_euclidean_single_epoch._cache).__name__ != "NullCache"
    # its parallel twin (same Python function, other options) is left alone: the cache index ignores options
    assert type(umap.layouts._nb_optimize_layout_euclidean_single_epoch_parallel._cache).__name__ == "NullCache"
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 60)
    embedding = (np.eye(3, 16)[labels] * 4 + rng.normal(size=(180, 16))).astype(np.float32)
    xy = plots.umap_coordinates(embedding, seed=0)
    assert xy.shape == (180, 2) and np.isfinite(xy).all()
    # the three planted groups stay apart in the layout: each point's nearest layout neighbour shares its label
    nearest = np.linalg.norm(xy[:, None] - xy[None], axis=2) + np.eye(180) * 1e9
    assert (labels[nearest.argmin(1)] == labels).mean() > 0.95
    path = plots.plot_domains(rng.uniform(size=(180, 2)), embedding, labels, tmp_path / "domains.png", layout="umap")
    assert path.stat().st_size > 1000


def planted_groups(seed: int = 1, per_group: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1, 2], per_group)
    return (np.eye(3, 16)[labels] * 4 + rng.normal(size=(labels.size, 16))).astype(np.float32), labels


def test_the_curve_constants_are_umaps_fit_for_min_dist_0_3():
    from scipy.optimize import curve_fit

    x = np.linspace(0, 3, 300)
    target = np.where(x < 0.3, 1.0, np.exp(-(x - 0.3)))
    (a, b), _ = curve_fit(lambda d, a, b: 1.0 / (1.0 + a * d ** (2 * b)), x, target)
    assert np.isclose(a, plots.CURVE_A, rtol=1e-4) and np.isclose(b, plots.CURVE_B, rtol=1e-4)


def test_fuzzy_graph_weights_each_spot_to_log2_k_and_joins_directions_as_either_holds():
    embedding, _ = planted_groups()
    indices, distances = plots.nearest_neighbours(embedding, 15)
    rows, cols, strength = plots.fuzzy_graph(indices, distances)
    assert (rows < cols).all() and ((strength > 0) & (strength <= 1 + 1e-6)).all()
    # every spot's nearest neighbour is joined at full strength (distance - rho = 0)
    full = {(min(i, j), max(i, j)) for i, j in enumerate(indices[:, 1])}
    edges = dict(zip(zip(rows.tolist(), cols.tolist()), strength.tolist()))
    assert all(np.isclose(edges[e], 1.0) for e in full)


def test_graph_layout_keeps_planted_groups_apart_and_repeats_for_a_seed():
    embedding, labels = planted_groups()
    xy = plots.graph_layout(embedding, seed=0)
    assert xy.shape == (180, 2) and np.isfinite(xy).all()
    nearest = np.linalg.norm(xy[:, None] - xy[None], axis=2) + np.eye(180) * 1e9
    assert (labels[nearest.argmin(1)] == labels).mean() > 0.95
    assert np.array_equal(xy, plots.graph_layout(embedding, seed=0))
    assert not np.array_equal(xy, plots.graph_layout(embedding, seed=1))
    assert plots.graph_layout(embedding[:2], seed=0).shape == (2, 2)


def test_the_default_picture_loads_no_umap_and_an_unknown_layout_is_refused(tmp_path):
    script = ("import sys, numpy as np; from spamo import plots; rng = np.random.default_rng(0); "
              "labels = np.repeat([0, 1], 40); plots.plot_domains(rng.uniform(size=(80, 2)), "
              "rng.normal(size=(80, 8)) + labels[:, None], labels, sys.argv[1]); "
              "print('umap' in sys.modules, 'numba' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "domains.png")], capture_output=True,
                          text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
    assert (tmp_path / "domains.png").stat().st_size > 1000
    embedding, labels = planted_groups()
    with pytest.raises(SpamoInputError, match="not one of graph, umap"):
        plots.plot_domains(np.zeros((180, 2)), embedding, labels, tmp_path / "other.png", layout="tsne")


def test_an_unknown_layout_is_refused_in_one_line_before_anything_is_drawn(tmp_path):
    embedding, labels = planted_groups()
    target = tmp_path / "domains.png"
    with pytest.raises(SpamoInputError) as refused:
        plots.plot_domains(np.zeros((labels.size, 2)), embedding, labels, target, layout="tsne")
    message = str(refused.value)
    assert "\n" not in message and "'tsne'" in message and all(name in message for name in plots.LAYOUTS)
    assert not target.exists()


def test_a_placement_computed_beforehand_draws_the_same_picture_and_one_for_another_seed_is_not_used(tmp_path):
    """`spamo.pipeline` computes the layout while R clusters (`place_embedding`); the PNG must be the one drawn
    without it, byte for byte. A placement of another seed or layout is not this picture's: it is computed again."""
    embedding, labels = planted_groups()
    coords = np.random.default_rng(2).uniform(size=(labels.size, 2))
    placement = plots.place_embedding(embedding, "graph", seed=5)
    assert placement.xy.shape == (labels.size, 2) and (placement.index == np.arange(labels.size)).all()
    assert np.array_equal(placement.xy, plots.graph_layout(embedding, seed=5))
    drawn = {}
    for name, seed, given in [("alone", 5, None), ("given", 5, placement), ("other seed", 6, placement),
                              ("other seed alone", 6, None)]:
        path = plots.plot_domains(coords, embedding, labels, tmp_path / f"{name}.png", seed=seed, placement=given)
        drawn[name] = path.read_bytes()
    assert drawn["given"] == drawn["alone"]
    assert drawn["other seed"] == drawn["other seed alone"] != drawn["alone"]
    with pytest.raises(SpamoInputError, match="'tsne'"):
        plots.place_embedding(embedding, "tsne")
