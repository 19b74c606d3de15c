"""Label-free selection criteria: scores of a trained embedding and its domains that need no annotation.

A user tuning on their own tissue has no ground truth, so `spamo tune` must pick a configuration by a score that
tracks the truth without seeing it. Every criterion here is linear in the spots (no N x N matrix, no all-pairs
silhouette on the full data) and invariant to a renaming of the domain labels. The benchmark
`benchmarks/bench_selection.py` measures how well each one tracks ARI (`benchmarks/results/selection.md`), and the
default `--metric` without a ground truth is the criterion that table found best (`DEFAULT_LABEL_FREE`).

Criteria (machine names, as columns of trials.parquet and values of `--metric`):

- ``consistency`` (cross-modal neighbourhood consistency): for each query spot, the share of its k = 10 nearest
  neighbours in the fused embedding that are also among its k nearest neighbours in one modality's own features
  (the preprocessed features the model was given), averaged over the query spots and then over the modalities.
  Distance: Euclidean in both spaces (the fused embedding is L2-normalised, so there it ranks like cosine). The
  query spots are all spots up to `CONSISTENCY_QUERIES`, else a seeded sample of that many; their neighbours are
  searched among *all* spots, so the cost is O(queries x N x d): linear in N. 1 = the embedding keeps every
  modality's neighbourhoods; an embedding unrelated to a modality scores about k / (N - 1).
- ``stability``: ARI between the k-means domains (PCA-20, seeded) of the embedding at the last intermediate report
  and of the final embedding: a configuration whose domains still move at the end of training is not settled.
  (Agreement between two trainings that differ only in seed would cost a second training per trial; `stability`
  takes that as two labellings, but no trial option runs the second training yet.)
- ``asw`` and ``spatial_coherence``: see `spamo.metrics` (silhouette on <= 10,000 sampled spots; share of spatial
  6-NN edges inside one domain).
- ``composite`` = (consistency + spatial_coherence + stability) / 3, each already in [0, 1] (ARI can dip just below
  0; it is clipped at 0 here). Defined only in `composite`.

Measured (benchmarks/results/selection.md, 8 graded simulations x 24 trials): median Spearman with ARI
spatial_coherence +0.83, asw +0.68, composite +0.39, stability +0.20, consistency +0.11. The evidence does not
support the composite (no better than its best part), so the default is spatial_coherence.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import NearestNeighbors

from spamo.clustering import cluster
from spamo.errors import SpamoInputError
from spamo.io import atomic_path
from spamo.metrics import SEARCH_CRITERIA, label_free_scores, spatial_coherence

CONSISTENCY_K = 10
CONSISTENCY_QUERIES = 2000
STABILITY_PCS = 20

# Every label-free criterion a trial reports (machine names), beside asw and spatial_coherence of spamo.metrics.
CRITERIA = SEARCH_CRITERIA  # defined once, in spamo.metrics
# What `spamo tune` optimises without a ground truth, and the one line it prints to say why (from the measured
# table in benchmarks/results/selection.md; updated when the benchmark is re-run).
DEFAULT_LABEL_FREE = "spatial_coherence"
DEFAULT_REASON = ("spatial_coherence: best median Spearman with ARI in the selection benchmark (+0.83, range "
                  "+0.32..+0.91, 8 datasets x 24 trials; asw +0.68, consistency +0.11), median regret 0.058 "
                  "(benchmarks/results/selection.md)")


# ------------------------------------------------------------------------------------------------ neighbours


def _query_spots(n_spots: int, max_queries: int, seed: int) -> np.ndarray:
    if n_spots <= max_queries:
        return np.arange(n_spots)
    return np.sort(np.random.default_rng(seed).choice(n_spots, max_queries, replace=False))


def _neighbours(points: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The k nearest other spots (Euclidean) of each query spot among all spots: |queries| x k indices.

    scikit-learn's brute-force search works through the |queries| x N distances in blocks of its working memory,
    so nothing N x N exists.
    """
    points = np.ascontiguousarray(points, dtype=np.float32)
    search = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(points)
    found = search.kneighbors(points[queries], return_distance=False)
    out = np.empty((queries.size, k), dtype=np.int64)
    for row, (query, hits) in enumerate(zip(queries, found)):
        others = hits[hits != query]
        out[row] = others[:k]
    return out


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of |a_row intersect b_row| / k (rows are sets of k distinct indices)."""
    k = a.shape[1]
    hits = (a[:, :, None] == b[:, None, :]).any(axis=2).sum(axis=1)
    return float(np.mean(hits / k))


def consistency_per_modality(fused, features, k: int = CONSISTENCY_K, max_queries: int = CONSISTENCY_QUERIES,
                             seed: int = 0) -> list[float]:
    """Neighbourhood overlap between the fused embedding and each modality's features (see module docstring)."""
    fused = np.asarray(fused)
    n = fused.shape[0]
    if fused.ndim != 2 or n < 3:
        raise SpamoInputError("embedding", f"need a 2-D embedding with at least 3 spots, got shape {fused.shape}")
    k = max(1, min(k, n - 2))
    queries = _query_spots(n, max_queries, seed)
    in_fused = _neighbours(fused, queries, k)
    scores = []
    for index, matrix in enumerate(features):
        matrix = np.asarray(matrix)
        if matrix.shape[0] != n:
            raise SpamoInputError("features", f"modality {index} has {matrix.shape[0]} spots, the embedding {n}")
        scores.append(_overlap(in_fused, _neighbours(matrix, queries, k)))
    return scores


