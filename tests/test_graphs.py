"""Graphs of docs/method.md section 2: symmetric, capped, self-looped, normalised, sparse, and the right neighbours."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.neighbors import NearestNeighbors, kneighbors_graph

from spamo.config import SpamoConfig
from spamo.data import PreparedData
from spamo.graphs import (
    build_graphs,
    feature_graph,
    feature_graphs,
    knn_graph,
    knn_search,
    neighbour_table_graph,
    normalize_with_self_loops,
    sklearn_neighbours,
    spatial_graph,
    symmetrize_capped,
    to_torch_sparse,
)


def _features(n, d=30, seed=0):
    """PCA-like features: a few clusters, decaying variance per dimension."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, d)) * 3
    return centres[rng.integers(0, 8, n)] + rng.normal(size=(n, d)) * np.linspace(2, 0.2, d)


def _brute_correlation_distance(x):
    c = np.corrcoef(x)
    return 1.0 - c


def _dense(t):
    return t.to_dense().numpy().astype(np.float64)


def test_spatial_graph_is_symmetric_self_looped_normalised_and_sparse():
    rng = np.random.default_rng(1)
    coords = rng.uniform(size=(300, 2))
    k = 6
    g = spatial_graph(coords, k)
    assert g.is_sparse and g.is_coalesced() and g.dtype == torch.float32 and g.shape == (300, 300)
    assert g._nnz() <= 300 * (2 * k + 1)
    a = _dense(g)
    assert np.allclose(a, a.T)
    assert (np.diag(a) > 0).all()
    support = a > 0
    degree = support.sum(1)  # connectivity: every stored entry of A + I is 1
    expected = 1.0 / np.sqrt(np.outer(degree, degree))
    assert np.allclose(a[support], expected[support], rtol=1e-6)
    # each spot's k nearest neighbours (brute force) are linked
    d = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1)[:, :k]
    assert support[np.arange(300)[:, None], nearest].all()


def test_symmetrize_caps_mutual_edges_at_one_and_normalize_matches_formula():
    a = sp.csr_matrix(np.array([[0, 1, 0.4], [1, 0, 0], [0.7, 0, 0]], dtype=float))
    s = symmetrize_capped(a).toarray()
    assert np.allclose(s, [[0, 1, 1], [1, 0, 0], [1, 0, 0]])
    n = normalize_with_self_loops(s).toarray()
    m = s + np.eye(3)
    d = m.sum(1)
    assert np.allclose(n, m / np.sqrt(np.outer(d, d)))


def test_feature_graph_correlation_neighbours_match_brute_force():
    x = _features(250, d=12, seed=2)
    k = 10
    idx, dist = knn_search(x, k, metric="correlation", method="exact")
    ref = _brute_correlation_distance(x)
    np.fill_diagonal(ref, np.inf)
    ref_idx = np.argsort(ref, axis=1, kind="stable")[:, :k]
    assert (np.sort(idx, 1) == np.sort(ref_idx, 1)).mean() > 0.999
    assert np.allclose(dist, np.take_along_axis(ref, idx, 1), atol=1e-9)
    g = _dense(feature_graph(x, k))
    assert (g[np.arange(250)[:, None], ref_idx] > 0).all()


def test_distance_weighted_variant_stores_capped_distances_before_normalising():
    x = _features(120, d=10, seed=3)
    k = 5
    directed = knn_graph(x, k, metric="correlation", weight="distance").toarray()
    ref = _brute_correlation_distance(x)
    assert np.allclose(directed[directed > 0], ref[directed > 0])
    expected = np.minimum(directed + directed.T, 1.0) + np.eye(120)
    d = expected.sum(1)
    expected = expected / np.sqrt(np.outer(d, d))
    got = _dense(feature_graph(x, k, weight="distance"))
    assert np.allclose(got, expected, atol=1e-6)
    assert not np.allclose(got, _dense(feature_graph(x, k)))


def test_ties_are_broken_by_index_and_results_repeat():
    # square grid: 4 neighbours at the same distance; k=3 keeps the three with the smallest index
    xs, ys = np.meshgrid(np.arange(10.0), np.arange(10.0))
    coords = np.column_stack([xs.ravel(), ys.ravel()])
    idx, dist = knn_search(coords, 3)
    centre = 55
    assert list(idx[centre]) == [45, 54, 56]
    assert np.allclose(dist[centre], 1.0)
    again, _ = knn_search(coords, 3)
    assert np.array_equal(idx, again)


def test_approximate_search_recall_and_determinism():
    x = _features(4000, seed=4)
    k = 20
    exact, _ = knn_search(x, k, metric="correlation", method="exact")
    approx, _ = knn_search(x, k, metric="correlation", method="approximate", seed=7)
    recall = (approx[:, :, None] == exact[:, None, :]).any(2).mean()
    assert recall >= 0.95
    small = x[:1500]
    once, _ = knn_search(small, k, metric="correlation", method="approximate", seed=7)
    again, _ = knn_search(small, k, metric="correlation", method="approximate", seed=7)
    assert np.array_equal(once, again)


def test_to_torch_sparse_round_trip():
    m = sp.random(50, 50, density=0.1, random_state=0, format="csr")
    t = to_torch_sparse(m)
    assert t.is_coalesced() and t.dtype == torch.float32
    assert np.allclose(t.to_dense().numpy(), m.toarray(), atol=1e-7)


