"""Graph communities (leiden, louvain) of the kNN graph of the projected embedding, resolution bisected to K.

The reference scans 290 resolutions from 3.0 down to 0.1; a bisection of the resolution finds K in a handful of
partitions, since the number of communities grows (not always strictly) with the resolution.
"""

from __future__ import annotations

import contextlib
import logging
import random
from typing import TYPE_CHECKING, Callable

import numpy as np
from scipy import sparse
from sklearn.neighbors import NearestNeighbors

from spamo.clustering.base import Backend, ClusteringFailed, ClusterRequest, register_backend, relabel_by_appearance

if TYPE_CHECKING:
    import igraph

log = logging.getLogger(__name__)

GRAPH_NEIGHBOURS = 20


def knn_graph(points: np.ndarray, n_neighbors: int = GRAPH_NEIGHBOURS) -> igraph.Graph:
    """Undirected kNN graph of the points (Euclidean; an edge where either spot is among the other's k nearest).

    Built with scikit-learn's exact neighbour search rather than scanpy's `pp.neighbors` (see
    `spamo._compat.WORKAROUNDS`): scanpy's compiles numba code in every new process (every Ray worker) and
    fails with scipy's sparse arrays above 4,096 spots. Unit edge weights; O(N k) memory.
    """
    import igraph  # lazy: about a second of imports (its drawing modules) that runs not using it need not pay

    n_neighbors = min(n_neighbors, points.shape[0] - 1)
    found = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(points).kneighbors(points, return_distance=False)
    rows = np.repeat(np.arange(points.shape[0]), n_neighbors + 1)
    cols = found.ravel()
    keep = rows != cols
    low, high = np.minimum(rows[keep], cols[keep]), np.maximum(rows[keep], cols[keep])
    upper = sparse.coo_matrix((np.ones(low.size), (low, high)), shape=(points.shape[0],) * 2).tocsr().tocoo()
    graph = igraph.Graph(n=points.shape[0], edges=np.column_stack([upper.row, upper.col]), directed=False)
    graph.es["weight"] = np.ones(upper.nnz)
    return graph


@contextlib.contextmanager
def igraph_seed(seed: int):
    """igraph draws from Python's `random` by default; give it a private seeded generator for one call."""
    import igraph

    igraph.set_random_number_generator(random.Random(seed))
    try:
        yield
    finally:
        igraph.set_random_number_generator(random)


def leiden_at(graph, resolution: float, seed: int) -> np.ndarray:
    """Leiden (modularity, 2 iterations): what scanpy's ``tl.leiden(flavor="igraph")`` runs on its graph."""
    with igraph_seed(seed):
        part = graph.community_leiden(objective_function="modularity", weights="weight", resolution=resolution,
                                      n_iterations=2)
    return np.asarray(part.membership, dtype=np.int64)


def louvain_at(graph, resolution: float, seed: int) -> np.ndarray:
    """Louvain (igraph's multilevel modularity optimisation with a resolution; the `louvain` package is not needed)."""
    with igraph_seed(seed):
        part = graph.community_multilevel(weights="weight", resolution=resolution)
    return np.asarray(part.membership, dtype=np.int64)


def resolution_search(partition_at: Callable[[float], np.ndarray], n_clusters: int, points: np.ndarray,
                      low: float = 0.01, high: float = 3.0, max_steps: int = 40) -> tuple[np.ndarray, float]:
    """Bisect the resolution until the partition has exactly n_clusters communities.

    The count grows (not always strictly) with the resolution. The bracket [low, high] is widened first when needed
    (the reference scans 3.0 down to 0.1). When no resolution gives exactly K (the count jumps over it), the
    finest partition with more than K communities is merged down to K by joining the smallest community to the one
    with the nearest centroid, repeatedly. Returns the labels and the resolution they came from.
    """
    tried: dict[float, np.ndarray] = {}

    def count(resolution: float) -> int:
        if resolution not in tried:
            tried[resolution] = partition_at(resolution)
        return int(np.unique(tried[resolution]).size)

    while count(high) < n_clusters and high < 1e3:
        low, high = high, high * 2
    while count(low) > n_clusters and low > 1e-6:
        high, low = low, low / 4
    for _ in range(max_steps):
        for end in (low, high):
            if count(end) == n_clusters:
                return tried[end], end
        middle = (low + high) / 2
        if count(middle) < n_clusters:
            low = middle
        else:
            high = middle
    above = [r for r in tried if count(r) > n_clusters]
    if not above:
        raise ClusteringFailed("n_clusters", f"no resolution gave {n_clusters} communities "
                                             f"(at most {max(map(count, tried))})")
    best = min(above, key=lambda r: (count(r), r))
    log.info("resolution search: no exact K; merging %d communities down to %d", count(best), n_clusters)
    return merge_smallest(tried[best], points, n_clusters), best


def merge_smallest(labels: np.ndarray, points: np.ndarray, n_clusters: int) -> np.ndarray:
    """Join the smallest cluster to the cluster with the nearest centroid until n_clusters remain."""
    labels = relabel_by_appearance(labels)
    while np.unique(labels).size > n_clusters:
        names, sizes = np.unique(labels, return_counts=True)
        smallest = names[np.argmin(sizes)]
        centroids = np.stack([points[labels == name].mean(axis=0) for name in names])
        distance = np.linalg.norm(centroids - centroids[names == smallest], axis=1)
        distance[names == smallest] = np.inf
        labels = np.where(labels == smallest, names[np.argmin(distance)], labels)
    return relabel_by_appearance(labels)


def _community_backend(partition_at) -> Backend:
    def backend(points: np.ndarray, n_clusters: int, request: ClusterRequest) -> np.ndarray:
        graph = knn_graph(points)
        labels, resolution = resolution_search(lambda r: partition_at(graph, r, request.seed), n_clusters, points)
        log.info("%s: %d communities at resolution %.4f", partition_at.__name__, n_clusters, resolution)
        return labels

    backend.__doc__ = f"Communities of the kNN graph by {partition_at.__name__}, resolution bisected to K."
    return backend


register_backend("leiden")(_community_backend(leiden_at))
register_backend("louvain")(_community_backend(louvain_at))