def consistency(fused, features, k: int = CONSISTENCY_K, max_queries: int = CONSISTENCY_QUERIES,
                seed: int = 0) -> float:
    """Cross-modal consistency: `consistency_per_modality` averaged over the modalities."""
    return float(np.mean(consistency_per_modality(fused, features, k, max_queries, seed)))


# ------------------------------------------------------------------------------------------------ agreement


def stability(labels_a, labels_b) -> float:
    """ARI between two labellings of the same spots (NaN when one is missing): 1 = the same partition."""
    if labels_a is None or labels_b is None:
        return float("nan")
    a, b = np.asarray(labels_a), np.asarray(labels_b)
    if a.shape != b.shape:
        raise SpamoInputError("labels", f"two labellings of different sizes ({a.size} and {b.size})")
    return float(adjusted_rand_score(a, b))


def kmeans_domains(embedding, n_clusters: int, seed: int, n_pcs: int = STABILITY_PCS) -> np.ndarray:
    """The cheap clustering the stability criterion compares (k-means on PCA, seeded)."""

    return np.asarray(cluster(embedding, n_clusters, method="kmeans", n_pcs=n_pcs, seed=seed))


def composite(consistency_value: float, spatial_coherence_value: float, stability_value: float) -> float:
    """(consistency + spatial_coherence + max(stability, 0)) / 3; NaN when any part is NaN."""
    parts = (consistency_value, spatial_coherence_value, max(stability_value, 0.0)
             if not math.isnan(stability_value) else float("nan"))
    return float(np.mean(parts))


def criteria(fused, features, spatial_coherence_value: float, previous_kmeans=None, final_kmeans=None,
             seed: int = 0) -> dict[str, float]:
    """consistency, stability and composite of one embedding (asw and spatial coherence come from metrics)."""
    values = {"consistency": consistency(fused, features, seed=seed),
              "stability": stability(previous_kmeans, final_kmeans)}
    values["composite"] = composite(values["consistency"], spatial_coherence_value, values["stability"])
    return values


# ------------------------------------------------------------------------------------------------ one trial


FOUND_FILE = "found.npz"


class TrialFindings:
    """What a search trial keeps between its reports to score itself, and what it leaves in its folder.

    `probe` adds the criteria to an intermediate report (stability against the previous report's k-means domains;
    NaN at the first report, which an ASHA rung ignores); `final` adds them to the last report, comparing the last
    intermediate k-means domains with k-means of the final embedding; `save` writes `found.npz`: the final domains,
    the fused embedding as float16, both k-means labellings and the kept spots' indices, so a criterion can be
    recomputed later without retraining (`spamo tune --rescore`).
    """

    def __init__(self, n_clusters: int, seed: int):
        self.n_clusters, self.seed = n_clusters, seed
        self.previous: np.ndarray | None = None
        self.final_kmeans: np.ndarray | None = None
        self.last_probe: np.ndarray | None = None

    def probe(self, features, embedding, kmeans_labels, spatial_coherence_value: float) -> dict[str, float]:
        values = criteria(embedding, features, spatial_coherence_value, self.previous, kmeans_labels, self.seed)
        self.previous = self.last_probe = np.asarray(kmeans_labels)
        return values

    def final(self, features, fused, spatial_coherence_value: float) -> dict[str, float]:
        self.final_kmeans = kmeans_domains(fused, self.n_clusters, self.seed)
        return criteria(fused, features, spatial_coherence_value, self.last_probe, self.final_kmeans, self.seed)

    def save(self, folder, labels, fused, kept_index=None) -> None:
        from pathlib import Path


        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        empty = np.zeros(0, dtype=np.int32)
        with atomic_path(folder / FOUND_FILE) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(
                    fh, labels=np.asarray(labels, dtype=np.int32), fused=np.asarray(fused, dtype=np.float16),
                    previous_kmeans=empty if self.last_probe is None else self.last_probe.astype(np.int32),
                    final_kmeans=empty if self.final_kmeans is None else self.final_kmeans.astype(np.int32),
                    kept_index=empty if kept_index is None else np.asarray(kept_index, dtype=np.int64))


def rescore_found(path, features, coords, seed: int = 0) -> dict[str, float]:
    """Every label-free criterion of a finished trial, from its `found.npz` and the (re-prepared) data."""

    with np.load(path) as found:
        labels = found["labels"]
        fused = found["fused"].astype(np.float32)
        previous = found["previous_kmeans"] if found["previous_kmeans"].size else None
        final_kmeans = found["final_kmeans"] if found["final_kmeans"].size else None
    if fused.shape[0] != np.asarray(coords).shape[0]:
        raise SpamoInputError(path, f"{fused.shape[0]} spots but the data has {np.asarray(coords).shape[0]}")
    coherence = spatial_coherence(labels, coords)
    values = {"asw": label_free_scores(fused, labels, seed=seed)["ASW"], "spatial_coherence": coherence}
    values.update(criteria(fused, features, coherence, previous, final_kmeans, seed))
    return values
