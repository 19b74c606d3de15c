"""Split-and-merge of Gaussian components under the EEE model: an estimate of K and the clustering at every K visited.

The reference's `init_k` flag points to an over-cluster-then-merge scheme of the DeepDPM kind (docs/method.md
section 6). spamo scores every move by the classification BIC of the EEE mixture, computed from sufficient statistics
so that a candidate costs O(K d^2), and refines the accepted clustering by classification EM. `spamo evaluate`
tabulates the whole path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from spamo.clustering.base import ClusterRequest, check_k, one_thread, register_backend, relabel_by_appearance
from spamo.clustering.criterion import EEECriterion, PartitionStats
from spamo.clustering.mixture import gmm_labels
from spamo.errors import SpamoInputError
from spamo.metrics import pca_embedding, spatial_edges

log = logging.getLogger(__name__)


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


def split_merge(embedding, n_clusters: int | None, init_k: int, coords=None, *, n_pcs: int = 20,
                seed: int = 2020, min_size: int = 5, max_moves: int | None = None) -> SplitMergeResult:
    """Over- or under-cluster, then split and merge Gaussian components while the criterion improves.

    Criterion: the classification BIC of the EEE mixture (`EEECriterion`), on the PCA-`n_pcs` projection.

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
        check_k(n_clusters, n)
    edges = spatial_edges(np.asarray(coords, dtype=np.float64)) if coords is not None else None
    criterion = EEECriterion(points)
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
    stats = PartitionStats.of(points, labels)
    value = criterion(stats.counts, stats.scatters.sum(axis=0))
    result.steps.append(SplitMergeStep(int(labels.max()) + 1, labels.copy(), float(value), action, pair))
    log.info("split-merge: %s -> K=%d, criterion %.1f", action, int(labels.max()) + 1, value)


def _candidate_moves(points, labels, criterion, edges, min_size: int, only: str | None = None) -> list[_Move]:
    """Every split and merge on offer, best first by the criterion's change before refinement."""
    stats = PartitionStats.of(points, labels)
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
    stats = PartitionStats.of(points, labels)
    return float(criterion(stats.counts, stats.scatters.sum(axis=0)))


def _merge_moves(labels, stats: PartitionStats, total, current, criterion, edges) -> list[_Move]:
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


def _split_moves(points, labels, stats: PartitionStats, total, current, criterion, min_size: int) -> list[_Move]:
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


def _cem(points: np.ndarray, labels: np.ndarray, criterion: EEECriterion, iterations: int = 30) -> np.ndarray:
    """Classification EM under the EEE model: reassign to the highest posterior, re-estimate, until stable."""
    labels = relabel_by_appearance(labels)
    eye = np.eye(points.shape[1])
    for _ in range(iterations):
        stats = PartitionStats.of(points, labels)
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
