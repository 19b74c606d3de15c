"""Sparse spatial and feature graphs (docs/method.md section 2), built in O(N k) memory.

Every graph is a k-nearest-neighbour graph made symmetric (A + A^T, entries capped at 1) and normalised with self
loops, D^-1/2 (A + I) D^-1/2, handed to the model as a coalesced float32 `torch.sparse_coo_tensor`.

Neighbour search (`knn_search`):
- points of dimension <= 3 (coordinates): exact, a KD-tree (scipy `cKDTree`), at any N;
- higher dimension (features), N <= `EXACT_MAX_SPOTS`: exact, blocked brute force (matrix products in torch);
- above it: approximate, an inverted-file search (seeded k-means cells, each cell searched against its nearest
  cells) followed by neighbour-of-neighbour refinement rounds; recall is well above 95% on PCA-like features.
  A pure numpy/torch search was chosen over pynndescent because pynndescent's numba JIT compile runs in every
  fresh process and costs longer than the search itself below a few hundred thousand spots.
`method="exact" | "approximate"` forces either path.

Correlation distance is turned into euclidean geometry first: rows are centred and L2-normalised, after which
1 - corr(a, b) = ||a - b||^2 / 2, so every search works on squared euclidean distances.

Determinism: candidates are re-scored in float64 by direct differences and ranked by (distance, index), so ties
are broken towards the smaller spot index and the result is the same on every run for a seed.

Spatial graphs by default take scikit-learn's neighbours instead (`spatial_graph(ties="sklearn")`, setting
`knn_ties`): the reference builds them with `NearestNeighbors`, whose order decides the ties that grids are full of.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.spatial import cKDTree
from sklearn.neighbors import NearestNeighbors
from spamo.choices import FEATURE_GRAPH_WEIGHTS, KNN_TIES
from spamo.datatypes import get_data_type

log = logging.getLogger(__name__)

EXACT_MAX_SPOTS = 20_000
"""Feature graphs on at most this many spots use the exact brute-force search; larger ones the approximate one."""

METRICS = ("euclidean", "correlation")
WEIGHTS = FEATURE_GRAPH_WEIGHTS  # the names live in spamo.choices (light: the config checks them)
METHODS = ("auto", "exact", "approximate")

_TIE_SLACK = 8  # extra candidates fetched so that ties at the k-th distance are broken by index, not by chance
_BLOCK_ELEMENTS = 1 << 24  # entries of one distance block (64 MiB in float32)


@dataclass
class GraphSet:
    """The graphs of one prepared dataset: one spatial and one feature graph per modality."""

    spatial: list[torch.Tensor]
    feature: list[torch.Tensor]


# ----------------------------------------------------------------------------------------------------------------
# neighbour search


def knn_search(
    points: np.ndarray,
    k: int,
    metric: str = "euclidean",
    method: str = "auto",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other points of every point: (indices N x k int64, distances N x k float64), nearest first."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    x = _as_search_space(points, metric)
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k={k} must be between 1 and the number of points minus one ({n - 1})")
    if method == "auto":
        method = "exact" if (x.shape[1] <= 3 or n <= EXACT_MAX_SPOTS) else "approximate"
    if method == "exact" and x.shape[1] <= 3:
        idx = _kdtree_candidates(x, k)
    elif method == "exact":
        idx = _brute_candidates(x, k)
    else:
        idx = _approximate_candidates(x, k, seed)
    idx, sq = _rank_candidates(x, idx, k)
    dist = sq / 2.0 if metric == "correlation" else np.sqrt(sq)
    return idx, dist


def _as_search_space(points: np.ndarray, metric: str) -> np.ndarray:
    """Float64 copy in which squared euclidean distance ranks neighbours (row-centred, unit rows for correlation)."""
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"points must be a 2-D array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("points contain NaN or infinite values")
    if metric == "correlation":
        x = x - x.mean(axis=1, keepdims=True)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        # A constant row has no defined correlation; it stays the zero vector (distance 0.5 to every unit row).
        x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    return x


def _kdtree_candidates(x: np.ndarray, k: int) -> np.ndarray:
    """Exact candidates for low-dimensional points (coordinates)."""
    m = min(k + 1 + _TIE_SLACK, x.shape[0])
    _, idx = cKDTree(x).query(x, k=m, workers=-1)
    return np.asarray(idx, dtype=np.int64).reshape(x.shape[0], m)


def _brute_candidates(x: np.ndarray, k: int) -> np.ndarray:
    """Exact candidates by blocked matrix products: memory O(block x N), never N x N."""
    xt = torch.from_numpy(x.astype(np.float32))
    sq_norm = (xt * xt).sum(1)
    n = xt.shape[0]
    m = min(k + 1 + _TIE_SLACK, n)
    rows = max(1, _BLOCK_ELEMENTS // n)
    out = np.empty((n, m), dtype=np.int64)
    for start in range(0, n, rows):
        # ||p||^2 - 2 q.p ranks the same as ||q - p||^2 (the query's own norm is constant along a row)
        d = torch.addmm(sq_norm[None, :], xt[start : start + rows], xt.T, alpha=-2.0)
        out[start : start + rows] = torch.topk(d, m, dim=1, largest=False).indices.numpy()
    return out


def _approximate_candidates(
    x: np.ndarray,
    k: int,
    seed: int,
    cell_size: int = 256,
    n_probe: int = 32,
    refine_rounds: int = 1,
    refine_width: int = 10,
) -> np.ndarray:
    """Approximate candidates: inverted-file search over seeded k-means cells, then neighbour-of-neighbour refinement.

    Cells hold about `cell_size` spots, so each spot is compared with about n_probe * cell_size others: the cost
    grows linearly with N (recall 0.997 at 100,000 clustered 30-dimensional spots with the defaults).
    """
    xt = torch.from_numpy(x.astype(np.float32))
    n = xt.shape[0]
    m = min(k + 1 + _TIE_SLACK, n)
    n_cells = int(max(1, n // max(cell_size, m)))
    centroids = _kmeans(xt, n_cells, seed)
    cell = _nearest_centroid(xt, centroids)
    cand = _ivf_candidates(xt, centroids, cell, m, min(n_probe, n_cells))
    for _ in range(refine_rounds):
        cand = _refine_candidates(xt, cand, min(refine_width, m), m)
    return cand


def _kmeans(xt: torch.Tensor, n_cells: int, seed: int, iters: int = 10) -> torch.Tensor:
    """Seeded Lloyd iterations on a sample: cell centres for the inverted-file search."""
    gen = np.random.default_rng(seed)
    n = xt.shape[0]
    sample = xt[torch.from_numpy(np.sort(gen.choice(n, size=min(n, 64 * n_cells), replace=False)))]
    centroids = sample[torch.from_numpy(gen.choice(sample.shape[0], size=n_cells, replace=False))].clone()
    for _ in range(iters):
        assign = _nearest_centroid(sample, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, sample)
        counts = torch.bincount(assign, minlength=n_cells).to(sums.dtype)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids


def _nearest_centroid(xt: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    c_norm = (centroids * centroids).sum(1)
    rows = max(1, _BLOCK_ELEMENTS // centroids.shape[0])
    parts = [
        (c_norm[None, :] - 2.0 * (xt[s : s + rows] @ centroids.T)).argmin(1) for s in range(0, xt.shape[0], rows)
    ]
    return torch.cat(parts)


def _ivf_candidates(xt: torch.Tensor, centroids: torch.Tensor, cell: torch.Tensor, m: int, n_probe: int) -> np.ndarray:
    """For the spots of each cell, the m nearest among the spots of the n_probe cells nearest that cell's centre."""
    n = xt.shape[0]
    sq_norm = (xt * xt).sum(1)
    order = torch.argsort(cell, stable=True)
    bounds = torch.searchsorted(cell[order], torch.arange(centroids.shape[0] + 1))
    c_dist = torch.cdist(centroids, centroids)
    probes = torch.topk(c_dist, n_probe, dim=1, largest=False).indices
    out = np.empty((n, m), dtype=np.int64)
    for c in range(centroids.shape[0]):
        members = order[bounds[c] : bounds[c + 1]]
        if members.numel() == 0:
            continue
        pool = torch.cat([order[bounds[p] : bounds[p + 1]] for p in probes[c].tolist()])
        if pool.numel() < m:  # tiny neighbourhood of cells: fall back to every spot
            pool = torch.arange(n)
        pool_x, pool_norm = xt[pool], sq_norm[pool]
        rows = max(1, _BLOCK_ELEMENTS // pool.numel())
        for s in range(0, members.numel(), rows):
            q = members[s : s + rows]
            d = torch.addmm(pool_norm[None, :], xt[q], pool_x.T, alpha=-2.0)
            out[q.numpy()] = pool[torch.topk(d, m, dim=1, largest=False).indices].numpy()
    return out


def _refine_candidates(xt: torch.Tensor, cand: np.ndarray, width: int, m: int, rows: int = 2048) -> np.ndarray:
    """One neighbour-of-neighbour round: each spot's candidates joined with the `width` nearest candidates of its
    `width` nearest candidates (a friend of a friend is often a friend the cell search missed at a cell border)."""
    n = xt.shape[0]
    cand_t = torch.from_numpy(cand)
    out = np.empty_like(cand)
    for s in range(0, n, rows):
        block = cand_t[s : s + rows]
        pool = torch.cat([block, cand_t[block[:, :width]][:, :, :width].reshape(block.shape[0], -1)], dim=1)
        pool, _ = torch.sort(pool, dim=1)
        duplicate = torch.zeros_like(pool, dtype=torch.bool)
        duplicate[:, 1:] = pool[:, 1:] == pool[:, :-1]
        q = xt[s : s + rows]
        d = ((xt[pool] - q[:, None, :]) ** 2).sum(-1)
        d[duplicate] = float("inf")
        out[s : s + rows] = torch.gather(pool, 1, torch.topk(d, m, dim=1, largest=False).indices).numpy()
    return out


def _rank_candidates(x: np.ndarray, cand: np.ndarray, k: int, rows: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Exact float64 squared distances of the candidates; drop self and duplicates; keep the k best by (dist, index)."""
    n, m = cand.shape
    idx_out = np.empty((n, k), dtype=np.int64)
    sq_out = np.empty((n, k), dtype=np.float64)
    for s in range(0, n, rows):
        c = cand[s : s + rows]
        sq = ((x[c] - x[s : s + rows, None, :]) ** 2).sum(-1)
        sq[c == np.arange(s, s + c.shape[0])[:, None]] = np.inf
        order = np.lexsort((c, sq), axis=-1)
        c, sq = np.take_along_axis(c, order, 1), np.take_along_axis(sq, order, 1)
        sq[:, 1:][c[:, 1:] == c[:, :-1]] = np.inf  # the same spot twice among candidates
        order = np.lexsort((c, sq), axis=-1)[:, :k]
        idx_out[s : s + rows] = np.take_along_axis(c, order, 1)
        sq_out[s : s + rows] = np.take_along_axis(sq, order, 1)
    return idx_out, sq_out


# ----------------------------------------------------------------------------------------------------------------
# graph assembly


def knn_graph(
    points: np.ndarray,
    k: int,
    metric: str = "euclidean",
    weight: str = "connectivity",
    method: str = "auto",
    seed: int = 0,
) -> sp.csr_matrix:
    """Directed kNN graph, no self loops: row i holds i's k neighbours, valued 1 or the distance."""
    if weight not in WEIGHTS:
        raise ValueError(f"weight must be one of {WEIGHTS}, got {weight!r}")
    idx, dist = knn_search(points, k, metric=metric, method=method, seed=seed)
    n = idx.shape[0]
    values = np.ones(idx.size) if weight == "connectivity" else dist.ravel()
    indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
    graph = sp.csr_matrix((values, idx.ravel(), indptr), shape=(n, n))
    graph.sort_indices()
    return graph


def symmetrize_capped(graph: sp.spmatrix) -> sp.csr_matrix:
    """A + A^T with every entry capped at 1 (an edge found from both ends is not counted twice)."""
    sym = (graph + graph.T).tocsr()
    sym.sum_duplicates()
    np.minimum(sym.data, 1.0, out=sym.data)
    return sym


def normalize_with_self_loops(graph: sp.spmatrix) -> sp.csr_matrix:
    """D^-1/2 (A + I) D^-1/2 with D the row sums of A + I (the GCN propagation matrix)."""
    n = graph.shape[0]
    with_self = (sp.csr_matrix(graph) + sp.identity(n, format="csr")).tocsr()
    with_self.sum_duplicates()
    inv_sqrt = 1.0 / np.sqrt(np.asarray(with_self.sum(axis=1)).ravel())
    scaled = sp.diags(inv_sqrt) @ with_self @ sp.diags(inv_sqrt)
    scaled = scaled.tocsr()
    scaled.sort_indices()
    return scaled


def to_torch_sparse(graph: sp.spmatrix) -> torch.Tensor:
    """Coalesced float32 COO tensor of a scipy sparse matrix (row-major order, no duplicates)."""
    csr = sp.csr_matrix(graph)
    csr.sum_duplicates()
    csr.sort_indices()
    coo = csr.tocoo()
    indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    values = torch.from_numpy(coo.data.astype(np.float32))
    return torch.sparse_coo_tensor(indices, values, size=csr.shape, is_coalesced=True, check_invariants=False)


def normalized_knn_graph(
    points: np.ndarray,
    k: int,
    metric: str = "euclidean",
    weight: str = "connectivity",
    method: str = "auto",
    seed: int = 0,
) -> torch.Tensor:
    """kNN graph -> symmetric, capped -> self loops, normalised -> torch sparse: docs/method.md section 2."""
    directed = knn_graph(points, k, metric=metric, weight=weight, method=method, seed=seed)
    return to_torch_sparse(normalize_with_self_loops(symmetrize_capped(directed)))


def sklearn_neighbours(coords: np.ndarray, k: int) -> np.ndarray:
    """Each spot's k neighbours exactly as the reference finds them: scikit-learn `NearestNeighbors(k + 1)` (default
    algorithm, a KD-tree on coordinates) queried with the spots themselves, first column (self) dropped.

    Its order decides ties, which are the rule on grids (a spot has 4 neighbours at the same distance and k = 3 keeps
    three), so this, not the index order, reproduces the reference's graph. As in the reference, a spot whose
    coordinates repeat may keep itself and drop a twin (whichever comes first among equals). Memory O(N k), and no
    slower than the index-ordered KD-tree search (`benchmarks/bench_graphs.py`).
    """
    x = np.asarray(coords, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError("coordinates must be a finite 2-D array")
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k={k} must be between 1 and the number of points minus one ({x.shape[0] - 1})")
    index = NearestNeighbors(n_neighbors=k + 1).fit(x)
    return index.kneighbors(x, return_distance=False)[:, 1:].astype(np.int64)


def neighbour_table_graph(neighbours: np.ndarray) -> sp.csr_matrix:
    """Directed 0/1 graph of an (N, k) neighbour table (row i holds i's neighbours)."""
    n, k = neighbours.shape
    indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
    graph = sp.csr_matrix((np.ones(n * k), neighbours.ravel(), indptr), shape=(n, n))
    graph.sum_duplicates()
    graph.sort_indices()
    return graph


def spatial_graph(coords: np.ndarray, k: int, ties: str = "sklearn") -> torch.Tensor:
    """Normalised spatial kNN graph on 2-D coordinates (exact search at any size).

    `ties="sklearn"` (default) takes the reference's neighbours (`sklearn_neighbours`); `ties="index"` the exact
    KD-tree search with ties broken towards the smaller spot index (the old spamo graph).
    """
    if ties not in KNN_TIES:
        raise ValueError(f"ties must be one of {KNN_TIES}, got {ties!r}")
    if ties == "index":
        return normalized_knn_graph(coords, k, metric="euclidean", weight="connectivity", method="exact")
    directed = neighbour_table_graph(sklearn_neighbours(coords, k))
    return to_torch_sparse(normalize_with_self_loops(symmetrize_capped(directed)))


def feature_graph(
    features: np.ndarray,
    k: int,
    weight: str = "connectivity",
    method: str = "auto",
    seed: int = 0,
) -> torch.Tensor:
    """Normalised correlation-distance kNN graph on one modality's features.

    `weight="distance"` reproduces the 2-modality reference quirk: the correlation distance is the edge value before
    the symmetrise-and-cap step.
    """
    return normalized_knn_graph(features, k, metric="correlation", weight=weight, method=method, seed=seed)


def feature_graphs(prepared, knn_k: int, weight: str = "connectivity", method: str = "auto", seed: int = 0) -> list[torch.Tensor]:
    """One feature graph per modality of a `PreparedData` (the tuner caches these per KNN_k)."""
    graphs = []
    for name, feat in zip(prepared.modality_names, prepared.features):
        log.info("feature graph of %s: %d spots, k=%d, %s", name, feat.shape[0], knn_k, weight)
        graphs.append(feature_graph(feat, knn_k, weight=weight, method=method, seed=seed))
    return graphs


def build_graphs(prepared, config, method: str = "auto") -> GraphSet:
    """Spatial and feature graphs of a prepared dataset under a resolved `SpamoConfig`.

    The spatial graph is the same for every modality, so it is built once and the same tensor is shared.
    """
    spatial_k = config.spatial_k
    if spatial_k is None:
        spatial_k = get_data_type(prepared.data_type).spatial_k
    spatial = spatial_graph(prepared.coords, spatial_k, ties=config.knn_ties)
    feature = feature_graphs(prepared, config.knn_k, weight=config.feature_graph_weight, method=method, seed=config.seed)
    return GraphSet(spatial=[spatial] * prepared.n_modalities, feature=feature)
