"""PAGA: how strongly each pair of domains is connected in the kNN graph of the fused embedding, and its tree."""

from __future__ import annotations

import igraph
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spamo._compat import CsrOutput
from spamo.clustering.community import igraph_seed
from spamo.run_folder import OBSM_FUSED

PAGA_COLUMNS = ["source_domain", "target_domain", "connectivity", "in_tree"]
EXACT_KNN_MAX_SPOTS = 50_000


def knn_transformer(n_obs: int, n_neighbors: int, seed: int):
    """Exact kNN (scikit-learn, chunked, memory O(N k)) up to EXACT_KNN_MAX_SPOTS spots; approximate above.

    Exact search costs O(N^2 d) time; NN-descent costs a one-off numba compilation per process and then scales
    near-linearly, so it pays off only on large data.
    """
    if n_obs <= EXACT_KNN_MAX_SPOTS:
        return "sklearn"
    from pynndescent import PyNNDescentTransformer

    return CsrOutput(PyNNDescentTransformer(n_neighbors=n_neighbors, metric="euclidean", random_state=seed,
                                            n_jobs=1))


def domain_paga(embedding, groupby: str, seed: int, n_neighbors: int = 15,
                neighbors_method: str = "gauss") -> pd.DataFrame:
    """PAGA connectivity between domains over the kNN graph of the fused embedding (sparse, O(N k)).

    The kNN graph's edges are weighted with scanpy's Gaussian kernel by default: the same graph as the "umap"
    weighting, without its numba compilation on first use; `neighbors_method="umap"` gives scanpy's default.
    """
    import scanpy as sc

    k = min(n_neighbors, embedding.n_obs - 1)
    sc.pp.neighbors(embedding, use_rep=OBSM_FUSED, n_neighbors=k, method=neighbors_method, random_state=seed,
                    transformer=knn_transformer(embedding.n_obs, k, seed))
    sc.tl.paga(embedding, groups=groupby)
    groups = list(embedding.obs[groupby].cat.categories)
    connectivity = sp.csr_matrix(embedding.uns["paga"]["connectivities"]).toarray()
    tree = sp.csr_matrix(embedding.uns["paga"]["connectivities_tree"]).toarray()
    tree = (tree + tree.T) > 0
    rows = [{"source_domain": groups[i], "target_domain": groups[j], "connectivity": float(connectivity[i, j]),
             "in_tree": bool(tree[i, j])}
            for i in range(len(groups)) for j in range(i + 1, len(groups))]
    return pd.DataFrame(rows, columns=PAGA_COLUMNS).astype({"source_domain": str, "target_domain": str,
                                                            "connectivity": float, "in_tree": bool})


def paga_layout(embedding, seed: int = 0) -> np.ndarray:
    """A deterministic force-directed layout of the PAGA graph (Fruchterman-Reingold from a circle).

    Computed here rather than by scanpy, whose own layout step fails on scipy's current sparse indexing
    (`spamo._compat.WORKAROUNDS`, "PAGA layout"). igraph's layout draws random numbers, from a generator seeded here.
    """
    connectivities = sp.coo_matrix(embedding.uns["paga"]["connectivities"])
    n = connectivities.shape[0]
    upper = connectivities.row < connectivities.col
    graph = igraph.Graph(n=n, edges=list(zip(connectivities.row[upper].tolist(), connectivities.col[upper].tolist())))
    angles = 2 * np.pi * np.arange(n) / max(n, 1)
    start = np.column_stack([np.cos(angles), np.sin(angles)]).tolist()
    if graph.ecount() == 0:
        return np.asarray(start)
    with igraph_seed(seed):
        layout = graph.layout_fruchterman_reingold(weights=connectivities.data[upper].tolist(), seed=start,
                                                   niter=500)
    return np.asarray(layout.coords)
