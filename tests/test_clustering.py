"""Clustering backends, R's mclust against its scikit-learn twin, smoothing and split-and-merge, on generated blobs."""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from spamo import clustering
from spamo.clustering import (available_methods, cluster, r_available, relabel_by_appearance, spatial_majority_vote,
                              split_merge)
from spamo.errors import MissingDependencyError, SpamoInputError


def blobs(k: int = 6, per_blob: int = 120, dim: int = 64, spread: float = 5.0, seed: int = 0):
    """Gaussian blobs in `dim` dimensions, each occupying one contiguous vertical stripe of a spot grid."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(k, dim))
    truth = np.repeat(np.arange(k), per_blob)
    embedding = centres[truth] + rng.normal(size=(truth.size, dim))
    width = int(np.ceil(np.sqrt(per_blob)))
    spot = np.arange(per_blob)
    coords = np.concatenate([np.column_stack([c * width + spot % width, spot // width]) for c in range(k)])
    return embedding, truth, coords.astype(float)


needs_r = pytest.mark.skipif(not r_available(), reason="R, rpy2 or the mclust package is not installed")


@pytest.mark.r
@needs_r
def test_mclust_agrees_with_gmm_on_blobs():
    # blobs that overlap (truth ARI about 0.95), so both must make the same calls on the spots in between
    embedding, truth, _ = blobs(k=5, per_blob=100, dim=10, spread=1.5, seed=1)
    from_r = cluster(embedding, 5, "mclust")
    from_python = cluster(embedding, 5, "gmm")
    assert np.unique(from_r).size == 5 and from_r.min() == 0
    assert adjusted_rand_score(from_r, from_python) >= 0.95
    assert 0.9 <= adjusted_rand_score(truth, from_r) < 1.0
    assert np.array_equal(from_r, cluster(embedding, 5, "mclust"))  # R seed set every call


def test_auto_falls_back_to_gmm_when_r_is_switched_off(monkeypatch):
    embedding, truth, _ = blobs(k=4, per_blob=60)
    monkeypatch.setenv("SPAMO_DISABLE_R", "1")
    assert not r_available()
    assert np.array_equal(cluster(embedding, 4, "auto"), cluster(embedding, 4, "gmm"))
    with pytest.raises(MissingDependencyError, match="SPAMO_DISABLE_R"):
        cluster(embedding, 4, "mclust")


@pytest.mark.r
@needs_r
def test_mclust_runs_in_a_thread_other_than_the_importing_one():
    # rpy2 keeps its conversion rules in a context variable that a new thread does not inherit; a reused Ray worker
    # thread must still be able to call mclust, and get the labels of the main thread
    embedding, _, _ = blobs(k=4, per_blob=50, dim=10, seed=3)
    expected = cluster(embedding, 4, "mclust")
    found: dict[int, object] = {}

    def work(slot: int) -> None:
        try:
            found[slot] = cluster(embedding, 4, "mclust")
        except Exception as exc:  # recorded, so the assertion below shows it
            found[slot] = exc

    for slot in range(2):  # two threads, one after the other: the second starts with a fresh context too
        thread = threading.Thread(target=work, args=(slot,))
        thread.start()
        thread.join()
    for labels in found.values():
        assert isinstance(labels, np.ndarray), labels
        assert np.array_equal(labels, expected)


R_IN_A_FRESH_PROCESS = """
import os, sys, threading, numpy as np
from spamo.clustering import cluster, mclust
rng = np.random.default_rng(3)
points = rng.normal(scale=1.5, size=(4, 8))[np.repeat(np.arange(4), 50)] + rng.normal(size=(200, 8))
if sys.argv[1] == "background":
    mclust.start_r_in_background()
    helper = next(t for t in threading.enumerate() if t.name == "spamo-start-R")
    helper.join()
