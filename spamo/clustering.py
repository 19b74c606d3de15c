"""Cluster an embedding into spatial domains: one function, a registry of backends (docs/method.md section 6).

`cluster(embedding, n_clusters, method)` projects the embedding to its first `n_pcs` principal components
(`spamo.metrics.pca_embedding`, deterministic) and hands the projection to the backend registered under `method`:

- ``mclust``: R's ``Mclust`` with model "EEE" and G = n_clusters after ``set.seed(seed)`` (the published method),
  called in this process through rpy2 (the matrix crosses as an R double vector with dimensions, never as R source).
- ``gmm``: scikit-learn's GaussianMixture with a tied covariance (the same model as EEE), best of several seeded
  initialisations.
- ``kmeans``: scikit-learn's KMeans.
- ``leiden`` / ``louvain``: community detection (igraph) on the kNN graph (k = 20) of the projection, with the
  resolution bisected until the number of communities equals n_clusters.
- ``split-merge``: `split_merge` below, started from `init_k` components, labels at n_clusters.
- ``auto``: ``mclust`` when R and mclust are usable, else ``gmm`` (also, with a warning, when mclust finds no fit).

Labels are integers 0..K-1 (numbered in order of first appearance, so the same partition always gets the same
numbers). The reference's labels.txt holds mclust's 1..K; every score is invariant to the numbering.

R can be switched off by the user with the environment variable ``SPAMO_DISABLE_R=1`` (then ``auto`` uses ``gmm``
and ``mclust`` refuses), for example where embedding R next to Ray workers is unwanted.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from spamo.errors import MissingDependencyError, SpamoInputError
from spamo.metrics import pca_embedding, spatial_edges

log = logging.getLogger(__name__)

R_INSTALL_HINT = ('install R and mclust (apt-get install r-base-core r-cran-mclust) and rpy2 (pip install "spamo[r]"), '
                  "or choose --cluster-method gmm")
SMOOTH_K = 6
GRAPH_NEIGHBOURS = 20


@dataclass(frozen=True)
class ClusterRequest:
    """What a backend may need beyond the projected points and K."""

    seed: int = 2020
    coords: np.ndarray | None = None
    init_k: int | None = None


Backend = Callable[[np.ndarray, int, ClusterRequest], np.ndarray]
_BACKENDS: dict[str, Backend] = {}


def register_backend(name: str) -> Callable[[Backend], Backend]:
    """Register a clustering backend under `name` (the value of --cluster-method)."""

    def add(func: Backend) -> Backend:
        _BACKENDS[name] = func
        return func

    return add


def available_methods() -> tuple[str, ...]:
    return tuple(_BACKENDS)


def cluster(embedding, n_clusters: int, method: str = "auto", *, n_pcs: int = 20, seed: int = 2020,
            coords=None, smooth: bool = False, init_k: int | None = None) -> np.ndarray:
    """Labels 0..K-1 for the spots of `embedding` (N x d), from the backend `method` on its PCA-`n_pcs` projection.

    `smooth=True` (needs `coords`) adds the spatial majority vote of `spatial_majority_vote` afterwards (which can
    absorb a cluster of scattered single spots, leaving fewer than K labels).
    """
    if method not in _BACKENDS:
        raise SpamoInputError("cluster_method", f"'{method}' is not one of {', '.join(_BACKENDS)}")
    points = pca_embedding(embedding, n_pcs=n_pcs, seed=seed)
    _check_k(n_clusters, points.shape[0])
    if coords is not None:
        coords = np.asarray(coords, dtype=np.float64)
        if coords.shape[0] != points.shape[0]:
            raise SpamoInputError("coords", f"{coords.shape[0]} coordinates for {points.shape[0]} spots")
    if smooth and coords is None:
        raise SpamoInputError("smooth", "spatial smoothing needs the spot coordinates")
    with one_thread():
        labels = _BACKENDS[method](points, int(n_clusters), ClusterRequest(seed=seed, coords=coords, init_k=init_k))
    labels = relabel_by_appearance(labels)
    if smooth:
        labels = relabel_by_appearance(spatial_majority_vote(labels, coords))
    return labels


def one_thread():
    """Limit BLAS and OpenMP to one thread while clustering.

    The work is many small operations (d x d matrices with d = 20, k-means passes), for which thread pools spend far
    more time waking and spinning than computing on a busy machine: on the shared 2-core machine `gmm` took 12.8 s
    with two BLAS threads and 0.7 s with one at 3,500 spots, and a k-means fit at 10,000 spots 1.1-2.1 s with two
    OpenMP threads and 0.1 s with one. (Ray trials hold one CPU each anyway.)
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _check_k(n_clusters, n_spots: int) -> None:
    if not isinstance(n_clusters, (int, np.integer)) or not (2 <= n_clusters <= n_spots):
        raise SpamoInputError("n_clusters", f"n_clusters={n_clusters} must be an integer between 2 and {n_spots}")


