"""The preprocessing steps as plain functions on matrices (docs/method.md section 1): filters' counts, total-count
normalisation, log1p, Seurat v3 highly variable features, scanpy-style scaling, the Seurat CLR, PCA and LSI.

Matrices stay sparse until a step needs them dense (scaling, PCA input of small feature sets); every randomised
step takes a seed, so the same seed gives the same features on every run.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from spamo.data import input_matrix


HVG_TOP = 3000


TARGET_SUM = 1e4


SCALE_MAX_VALUE = None  # scanpy's `sc.pp.scale` default: z-score without clipping (the reference calls it so)


def raw_counts(adata, layer: str | None = None) -> np.ndarray | sp.csr_matrix:
    """The input matrix of a modality, CSR if sparse, float64: `.X` as the reference reads it for every modality
    and data type (docs/method.md section 8), or `layers[layer]` when the user names a layer."""
    matrix = input_matrix(adata, layer)
    if hasattr(matrix, "to_memory"):  # backed sparse dataset
        matrix = matrix.to_memory()
    if sp.issparse(matrix):
        return sp.csr_matrix(matrix, dtype=np.float64)
    return np.asarray(matrix, dtype=np.float64)


def spots_per_feature(counts) -> np.ndarray:
    """Number of spots in which each feature has a positive count."""
    if sp.issparse(counts):
        csr = sp.csr_matrix(counts)
        return np.bincount(csr.indices[csr.data > 0], minlength=csr.shape[1])
    return (np.asarray(counts) > 0).sum(axis=0)


def features_per_spot(counts) -> np.ndarray:
    """Number of features with a positive count in each spot."""
    if sp.issparse(counts):
        csr = sp.csr_matrix(counts)
        rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
        return np.bincount(rows[csr.data > 0], minlength=csr.shape[0])
    return (np.asarray(counts) > 0).sum(axis=1)


def normalize_total(counts, target_sum: float = TARGET_SUM):
    """Scale each spot to `target_sum` total counts (spots with zero total stay zero)."""
    totals = np.asarray(counts.sum(axis=1)).ravel()
    factor = np.divide(target_sum, totals, out=np.zeros_like(totals, dtype=np.float64), where=totals > 0)
    if sp.issparse(counts):
        return sp.csr_matrix(sp.diags(factor) @ counts)
    return np.asarray(counts) * factor[:, None]


def log1p(matrix):
    """Natural log(1 + x), keeping sparsity."""
    if sp.issparse(matrix):
        out = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
        np.log1p(out.data, out=out.data)
        return out
    return np.log1p(np.asarray(matrix, dtype=np.float64))


def highly_variable_features(counts, n_top: int = HVG_TOP) -> np.ndarray:
    """Indices (sorted) of the top `n_top` highly variable features, Seurat v3 flavour, computed on raw counts.

    With no more than `n_top` features every feature is kept.
    """
    n_features = counts.shape[1]
    if n_features <= n_top:
        return np.arange(n_features)
    import anndata as ad
    import scanpy as sc

    adata = ad.AnnData(X=sp.csr_matrix(counts) if sp.issparse(counts) else np.asarray(counts))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-integer warnings on already-transformed inputs
        table = sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=n_top, inplace=False)
    return np.flatnonzero(np.asarray(table["highly_variable"]))


def scale(matrix, max_value: float | None = SCALE_MAX_VALUE) -> np.ndarray:
    """Z-score each feature as scanpy does: unbiased sd (ddof 1), sd 0 -> 1, then clip to +-max_value if given."""
    x = matrix.toarray() if sp.issparse(matrix) else np.array(matrix, dtype=np.float64)
    x = x.astype(np.float64, copy=False)
    mean = x.mean(axis=0)
    sd = x.std(axis=0, ddof=1) if x.shape[0] > 1 else np.zeros(x.shape[1])
    sd[sd == 0] = 1.0
    x -= mean
    x /= sd
    if max_value is not None:
        np.clip(x, -max_value, max_value, out=x)
    return x


def clr(counts):
    """Centred log-ratio per spot, Seurat style: log1p(x / exp(sum(log1p(positive x)) / n_features))."""
    n_features = counts.shape[1]
    if sp.issparse(counts):
        csr = sp.csr_matrix(counts, dtype=np.float64, copy=True)
        positive = np.where(csr.data > 0, csr.data, 0.0)
        rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
        log_sum = np.bincount(rows, weights=np.log1p(positive), minlength=csr.shape[0])
        geo = np.exp(log_sum / n_features)
        csr.data = np.log1p(csr.data / geo[rows])
        return csr
    x = np.asarray(counts, dtype=np.float64)
    geo = np.exp(np.log1p(np.where(x > 0, x, 0.0)).sum(axis=1) / n_features)
    return np.log1p(x / geo[:, None])


PCA_SOLVERS = ("covariance_eigh", "arpack", "full")  # scikit-learn's exact solvers, the ones `pca` chooses from
ONE_THREAD_COVARIANCE = 2e10  # covariance routes below this cost (N p^2 + 5 p^3) run on one BLAS thread (`pca`)
DENSE_COVARIANCE_BYTES = 1 << 30  # sparse input to the covariance route is made dense up to this size (`pca`)


def covariance_cost(n_spots: int, n_features: int) -> int:
    """The covariance route's cost estimate, N p^2 + 5 p^3 (`pca_solver`, `ONE_THREAD_COVARIANCE`)."""
    return n_spots * n_features**2 + 5 * n_features**3