before = dict(os.environ)
labels = cluster(points, 4, "mclust")
print(" ".join(map(str, labels)), os.environ.get("LD_LIBRARY_PATH") == before.get("LD_LIBRARY_PATH"))
"""


@pytest.mark.r
@needs_r
def test_r_started_in_a_helper_thread_gives_the_same_labels_silently():
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    runs = {how: subprocess.run([sys.executable, "-c", R_IN_A_FRESH_PROCESS, how], capture_output=True, text=True,
                                cwd=root, env=env) for how in ("background", "here")}
    for how, done in runs.items():
        assert done.returncode == 0, (how, done.stderr)
        assert done.stdout.split()[-1] == "True"  # R's library folders are not left in the environment
    assert runs["background"].stdout == runs["here"].stdout
    assert "main thread" not in runs["background"].stderr  # rpy2's notice about the helper thread is not shown


def test_mclust_without_rpy2_says_how_to_install(monkeypatch):
    monkeypatch.delenv("SPAMO_DISABLE_R", raising=False)
    monkeypatch.setitem(sys.modules, "rpy2.robjects", None)  # `import rpy2.robjects` now fails as if absent
    clustering._r_problem.cache_clear()
    try:
        assert not r_available()
        with pytest.raises(MissingDependencyError, match=r"apt-get install r-base-core r-cran-mclust.*spamo\[r\]"):
            cluster(blobs(k=3, per_blob=30)[0], 3, "mclust")
    finally:
        clustering._r_problem.cache_clear()


@pytest.mark.parametrize("method", ["gmm", "kmeans", "leiden", "louvain", "split-merge"])
def test_backends_find_blobs_and_repeat_exactly(method):
    embedding, truth, coords = blobs(k=5, per_blob=80)
    labels = cluster(embedding, 5, method, coords=coords)
    assert sorted(np.unique(labels)) == list(range(5))
    assert adjusted_rand_score(truth, labels) > 0.99
    assert np.array_equal(labels, cluster(embedding, 5, method, coords=coords))


@pytest.mark.parametrize("method", ["leiden", "louvain"])
@pytest.mark.parametrize("k", [3, 8, 13])
def test_community_backends_hit_exactly_k(method, k):
    embedding, _, _ = blobs(k=8, per_blob=60, spread=0.6, seed=1)  # blurred, so K is set by the resolution
    assert np.unique(cluster(embedding, k, method)).size == k


def test_smoothing_changes_a_lone_outlier_and_keeps_a_boundary():
    grid = np.array([(x, y) for x in range(12) for y in range(12)], dtype=float)
    labels = (grid[:, 0] >= 6).astype(int)
    outlier = 5 * 12 + 3  # x = 3, y = 5: deep inside the left half
    labels[outlier] = 1
    smoothed = spatial_majority_vote(labels, grid)
    assert smoothed[outlier] == 0
    assert np.array_equal(np.delete(smoothed, outlier), np.delete(labels, outlier))  # boundary columns kept


def test_split_merge_recovers_the_number_of_blobs_from_below_and_above():
    embedding, truth, coords = blobs(k=7, per_blob=90, spread=4.0, seed=2)
    for init_k in (4, 12):
        result = split_merge(embedding, None, init_k, coords)
        assert result.estimated_k == 7, (init_k, [(s.k, s.action) for s in result.steps])
        assert adjusted_rand_score(truth, result.labels_at(7)) > 0.99
        assert result.steps[0].action == "init" and result.steps[0].k == init_k
        assert all(b.criterion > a.criterion for a, b in zip(result.steps, result.steps[1:]))
    assert len(result.merge_order) == 12 - 7


def test_split_merge_forced_path_reaches_the_requested_k_by_touching_merges():
    embedding, truth, coords = blobs(k=6, per_blob=60, spread=4.0, seed=4)
    result = split_merge(embedding, 3, 6, coords)
    assert result.estimated_k == 6 and result.ks == [3, 4, 5, 6]
    assert [s.action for s in result.steps[-3:]] == ["forced merge"] * 3
    three = result.labels_at(3)
    assert np.unique(three).size == 3
    # blobs lie in stripes 0..5 left to right: a forced merge only joins stripes that touch, so every merged
    # cluster is a run of neighbouring stripes
    for label in np.unique(three):
        stripes = np.unique(truth[three == label])
        assert np.array_equal(stripes, np.arange(stripes.min(), stripes.max() + 1))
    with pytest.raises(SpamoInputError, match="never visited K=2"):
        result.labels_at(2)


def test_refusals_and_label_numbering():
    embedding, _, coords = blobs(k=3, per_blob=20)
    with pytest.raises(SpamoInputError, match="cluster_method"):
        cluster(embedding, 3, "hdbscan")
    with pytest.raises(SpamoInputError, match="n_clusters"):
        cluster(embedding, 1, "gmm")
    with pytest.raises(SpamoInputError, match="coordinates"):
        cluster(embedding, 3, "gmm", smooth=True)
    assert set(available_methods()) >= {"auto", "mclust", "gmm", "kmeans", "leiden", "louvain", "split-merge"}
    assert list(relabel_by_appearance([7, 7, 2, 9, 2])) == [0, 0, 1, 2, 1]


@pytest.mark.r
@needs_r
def test_mclust_without_a_fit_is_one_clear_refusal_and_auto_moves_on():
    from spamo.clustering import ClusteringFailed

    points = np.random.default_rng(0).normal(size=(30, 3))
    with pytest.raises(ClusteringFailed, match="no EEE fit with G=29"):
        cluster(points, 29, "mclust")
    with pytest.warns(RuntimeWarning, match="using gmm instead"):
        labels = cluster(points, 29, "auto")
    assert np.array_equal(labels, cluster(points, 29, "gmm"))


TOY = "toy-first-axis"


@pytest.fixture
def toy_backend():
    """A backend registered through the public function for one test, and taken back after it (the README's settings
    table, generated in the same process by other tests, lists the built-in backends only)."""
    from spamo.choices import CLUSTER_METHODS
    from spamo.clustering.base import BACKENDS

    @clustering.register_backend(TOY)
    def first_axis(points, n_clusters, request):
        """Quantiles of the first principal component: K bands of equal size."""
        edges = np.quantile(points[:, 0], np.linspace(0, 1, n_clusters + 1)[1:-1])
        return np.searchsorted(edges, points[:, 0])

    yield first_axis
    BACKENDS.pop(TOY, None)
    CLUSTER_METHODS.discard(TOY)


def test_a_registered_backend_is_a_cluster_method_the_config_accepts(toy_backend):
    from spamo.config import SpamoConfig, accepts, settings

    config = SpamoConfig(cluster_method=TOY)
    assert config.cluster_method == TOY and TOY in available_methods()
    assert TOY in accepts(next(f for f in settings() if f.name == "cluster_method"))
    embedding, truth, _ = blobs(k=2, per_blob=50, dim=8, spread=8.0, seed=3)
    labels = cluster(embedding, 2, config.cluster_method, n_pcs=config.n_pcs, seed=config.seed)
    assert sorted(np.bincount(labels)) == [50, 50] and adjusted_rand_score(truth, labels) == 1.0
    with pytest.raises(SpamoInputError) as refused:
        SpamoConfig(cluster_method="toy-never-registered")
    line = str(refused.value)
    assert "\n" not in line and line.startswith("cluster_method: must be one of ") and TOY in line
    assert "'toy-never-registered'" in line


def test_a_backend_taken_back_is_refused_again():
    from spamo.config import SpamoConfig

    assert TOY not in available_methods()
    with pytest.raises(SpamoInputError, match=f"cluster_method: must be one of .*got '{TOY}'"):
        SpamoConfig(cluster_method=TOY)
