"""Cluster an embedding into spatial domains: one function, a registry of backends (docs/method.md section 6).

`cluster(embedding, n_clusters, method)` projects the embedding to its first `n_pcs` principal components
(`spamo.metrics.pca_embedding`, deterministic) and hands the projection to the backend registered under `method`:

- ``mclust`` (`mclust.py`): R's ``Mclust`` with model "EEE" and G = n_clusters after ``set.seed(seed)`` (the
  published method), called in this process through rpy2.
- ``gmm`` (`mixture.py`): scikit-learn's GaussianMixture with a tied covariance (the same model as EEE), best of
  several seeded initialisations; ``kmeans``: scikit-learn's KMeans.
- ``leiden`` / ``louvain`` (`community.py`): community detection (igraph) on the kNN graph (k = 20) of the
  projection, with the resolution bisected until the number of communities equals n_clusters.
- ``split-merge`` (`split_merge.py`): `split_merge`, started from `init_k` components, labels at n_clusters.
- ``auto``: ``mclust`` when R and mclust are usable, else ``gmm`` (also, with a warning, when mclust finds no fit).

Labels are integers 0..K-1 (numbered in order of first appearance, so the same partition always gets the same
numbers). The reference's labels.txt holds mclust's 1..K; every score is invariant to the numbering.
`SPAMO_DISABLE_R=1` switches R off (then ``auto`` uses ``gmm`` and ``mclust`` refuses).
A new backend is a function `(points, n_clusters, ClusterRequest) -> labels` decorated with `register_backend(name)`,
which also makes `name` a value the `cluster_method` setting accepts (`spamo.choices.CLUSTER_METHODS`).
"""

from __future__ import annotations

import numpy as np

# importing the backend modules registers them, in this order (the order of `available_methods()`)
from spamo.clustering import mclust, mixture, community  # noqa: F401  isort: skip
from spamo.clustering.base import (BACKENDS, ClusteringFailed, ClusterRequest, available_methods, check_k,
                                   one_thread, register_backend, relabel_by_appearance)
from spamo.clustering.mclust import R_INSTALL_HINT, _r_problem, r_available
from spamo.clustering.smoothing import spatial_majority_vote, spatial_neighbours
from spamo.clustering.split_merge import SplitMergeResult, SplitMergeStep, split_merge
from spamo.errors import SpamoInputError
from spamo.metrics import pca_embedding

__all__ = ["ClusterRequest", "ClusteringFailed", "R_INSTALL_HINT", "SplitMergeResult", "SplitMergeStep",
           "available_methods", "cluster", "one_thread", "r_available", "register_backend", "relabel_by_appearance",
           "spatial_majority_vote", "spatial_neighbours", "split_merge"]


def cluster(embedding, n_clusters: int, method: str = "auto", *, n_pcs: int = 20, seed: int = 2020,
            coords=None, smooth: bool = False, init_k: int | None = None) -> np.ndarray:
    """Labels 0..K-1 for the spots of `embedding` (N x d), from the backend `method` on its PCA-`n_pcs` projection.

    `smooth=True` (needs `coords`) adds the spatial majority vote of `spatial_majority_vote` afterwards (which can
    absorb a cluster of scattered single spots, leaving fewer than K labels).
    """
    if method not in BACKENDS:
        raise SpamoInputError("cluster_method", f"'{method}' is not one of {', '.join(BACKENDS)}")
    points = pca_embedding(embedding, n_pcs=n_pcs, seed=seed)
    check_k(n_clusters, points.shape[0])
    if coords is not None:
        coords = np.asarray(coords, dtype=np.float64)
        if coords.shape[0] != points.shape[0]:
            raise SpamoInputError("coords", f"{coords.shape[0]} coordinates for {points.shape[0]} spots")
    if smooth and coords is None:
        raise SpamoInputError("smooth", "spatial smoothing needs the spot coordinates")
    with one_thread():
        labels = BACKENDS[method](points, int(n_clusters), ClusterRequest(seed=seed, coords=coords, init_k=init_k))
    labels = relabel_by_appearance(labels)
    if smooth:
        labels = relabel_by_appearance(spatial_majority_vote(labels, coords))
    return labels
