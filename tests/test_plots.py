"""The run picture: exact neighbours handed to UMAP, numba's disk cache switched on, a PNG written."""

from __future__ import annotations

import numpy as np
import pytest

from spamo import plots


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
    path = plots.plot_domains(rng.uniform(size=(180, 2)), embedding, labels, tmp_path / "domains.png")
    assert path.stat().st_size > 1000
