"""Small generated inputs for the model tests and benchmark: planted spatial domains and their graphs.

The graphs follow docs/method.md section 2 (kNN, symmetric, capped at 1, D^-1/2 (A + I) D^-1/2) and are built here with
scikit-learn and SciPy so the model tests do not depend on the preprocessing code.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.neighbors import NearestNeighbors


def normalised_knn_graph(points: np.ndarray, k: int, metric: str = "euclidean") -> torch.Tensor:
    """kNN graph, symmetrised and capped at 1, with self loops, D^-1/2 (A + I) D^-1/2, as coalesced COO float32."""
    nn_index = NearestNeighbors(n_neighbors=k + 1, metric=metric).fit(points)
    return normalised_graph(nn_index.kneighbors(points, return_distance=False)[:, 1:])


def normalised_graph(neighbours: np.ndarray) -> torch.Tensor:
    """The normalised graph of an (N, k) table of each spot's k nearest other spots (docs/method.md section 2)."""
    n, k = neighbours.shape
    rows = np.repeat(np.arange(n), k)
    adj = sp.coo_matrix((np.ones(n * k), (rows, neighbours.ravel())), shape=(n, n)).tocsr()
    adj = adj + adj.T
    adj.data = np.minimum(adj.data, 1.0)
    adj = adj + sp.identity(n, format="csr")
    inv_sqrt = 1.0 / np.sqrt(np.asarray(adj.sum(axis=1)).ravel())
    norm = sp.diags(inv_sqrt) @ adj @ sp.diags(inv_sqrt)
    norm = norm.tocoo()
    indices = torch.as_tensor(np.vstack([norm.row, norm.col]), dtype=torch.int64)
    values = torch.as_tensor(norm.data, dtype=torch.float32)
    return torch.sparse_coo_tensor(indices, values, (n, n), check_invariants=False).coalesce()


def planted_problem(n: int, dims: list[int], n_domains: int = 3, seed: int = 0, spatial_k: int = 3, knn_k: int = 10):
    """N spots on a square with `n_domains` vertical stripes; each modality's features carry the stripe label.

    Returns (features: list[float32 tensor], spatial graphs, feature graphs, labels).
    """
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 1, size=(n, 2))
    labels = np.minimum((coords[:, 0] * n_domains).astype(int), n_domains - 1)
    features, spatial, feature = [], [], []
    for dim in dims:
        centres = rng.normal(0, 2.0, size=(n_domains, dim))
        x = (centres[labels] + rng.normal(0, 1.0, size=(n, dim))).astype(np.float32)
        features.append(torch.as_tensor(x))
        spatial.append(normalised_knn_graph(coords, spatial_k))
        feature.append(normalised_knn_graph(x, knn_k, metric="correlation"))
    return features, spatial, feature, labels
