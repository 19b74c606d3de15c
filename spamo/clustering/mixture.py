"""Gaussian-mixture and k-means backends (scikit-learn): `gmm` is the published EEE model without R."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture

from spamo.clustering.base import ClusterRequest, register_backend

GMM_INITS = 5


@register_backend("gmm")
def gmm_labels(points: np.ndarray, n_clusters: int, request: ClusterRequest) -> np.ndarray:
    """Gaussian mixture with one shared full covariance (mclust's EEE); best likelihood of GMM_INITS k-means starts.

    Each start is a seeded k-means partition (scikit-learn's ``init_params="kmeans"``); EM then runs to a 1e-4
    tolerance on the per-spot lower bound. More starts than scikit-learn's default of one keep it from stopping at a
    poor local optimum (mclust starts from a hierarchical agglomeration instead).
    """
    model = GaussianMixture(n_components=n_clusters, covariance_type="tied", n_init=GMM_INITS, init_params="kmeans",
                            max_iter=500, tol=1e-4, reg_covar=1e-6, random_state=request.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # ConvergenceWarning subclasses it
        return model.fit_predict(points)


@register_backend("kmeans")
def kmeans_labels(points: np.ndarray, n_clusters: int, request: ClusterRequest) -> np.ndarray:
    """Lloyd's k-means, 10 seeded k-means++ starts."""
    return KMeans(n_clusters=n_clusters, n_init=10, random_state=request.seed).fit_predict(points)