def relabel_by_appearance(labels) -> np.ndarray:
    """Renumber labels 0..K-1 in order of first appearance (a canonical numbering of a partition)."""
    _, first, inverse = np.unique(np.asarray(labels), return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse.ravel()]


# ------------------------------------------------------------------------------------------------ R / mclust

_R_LOCK = threading.Lock()


@contextlib.contextmanager
def _environment_kept():
    """Undo the environment changes rpy2 makes when it starts R.

    rpy2 prepends R's library folders to LD_LIBRARY_PATH; R, already loaded, no longer needs them, but every Python
    subprocess started afterwards (Ray workers, `spamo` children) would then load the wrong libpython.
    """
    before = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(before):
            if key.startswith("LD_"):
                del os.environ[key]
        for key, value in before.items():
            if key.startswith("LD_") and os.environ.get(key) != value:
                os.environ[key] = value


@functools.lru_cache(maxsize=1)
def _r_problem() -> str | None:
    """Why R's mclust cannot be used here (None when it can). Probed once: starting R costs about a second."""
    try:
        with _environment_kept():
            import rpy2.robjects as ro
    except Exception as exc:  # ImportError, or R itself failing to start
        return f"rpy2 cannot start R ({exc.__class__.__name__}: {str(exc).strip()[:120]})"
    try:
        with _R_LOCK, _quiet_r():
            if not bool(ro.r["requireNamespace"]("mclust", quietly=True)[0]):
                return "the R package mclust is not installed"
    except Exception as exc:
        return f"R failed while looking for mclust ({str(exc).strip()[:120]})"
    return None


def r_available() -> bool:
    """True when R, rpy2 and mclust are usable and the user has not set SPAMO_DISABLE_R=1."""
    return not _r_disabled() and _r_problem() is None


def _r_disabled() -> bool:
    return os.environ.get("SPAMO_DISABLE_R", "").strip().lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def _quiet_r():
    """Send R's console chatter (startup notes, warnings) to the log instead of stderr."""
    from rpy2.rinterface_lib import callbacks

    saved = callbacks.consolewrite_warnerror, callbacks.consolewrite_print
    callbacks.consolewrite_warnerror = lambda text: log.debug("R: %s", text.rstrip())
    callbacks.consolewrite_print = lambda text: log.debug("R: %s", text.rstrip())
    try:
        yield
    finally:
        callbacks.consolewrite_warnerror, callbacks.consolewrite_print = saved


class ClusteringFailed(SpamoInputError):
    """A backend ran but found no clustering for this input and K (for example mclust returning no EEE fit)."""