def test_build_graphs_shares_spatial_graph_and_uses_config():
    rng = np.random.default_rng(5)
    n = 200
    prepared = PreparedData(
        name="t",
        data_type="Simulation",
        modality_names=["RNA", "ADT", "ATAC"],
        features=[rng.normal(size=(n, 8)).astype(np.float32) for _ in range(3)],
        coords=rng.uniform(size=(n, 2)),
        spot_names=np.array([f"s{i}" for i in range(n)]),
        kept_index=np.arange(n),
        n_spots_original=n,
    )
    config = SpamoConfig(data_type="Simulation", knn_k=7).resolve(3, n)
    graphs = build_graphs(prepared, config)
    assert len(graphs.spatial) == len(graphs.feature) == 3
    assert graphs.spatial[0] is graphs.spatial[1] is graphs.spatial[2]
    assert graphs.spatial[0]._nnz() <= n * (2 * config.spatial_k + 1)
    for g in graphs.feature:
        assert g._nnz() <= n * (2 * 7 + 1)
        assert (_dense(g) > 0).sum(1).min() >= 8  # k neighbours + self
    alone = feature_graphs(prepared, 7)
    assert all(torch.equal(a.to_dense(), b.to_dense()) for a, b in zip(alone, graphs.feature))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        knn_search(np.zeros((5, 2)), 5)
    with pytest.raises(ValueError):
        knn_search(np.zeros((5, 2)), 2, metric="cosine")
    with pytest.raises(ValueError):
        knn_search(np.array([[0.0, np.nan], [1, 1], [2, 2]]), 1)


def _grid(nx=12, ny=9, step=2.0):
    xs, ys = np.meshgrid(np.arange(nx) * step, np.arange(ny) * step)
    return np.column_stack([xs.ravel(), ys.ravel()])


@pytest.mark.parametrize("k", [3, 6])
def test_spatial_tie_order_equals_scikit_learn_on_a_grid(k):
    coords = _grid()
    want = NearestNeighbors(n_neighbors=k + 1).fit(coords).kneighbors(coords, return_distance=False)[:, 1:]
    got = sklearn_neighbours(coords, k)
    assert np.array_equal(got, want)
    # they are k nearest neighbours, and the grid really has ties at the k-th distance (so the order matters)
    d = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    kth = np.sort(d, axis=1)[:, k - 1]
    assert np.allclose(d[np.arange(len(coords))[:, None], got].max(1), kth)
    tied = (np.sort(d, axis=1)[:, k] == kth).mean()
    assert tied > 0.5
    # the graph is the reference's: kNN from that table, A + A^T capped at 1, + I, D^-1/2 . D^-1/2
    n = len(coords)
    a = np.zeros((n, n))
    a[np.repeat(np.arange(n), k), want.ravel()] = 1.0
    a = np.minimum(a + a.T, 1.0) + np.eye(n)
    deg = a.sum(1)
    expected = a / np.sqrt(np.outer(deg, deg))
    assert np.allclose(_dense(spatial_graph(coords, k)), expected, atol=1e-6)
    assert np.allclose(_dense(spatial_graph(coords, k, ties="sklearn")), expected, atol=1e-6)
    index_ordered = _dense(spatial_graph(coords, k, ties="index"))
    assert not np.allclose(index_ordered, expected)  # the old tie-break is a different graph on a grid
    by_index = normalize_with_self_loops(symmetrize_capped(neighbour_table_graph(knn_search(coords, k)[0])))
    assert np.allclose(index_ordered, by_index.toarray(), atol=1e-6)


def test_build_graphs_takes_the_tie_order_from_the_config():
    n = 108
    coords = _grid()
    rng = np.random.default_rng(0)
    prepared = PreparedData(
        name="grid", data_type="Simulation", modality_names=["RNA", "ADT"],
        features=[rng.normal(size=(n, 6)).astype(np.float32) for _ in range(2)], coords=coords,
        spot_names=np.array([f"s{i}" for i in range(n)]), kept_index=np.arange(n), n_spots_original=n,
    )
    for ties in ("sklearn", "index"):
        config = SpamoConfig(data_type="Simulation", knn_k=5, knn_ties=ties).resolve(2, n)
        graphs = build_graphs(prepared, config)
        assert torch.equal(graphs.spatial[0].to_dense(), spatial_graph(coords, config.spatial_k, ties).to_dense())
    with pytest.raises(ValueError, match="ties"):
        spatial_graph(coords, 3, ties="random")


def test_distance_edges_equal_scikit_learn_distance_graph_capped_and_normalised():
    """docs/method.md section 2: the correlation distance is the edge value before the symmetrise-and-cap step."""
    x = _features(150, d=12, seed=8)
    k = 6
    sk = kneighbors_graph(x, k, mode="distance", metric="correlation", include_self=False).toarray()
    a = np.minimum(sk + sk.T, 1.0) + np.eye(150)
    deg = a.sum(1)
    expected = a / np.sqrt(np.outer(deg, deg))
    assert np.allclose(_dense(feature_graph(x, k, weight="distance")), expected, atol=1e-6)