def pca_solver(n_spots: int, n_features: int, n_components: int) -> str:
    """The exact PCA solver that is cheapest for this shape (all three give the same scores to ~1e-10).

    Cost estimates, in units fitted on this project's 2-core machine (benchmarks/results/run.md): the covariance
    route forms the features x features covariance and eigendecomposes it, ~ N p^2 + 5 p^3; ARPACK runs ~ 250 k
    products of the N x p matrix, ~ 250 N p k. Measured: 2,500 x 1,000, 99 components 0.25 s against 1.6 s;
    9,000 x 3,000, 50 components 6.8 s against 17.9 s; 3,500 x 3,000, 30 components 5.1 s against 4.7 s, where
    ARPACK stays. More components than half the rank take the dense SVD, as before this choice by cost.
    """
    n, p, k = n_spots, n_features, n_components
    if p <= 500:
        return "covariance_eigh"
    if k >= min(n, p) // 2:
        return "full"
    return "covariance_eigh" if covariance_cost(n, p) < 250 * n * p * k else "arpack"


def pca(matrix, n_components: int, seed: int = 2025, solver: str | None = None,
        blas_threads: int | None = None) -> np.ndarray:
    """Principal component scores (N x n_components, float32), centring implicitly (ARPACK keeps sparse input sparse).

    `solver` (one of `PCA_SOLVERS`) defaults to the cheapest for the shape (`pca_solver`); signs follow
    scikit-learn's rule, so a seed gives the same scores on every run. `blas_threads` overrides the BLAS thread
    count chosen below (benchmarks/bench_pca.py).

    The covariance route takes sparse input dense when the copy stays under `DENSE_COVARIANCE_BYTES`: the
    features x features product is then one BLAS call instead of scipy's sparse-times-sparse product (the HLN
    simulation's RNA, 2,500 x 1,000 at 33 % non-zero: 0.45-0.50 s against 1.3-1.6 s for the whole PCA, the same
    scores to 1e-8).

    ARPACK, and a covariance route of less than `ONE_THREAD_COVARIANCE` (N p^2 + 5 p^3, about a second on one
    core), run with one BLAS thread: ARPACK's work is its sparse products (single-threaded C) and BLAS calls on
    n x ncv blocks, a small covariance too little work for a second thread to pay for its waking and spinning, and
    on a busy machine a second thread that has to wait for a core costs far more than it saves (2,500 x 1,000, 99
    components, at load 2.9: 0.4-0.6 s on one thread, 2.4-4.1 s on two). ARPACK on one thread gives the same
    scores, byte for byte, in 2.4-2.5 CPU s instead of 3.8-4.4 (benchmarks/results/run.md). Larger covariances
    and the dense SVD keep the thread pool.
    """
    from sklearn.decomposition import PCA

    n, p = matrix.shape
    n_components = int(min(n_components, n, p))
    solver = solver or pca_solver(n, p, n_components)
    if solver not in PCA_SOLVERS:
        raise ValueError(f"PCA solver {solver!r} is not one of {PCA_SOLVERS}")
    if blas_threads is not None and (not isinstance(blas_threads, int) or blas_threads < 1):
        raise ValueError(f"blas_threads must be an integer >= 1, got {blas_threads!r}")
    if sp.issparse(matrix) and (solver == "full" or (solver == "covariance_eigh"
                                                     and n * p * 8 <= DENSE_COVARIANCE_BYTES)):
        matrix = matrix.toarray()
    if blas_threads is None and (solver == "arpack" or (solver == "covariance_eigh"
                                                        and covariance_cost(n, p) < ONE_THREAD_COVARIANCE)):
        blas_threads = 1
    with (threadpool_limits(limits=blas_threads, user_api="blas") if blas_threads is not None
          else contextlib.nullcontext()):
        scores = PCA(n_components=n_components, svd_solver=solver, random_state=seed).fit_transform(matrix)
    return np.ascontiguousarray(scores, dtype=np.float32)


def tfidf(counts) -> sp.csr_matrix:
    """Term frequency (counts / spot total) times inverse document frequency (N / peak total)."""
    csr = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    n = csr.shape[0]
    spot_total = np.asarray(csr.sum(axis=1)).ravel()
    peak_total = np.asarray(csr.sum(axis=0)).ravel()
    rows = np.repeat(np.arange(n), np.diff(csr.indptr))
    # entries exist only where both totals are positive (non-negative counts)
    csr.data = csr.data / spot_total[rows] * (n / peak_total[csr.indices])
    return csr


def lsi(counts, n_components: int = 51, seed: int = 2025, drop_first: bool = True) -> np.ndarray:
    """Latent semantic indexing, Seurat v3 style, returning n_components - 1 columns when `drop_first`.

    TF-IDF, L1-normalise each spot, log1p(x * 1e4), randomised truncated SVD (left singular vectors), standardise
    each spot across components (mean 0, sd 1 with ddof 1), then drop component 1 (it tracks sequencing depth).
    """
    from sklearn.utils.extmath import randomized_svd

    x = tfidf(counts)
    row_l1 = np.asarray(abs(x).sum(axis=1)).ravel()
    factor = np.divide(1.0, row_l1, out=np.zeros_like(row_l1), where=row_l1 > 0)
    x = sp.csr_matrix(sp.diags(factor) @ x)
    x.data = np.log1p(x.data * 1e4)
    n_components = int(min(n_components, min(x.shape) - 1)) if min(x.shape) > 1 else 1
    u, _, _ = randomized_svd(x, n_components, random_state=seed)
    u = u - u.mean(axis=1, keepdims=True)
    sd = u.std(axis=1, ddof=1, keepdims=True) if n_components > 1 else np.ones((u.shape[0], 1))
    u = np.divide(u, sd, out=np.zeros_like(u), where=sd > 0)
    if drop_first:
        u = u[:, 1:]
    return np.ascontiguousarray(u, dtype=np.float32)