@register_backend("mclust")
def mclust_labels(points: np.ndarray, n_clusters: int, request: ClusterRequest) -> np.ndarray:
    """R mclust, model EEE, G = n_clusters, after set.seed(seed), as the published method runs it."""
    if _r_disabled():
        raise MissingDependencyError("mclust", "R is switched off (SPAMO_DISABLE_R is set): unset it, "
                                               "or choose --cluster-method gmm")
    problem = _r_problem()
    if problem is not None:
        raise MissingDependencyError("mclust", f"{problem}; {R_INSTALL_HINT}")
    import rpy2.robjects as ro
    from rpy2.rinterface_lib.embedded import RRuntimeError

    data = np.ascontiguousarray(points, dtype=np.float64)
    with _R_LOCK, _quiet_r():
        # Mclust calls its helpers by name, so the package must be attached (constant R code, no data in it)
        ro.r("suppressWarnings(suppressPackageStartupMessages(library(mclust)))")
        mclust_fit = ro.r["Mclust"]
        matrix = ro.r["matrix"](ro.FloatVector(data.ravel(order="F")), nrow=data.shape[0], ncol=data.shape[1])
        ro.r["set.seed"](int(request.seed))
        try:
            fit = mclust_fit(matrix, G=n_clusters, modelNames="EEE", verbose=False)
        except RRuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1].strip()  # the first lines repeat the call, data included
            raise ClusteringFailed("mclust", f"no fit: {reason[:160]}") from None
        if fit is ro.NULL:
            raise ClusteringFailed("mclust", f"no EEE fit with G={n_clusters}")
        labels = np.asarray(fit.rx2("classification"), dtype=np.int64)
    return labels


@register_backend("auto")
def auto_labels(points: np.ndarray, n_clusters: int, request: ClusterRequest) -> np.ndarray:
    """mclust when R is usable (the published method), else the same model through scikit-learn (`gmm`)."""
    if r_available():
        try:
            return mclust_labels(points, n_clusters, request)
        except ClusteringFailed as exc:
            warnings.warn(f"{exc}; using gmm instead", RuntimeWarning, stacklevel=2)
    return gmm_labels(points, n_clusters, request)


# ------------------------------------------------------------------------------------------------ scikit-learn


GMM_INITS = 5


@register_backend("gmm")
def gmm_labels(points: np.ndarray, n_clusters: int, request: ClusterRequest) -> np.ndarray:
    """Gaussian mixture with one shared full covariance (mclust's EEE); best likelihood of GMM_INITS k-means starts.

    Each start is a seeded k-means partition (scikit-learn's ``init_params="kmeans"``); EM then runs to a 1e-4
    tolerance on the per-spot lower bound. More starts than scikit-learn's default of one keep it from stopping at a
    poor local optimum (mclust starts from a hierarchical agglomeration instead).
    """
    from sklearn.mixture import GaussianMixture

    model = GaussianMixture(n_components=n_clusters, covariance_type="tied", n_init=GMM_INITS, init_params="kmeans",
                            max_iter=500, tol=1e-4, reg_covar=1e-6, random_state=request.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # ConvergenceWarning subclasses it
        return model.fit_predict(points)


@register_backend("kmeans")
def kmeans_labels(points: np.ndarray, n_clusters: int, request: ClusterRequest) -> np.ndarray:
    """Lloyd's k-means, 10 seeded k-means++ starts."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=n_clusters, n_init=10, random_state=request.seed).fit_predict(points)


# ------------------------------------------------------------------------------------------------ graph communities


def knn_graph(points: np.ndarray, n_neighbors: int = GRAPH_NEIGHBOURS):
    """Undirected kNN graph of the points (Euclidean; an edge where either spot is among the other's k nearest).

    Built with scikit-learn's exact neighbour search rather than scanpy's `pp.neighbors`: that one spends ~9 s in a
    numba compilation in every new process (every Ray worker) and, above 4,096 spots, fails with scipy's sparse
    arrays in this environment. Unit edge weights; O(N k) memory.
    """
    import igraph
    from scipy import sparse
    from sklearn.neighbors import NearestNeighbors

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
def _igraph_seed(seed: int):
    """igraph draws from Python's `random` by default; give it a private seeded generator for one call."""
    import random

    import igraph

    igraph.set_random_number_generator(random.Random(seed))
    try:
        yield
    finally:
        igraph.set_random_number_generator(random)


def leiden_at(graph, resolution: float, seed: int) -> np.ndarray:
    """Leiden (modularity, 2 iterations): what scanpy's ``tl.leiden(flavor="igraph")`` runs on its graph."""
    with _igraph_seed(seed):
        part = graph.community_leiden(objective_function="modularity", weights="weight", resolution=resolution,
                                      n_iterations=2)
    return np.asarray(part.membership, dtype=np.int64)


def louvain_at(graph, resolution: float, seed: int) -> np.ndarray:
    """Louvain (igraph's multilevel modularity optimisation with a resolution; the `louvain` package is not needed)."""
    with _igraph_seed(seed):
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


# ------------------------------------------------------------------------------------------------ smoothing


def spatial_neighbours(coords: np.ndarray, k: int = SMOOTH_K) -> np.ndarray:
    """N x k indices of each spot's k nearest other spots (KD-tree; the spot itself is left out even at duplicates)."""
    from scipy.spatial import cKDTree

    coords = np.asarray(coords, dtype=np.float64)
    k = min(k, coords.shape[0] - 1)
    _, found = cKDTree(coords).query(coords, k=k + 1)
    is_self = found == np.arange(coords.shape[0])[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")  # self (True) moves to the end
    return np.take_along_axis(found, order, axis=1)[:, :k]


def spatial_majority_vote(labels, coords, k: int = SMOOTH_K) -> np.ndarray:
    """One simultaneous pass: a spot takes the label held by more than half of its k nearest spots, if any.

    Memory O(N k^2) booleans at most (each neighbour's label compared with the other neighbours'); no N x N.
    """
    labels = np.asarray(labels)
    neighbours = spatial_neighbours(coords, k)
    k = neighbours.shape[1]
    around = labels[neighbours]
    votes = (around[:, :, None] == around[:, None, :]).sum(axis=2)
    winner = np.argmax(votes, axis=1)
    rows = np.arange(labels.size)
    majority = votes[rows, winner] * 2 > k
    return np.where(majority, around[rows, winner], labels)


# ------------------------------------------------------------------------------------------------ split and merge


@dataclass
class SplitMergeStep:
    """One clustering visited by `split_merge`.

    `action`: "init", "split", "merge", "forced split" or "forced merge". `pair`: for a merge the two labels joined
    (numbering of the previous step), for a split (the label split, the new label). `criterion`: the classification
    BIC after the step (higher is better).
    """

    k: int
    labels: np.ndarray
    criterion: float
    action: str
    pair: tuple[int, int] | None = None


@dataclass
class SplitMergeResult:
    """Every clustering `split_merge` visited, where it settled, and the merges in order."""

    steps: list[SplitMergeStep] = field(default_factory=list)
    estimated_k: int = 0

    @property
    def ks(self) -> list[int]:
        return sorted({step.k for step in self.steps})

    @property
    def merge_order(self) -> list[tuple[int, int]]:
        return [step.pair for step in self.steps if step.action.endswith("merge") and step.pair is not None]

    def labels_at(self, k: int) -> np.ndarray:
        """The labels with k clusters (the best criterion among the visits to k)."""
        visits = [step for step in self.steps if step.k == k]
        if not visits:
            raise SpamoInputError("n_clusters", f"split-and-merge never visited K={k} (visited {self.ks})")
        return max(visits, key=lambda step: step.criterion).labels.copy()


@dataclass
class _Stats:
    """Sufficient statistics of a partition: counts, means, within-cluster scatter matrices (K x d x d)."""

    counts: np.ndarray
    means: np.ndarray
    scatters: np.ndarray

    @classmethod
    def of(cls, points: np.ndarray, labels: np.ndarray) -> "_Stats":
        k = int(labels.max()) + 1
        counts = np.bincount(labels, minlength=k).astype(np.float64)
        means = np.zeros((k, points.shape[1]))
        np.add.at(means, labels, points)
        means /= counts[:, None]
        centred = points - means[labels]
        scatters = np.stack([centred[labels == c].T @ centred[labels == c] for c in range(k)])
        return cls(counts, means, scatters)


class _EEECriterion:
    """Classification BIC of the EEE Gaussian mixture (one shared covariance), from sufficient statistics.

    For a hard partition into K clusters with counts n_c and pooled within-cluster scatter W, the maximised
    classification log-likelihood with proportions n_c / N, means and shared covariance Sigma = W / N is
        L = sum_c n_c log(n_c / N) - N/2 (d log(2 pi) + log det(W / N + r I) + d),
    with a fixed ridge r (1e-6 of the mean variance of the data) against singular W, and
        criterion = 2 L - p log N,  p = (K - 1) + K d + d (d + 1) / 2     (mclust's BIC sign: higher is better).
    """

    def __init__(self, points: np.ndarray):
        self.n, self.d = points.shape
        self.ridge = 1e-6 * float(np.mean(np.var(points, axis=0))) + 1e-12

    def __call__(self, counts: np.ndarray, scatter: np.ndarray) -> float:
        counts = counts[counts > 0]
        k, n, d = counts.size, self.n, self.d
        _, logdet = np.linalg.slogdet(scatter / n + self.ridge * np.eye(d))
        loglik = float(np.sum(counts * np.log(counts / n))) - n / 2 * (d * np.log(2 * np.pi) + logdet + d)
        params = (k - 1) + k * d + d * (d + 1) / 2
        return 2 * loglik - params * np.log(n)


def split_merge(embedding, n_clusters: int | None, init_k: int, coords=None, *, n_pcs: int = 20,
                seed: int = 2020, min_size: int = 5, max_moves: int | None = None) -> SplitMergeResult:
    """Over- or under-cluster, then split and merge Gaussian components while the criterion improves.

    Criterion: the classification BIC of the EEE mixture (`_EEECriterion`), on the PCA-`n_pcs` projection.

    1. Start: `gmm` with `init_k` components, hard labels, refined by classification EM (CEM: assign each spot to the
       component of highest posterior under the shared covariance, re-estimate, until stable; empty components go).
    2. Settle: each round proposes, for every cluster, a split in two (2-means in the space whitened by the pooled
       covariance, started from the sign of the first principal direction; both halves >= `min_size` spots), and for
       every pair of clusters that touch in space (a spatial 6-nearest-neighbour edge joins them; every pair when no
       coords are given) their merge. The proposal raising the criterion most is applied, followed by CEM. When no
       proposal raises it before refinement, the few most promising are refined by CEM and the best that raises it
       then is taken; when none does, the clustering has settled: `estimated_k` is its K. Each accepted step raises the
       criterion strictly, so this ends.
    3. Forced path: from there, the best (least bad) merge or split is applied step by step until K = n_clusters
       (skipped when n_clusters is None), so `labels_at(n_clusters)` always exists.
    Every clustering visited is recorded with its K, labels, criterion and the pair merged or split.
    """
    with one_thread():
        return _split_merge(embedding, n_clusters, init_k, coords, n_pcs=n_pcs, seed=seed, min_size=min_size,
                            max_moves=max_moves)


def _split_merge(embedding, n_clusters, init_k, coords, *, n_pcs, seed, min_size, max_moves) -> SplitMergeResult:
    points = pca_embedding(embedding, n_pcs=n_pcs, seed=seed)
    n = points.shape[0]
    if not isinstance(init_k, (int, np.integer)) or not (1 <= init_k <= n):
        raise SpamoInputError("init_k", f"init_k={init_k} must be an integer between 1 and {n}")
    if n_clusters is not None:
        _check_k(n_clusters, n)
    edges = spatial_edges(np.asarray(coords, dtype=np.float64)) if coords is not None else None
    criterion = _EEECriterion(points)
    max_moves = max_moves or 4 * (init_k + (n_clusters or 0)) + 40

    start = gmm_labels(points, init_k, ClusterRequest(seed=seed)) if init_k > 1 else np.zeros(n, dtype=np.int64)
    labels = _cem(points, relabel_by_appearance(start), criterion)
    result = SplitMergeResult()
    _record(result, points, labels, criterion, "init")

    for _ in range(max_moves):
        move = _best_move(points, labels, criterion, edges, min_size)
        if move is None:
            break
        if move.gain > 1e-6:
            labels = _cem(points, move.labels, criterion)
        else:
            # No move raises the criterion before refinement; one may still raise it after CEM (a merge whose
            # reassigned boundary spots fit better): accept the best of the few most promising, else settle.
            refined = _best_refined_move(points, labels, criterion, edges, min_size)
            if refined is None:
                break
            move, labels = refined
        _record(result, points, labels, criterion, move.action, move.pair)
    result.estimated_k = int(labels.max()) + 1

    for _ in range(max_moves):
        k = int(labels.max()) + 1
        if n_clusters is None or k == n_clusters:
            break
        want = "merge" if k > n_clusters else "split"
        move = _best_move(points, labels, criterion, edges, min_size, only=want)
        if move is None:
            break
        refined = _cem(points, move.labels, criterion)
        labels = refined if refined.max() == move.labels.max() else move.labels
        _record(result, points, labels, criterion, f"forced {want}", move.pair)
    return result


@dataclass
class _Move:
    action: str
    labels: np.ndarray
    gain: float
    pair: tuple[int, int]


def _record(result: SplitMergeResult, points, labels, criterion, action: str, pair=None) -> None:
    stats = _Stats.of(points, labels)
    value = criterion(stats.counts, stats.scatters.sum(axis=0))
    result.steps.append(SplitMergeStep(int(labels.max()) + 1, labels.copy(), float(value), action, pair))
    log.info("split-merge: %s -> K=%d, criterion %.1f", action, int(labels.max()) + 1, value)


def _candidate_moves(points, labels, criterion, edges, min_size: int, only: str | None = None) -> list[_Move]:
    """Every split and merge on offer, best first by the criterion's change before refinement."""
    stats = _Stats.of(points, labels)
    total = stats.scatters.sum(axis=0)
    current = criterion(stats.counts, total)
    moves: list[_Move] = []
    if only in (None, "split"):
        moves += _split_moves(points, labels, stats, total, current, criterion, min_size)
    if only in (None, "merge"):
        moves += _merge_moves(labels, stats, total, current, criterion, edges)
    return sorted(moves, key=lambda move: -move.gain)


def _best_move(points, labels, criterion, edges, min_size: int, only: str | None = None) -> _Move | None:
    """The split or merge that raises the criterion most (or lowers it least), None when there is no candidate."""
    moves = _candidate_moves(points, labels, criterion, edges, min_size, only)
    return moves[0] if moves else None


REFINED_CANDIDATES = 4  # moves re-scored after CEM when none raises the criterion before it


def _best_refined_move(points, labels, criterion, edges, min_size: int) -> tuple[_Move, np.ndarray] | None:
    """Among the most promising moves, the one whose CEM-refined clustering raises the criterion most."""
    current = _criterion_of(points, labels, criterion)
    best = None
    for move in _candidate_moves(points, labels, criterion, edges, min_size)[:REFINED_CANDIDATES]:
        refined = _cem(points, move.labels, criterion)
        gain = _criterion_of(points, refined, criterion) - current
        if gain > 1e-6 and (best is None or gain > best[0]):
            best = (gain, move, refined)
    return None if best is None else (best[1], best[2])


def _criterion_of(points, labels, criterion) -> float:
    stats = _Stats.of(points, labels)
    return float(criterion(stats.counts, stats.scatters.sum(axis=0)))


def _merge_moves(labels, stats: _Stats, total, current, criterion, edges) -> list[_Move]:
    """Each merge of two spatially touching clusters, scored by Ward's update of the pooled scatter."""
    k = stats.counts.size
    pairs = _touching_pairs(labels, edges, k) if edges is not None else []
    if not pairs:
        pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
    moves = []
    for a, b in pairs:
        na, nb = stats.counts[a], stats.counts[b]
        gap = stats.means[a] - stats.means[b]
        scatter = total + (na * nb / (na + nb)) * np.outer(gap, gap)
        counts = np.delete(stats.counts, b)
        counts[a if a < b else a - 1] = na + nb
        merged = np.where(labels == b, a, labels)
        moves.append(_Move("merge", relabel_by_appearance(merged), criterion(counts, scatter) - current, (a, b)))
    return moves


def _touching_pairs(labels, edges, k: int) -> list[tuple[int, int]]:
    rows, cols = edges
    left, right = labels[rows], labels[cols]
    differ = left != right
    codes = np.unique(np.minimum(left, right)[differ] * k + np.maximum(left, right)[differ])
    return [(int(code // k), int(code % k)) for code in codes]


def _split_moves(points, labels, stats: _Stats, total, current, criterion, min_size: int) -> list[_Move]:
    """For each cluster, its 2-means split in the whitened space, scored by the change of the pooled scatter."""
    whiten = _whitening(total / points.shape[0] + criterion.ridge * np.eye(points.shape[1]))
    new_label = stats.counts.size
    moves = []
    for c in range(stats.counts.size):
        members = np.flatnonzero(labels == c)
        if members.size < 2 * min_size:
            continue
        side = _two_means(points[members] @ whiten)
        if side is None or min(side.sum(), (~side).sum()) < min_size:
            continue
        halves = [points[members[side]], points[members[~side]]]
        parts = [h - h.mean(axis=0) for h in halves]
        scatter = total - stats.scatters[c] + parts[0].T @ parts[0] + parts[1].T @ parts[1]
        counts = np.append(stats.counts, 0.0)
        counts[c], counts[new_label] = (~side).sum(), side.sum()
        split = labels.copy()
        split[members[side]] = new_label
        gain = criterion(counts, scatter) - current
        moves.append(_Move("split", relabel_by_appearance(split), gain, (c, new_label)))
    return moves


def _whitening(covariance: np.ndarray) -> np.ndarray:
    """W with W^T Sigma W = I: Euclidean distance after `x @ W` is the Mahalanobis distance under Sigma."""
    values, vectors = np.linalg.eigh(covariance)
    return vectors / np.sqrt(np.maximum(values, 1e-300))


def _two_means(data: np.ndarray, iterations: int = 30) -> np.ndarray | None:
    """Deterministic 2-means: start from the sign along the first principal direction, then Lloyd steps."""
    centred = data - data.mean(axis=0)
    _, _, vt = np.linalg.svd(centred[:: max(1, centred.shape[0] // 5000)], full_matrices=False)
    side = centred @ vt[0] > 0
    for _ in range(iterations):
        if side.all() or not side.any():
            return None
        one, two = data[side].mean(axis=0), data[~side].mean(axis=0)
        new = np.sum((data - one) ** 2, axis=1) < np.sum((data - two) ** 2, axis=1)
        if np.array_equal(new, side):
            break
        side = new
    return side if side.any() and not side.all() else None


def _cem(points: np.ndarray, labels: np.ndarray, criterion: _EEECriterion, iterations: int = 30) -> np.ndarray:
    """Classification EM under the EEE model: reassign to the highest posterior, re-estimate, until stable."""
    labels = relabel_by_appearance(labels)
    eye = np.eye(points.shape[1])
    for _ in range(iterations):
        stats = _Stats.of(points, labels)
        whiten = _whitening(stats.scatters.sum(axis=0) / points.shape[0] + criterion.ridge * eye)
        white, centres = points @ whiten, stats.means @ whiten
        score = (2 * white @ centres.T - np.sum(centres ** 2, axis=1)) / 2 + np.log(stats.counts / points.shape[0])
        new = relabel_by_appearance(np.argmax(score, axis=1))
        if np.array_equal(new, labels):
            break
        labels = new
    return labels


@register_backend("split-merge")
def split_merge_labels(points: np.ndarray, n_clusters: int, request: ClusterRequest) -> np.ndarray:
    """`split_merge` from init_k (default n_clusters) components; the labels at n_clusters."""
    # the points are already projected: n_pcs = their width keeps them as they are (up to a rotation)
    result = split_merge(points, n_clusters, request.init_k or n_clusters, request.coords, n_pcs=points.shape[1],
                         seed=request.seed)
    return result.labels_at(n_clusters)
