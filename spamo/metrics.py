"""Scores of a clustering, with the reference's names, and the text format the reference prints them in.

Against a ground truth (`score_against_truth`): Jaccard and F-measure by pair counting, mutual information, NMI, AMI,
V-measure, homogeneity, completeness, ARI, FMI, and "Avg." = mean(NMI, AMI, ARI, F_measure, Jaccard)
(docs/method.md section 6). Pair counts come from the contingency table (a sum over its cells), never from the N x N pairs.

Without a ground truth (`label_free_scores`), on the PCA-20 embedding (the embedding the clustering saw):

- ``ASW``: silhouette of the embedding against the *predicted* clusters, raw, in [-1, 1] (Euclidean distance).
  Above `ASW_MAX_SPOTS` spots it is computed on a seeded random subsample of that many spots (the silhouette is
  O(n^2) in time; the subsample keeps it O(ASW_MAX_SPOTS^2) with memory chunked by scikit-learn).
- ``ASW_gt`` (only when a truth is given): silhouette of the embedding against the *true* labels, rescaled to
  (s + 1) / 2 in [0, 1] (the scib convention).
- ``Spatial coherence``: share of the edges of the spatial 6-nearest-neighbour graph (each spot to its 6 nearest
  other spots; undirected, each edge counted once) whose two ends carry the same predicted label. 1 means every spot
  agrees with all its neighbours; a random labelling with K equal clusters scores about 1 / K.

Text format (`format_metrics_text`): exactly the file the reference's `cal_matrics.py` writes, so that results can be
compared line by line with the authors' `results/*/metrics.txt`: one line per ground-truth score, in the order of
`TEXT_ORDER` (Jaccard, F_measure, Mutual Information, NMI, AMI, V-measure, Homogeneity, Completeness, ARI, FMI, Avg.),
each ``Our     <label>: <value>`` with five spaces after "Our", six decimals, and the reference's labels (`jaccard` in
lower case, `(ARI)` and `(FMI)` in parentheses; see `REFERENCE_TEXT_LABELS`), e.g. ``Our     (ARI): 0.995721``.
Label-free scores (ASW, ...) are not part of that file; they are in metrics.json. `parse_metrics_text` reads this
layout and the older ``Name: value`` one, and returns `TEXT_ORDER` names either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn import metrics as skm
from sklearn.metrics.cluster import contingency_matrix

from spamo.errors import SpamoInputError

TEXT_ORDER = (
    "Jaccard",
    "F_measure",
    "Mutual Information",
    "NMI",
    "AMI",
    "V-measure",
    "Homogeneity",
    "Completeness",
    "ARI",
    "FMI",
    "Avg.",
)
AVG_OF = ("NMI", "AMI", "ARI", "F_measure", "Jaccard")

# The one score table: (machine name, reference label, needs a ground truth). Results tables, Ray Tune metrics and
# metrics.json use the machine names; metrics.txt uses the reference labels. Search and evaluation import this table,
# so a score added here reaches every table (see `machine_named` / `reference_named`).
SCORES: tuple[tuple[str, str, bool], ...] = (
    ("jaccard", "Jaccard", True),
    ("f_measure", "F_measure", True),
    ("mutual_information", "Mutual Information", True),
    ("nmi", "NMI", True),
    ("ami", "AMI", True),
    ("v_measure", "V-measure", True),
    ("homogeneity", "Homogeneity", True),
    ("completeness", "Completeness", True),
    ("ari", "ARI", True),
    ("fmi", "FMI", True),
    ("avg", "Avg.", True),
    ("asw", "ASW", False),
    ("asw_gt", "ASW_gt", True),
    ("spatial_coherence", "Spatial coherence", False),
)
SCORE_NAMES: tuple[str, ...] = tuple(name for name, _, _ in SCORES)
TRUTH_SCORES: tuple[str, ...] = tuple(name for name, _, truth in SCORES if truth)
# The label-free selection criteria of spamo.selection are scored per search trial (they need the run's
# intermediate reports), not by every run, so they are search metrics and trials.parquet columns but not columns of
# the run/evaluation score tables.
SEARCH_CRITERIA: tuple[str, ...] = ("consistency", "stability", "composite")
LABEL_FREE_SCORES: tuple[str, ...] = tuple(name for name, _, truth in SCORES if not truth) + SEARCH_CRITERIA
_MACHINE = {label: name for name, label, _ in SCORES}
_LABEL = {name: label for name, label, _ in SCORES}
ASW_MAX_SPOTS = 10_000
SPATIAL_COHERENCE_K = 6


# ------------------------------------------------------------------------------------------------ shared helper


def pca_embedding(embedding: np.ndarray, n_pcs: int = 20, seed: int = 0) -> np.ndarray:
    """Project onto the first `n_pcs` principal components, deterministically (same input, same output).

    Small feature counts (<= 512) use the eigendecomposition of the d x d covariance (exact, O(N d^2), no
    randomness); larger ones a seeded randomised SVD. Signs are fixed so that each component's largest-magnitude
    loading is positive, so the result does not depend on the solver's sign choice. With fewer features than
    `n_pcs` every component is kept (a rotation of the centred data).
    """
    data = np.asarray(embedding, dtype=np.float64)
    if data.ndim != 2 or data.shape[0] < 2:
        raise SpamoInputError("embedding", f"need a 2-D array with at least 2 rows, got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise SpamoInputError("embedding", "contains NaN or infinite values")
    centred = data - data.mean(axis=0)
    n_comp = max(1, min(n_pcs, data.shape[0] - 1, data.shape[1]))
    if data.shape[1] <= 512:
        cov = centred.T @ centred
        values, vectors = np.linalg.eigh(cov)
        components = vectors[:, np.argsort(values)[::-1][:n_comp]]
    else:
        from sklearn.utils.extmath import randomized_svd

        _, _, vt = randomized_svd(centred, n_comp, random_state=seed)
        components = vt.T
    biggest = np.argmax(np.abs(components), axis=0)
    components = components * np.sign(components[biggest, np.arange(n_comp)])
    return centred @ components


# ------------------------------------------------------------------------------------------------ against truth


def _as_labels(values, name: str) -> np.ndarray:
    labels = np.asarray(values)
    if labels.ndim != 1:
        raise SpamoInputError(name, f"labels must be one value per spot, got shape {labels.shape}")
    return labels


def pair_counts(truth, pred) -> tuple[int, int, int]:
    """(TP, FP, FN) over unordered spot pairs, from the contingency table (O(cells), never O(N^2)).

    TP: pairs together in both; FP: together in `pred` only; FN: together in `truth` only.
    """
    table = contingency_matrix(truth, pred, sparse=True).tocsr().astype(np.int64)

    def pairs(counts: np.ndarray) -> int:
        counts = np.asarray(counts, dtype=np.int64).ravel()
        return int(np.sum(counts * (counts - 1) // 2))

    both = pairs(table.data)
    in_truth = pairs(table.sum(axis=1))
    in_pred = pairs(table.sum(axis=0))
    return both, in_pred - both, in_truth - both


def pair_jaccard(truth, pred) -> float:
    tp, fp, fn = pair_counts(truth, pred)
    total = tp + fp + fn
    return tp / total if total else 1.0


def pair_f_measure(truth, pred) -> float:
    """Harmonic mean of pair precision TP/(TP+FP) and pair recall TP/(TP+FN)."""
    tp, fp, fn = pair_counts(truth, pred)
    total = 2 * tp + fp + fn
    return 2 * tp / total if total else 1.0


def score_against_truth(truth, pred) -> dict[str, float]:
    """Every ground-truth score, keyed by the reference's names, in `TEXT_ORDER`."""
    truth = _as_labels(truth, "truth")
    pred = _as_labels(pred, "pred")
    if truth.shape != pred.shape:
        raise SpamoInputError("pred", f"{pred.size} labels but the truth has {truth.size}")
    homogeneity, completeness, v_measure = skm.homogeneity_completeness_v_measure(truth, pred)
    scores = {
        "Jaccard": pair_jaccard(truth, pred),
        "F_measure": pair_f_measure(truth, pred),
        "Mutual Information": skm.mutual_info_score(truth, pred),
        "NMI": skm.normalized_mutual_info_score(truth, pred),
        "AMI": skm.adjusted_mutual_info_score(truth, pred),
        "V-measure": v_measure,
        "Homogeneity": homogeneity,
        "Completeness": completeness,
        "ARI": skm.adjusted_rand_score(truth, pred),
        "FMI": skm.fowlkes_mallows_score(truth, pred),
    }
    scores["Avg."] = float(np.mean([scores[name] for name in AVG_OF]))
    return {name: float(value) for name, value in scores.items()}


# ------------------------------------------------------------------------------------------------ label-free


def _silhouette(points: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """Silhouette on at most ASW_MAX_SPOTS spots (seeded subsample); NaN when it is undefined (one cluster)."""
    if points.shape[0] > ASW_MAX_SPOTS:
        keep = np.random.default_rng(seed).choice(points.shape[0], ASW_MAX_SPOTS, replace=False)
        points, labels = points[keep], labels[keep]
    n_labels = np.unique(labels).size
    if not (2 <= n_labels <= points.shape[0] - 1):
        return float("nan")
    return float(skm.silhouette_score(points, labels, metric="euclidean"))


def spatial_edges(coords: np.ndarray, k: int = SPATIAL_COHERENCE_K) -> tuple[np.ndarray, np.ndarray]:
    """Undirected edges (i < j) of the spatial k-nearest-neighbour graph, through a KD-tree (O(N k))."""
    from scipy.spatial import cKDTree

    coords = np.asarray(coords, dtype=np.float64)
    k = min(k, coords.shape[0] - 1)
    _, neighbours = cKDTree(coords).query(coords, k=k + 1)
    rows = np.repeat(np.arange(coords.shape[0]), k)
    cols = neighbours[:, 1:].ravel()
    graph = sparse.coo_matrix((np.ones(rows.size), (np.minimum(rows, cols), np.maximum(rows, cols))),
                              shape=(coords.shape[0],) * 2).tocsr()
    upper = sparse.triu(graph, k=1).tocoo()
    return upper.row, upper.col


def spatial_coherence(pred, coords, k: int = SPATIAL_COHERENCE_K) -> float:
    """Share of spatial kNN edges whose two ends share a predicted label (see module docstring)."""
    return _share_agreeing(np.asarray(pred), spatial_edges(coords, k))


def _share_agreeing(pred: np.ndarray, edges: tuple[np.ndarray, np.ndarray]) -> float:
    rows, cols = edges
    return float(np.mean(pred[rows] == pred[cols])) if rows.size else float("nan")


@dataclass(frozen=True)
class LabelFreeParts:
    """What the label-free scores compute without the predicted labels (`label_free_parts`): the PCA-`n_pcs`
    embedding, ASW_gt (with a truth) and the spatial kNN edges (with coords). `spamo.pipeline` computes them while
    R clusters, on the core R leaves idle; `label_free_scores` computes them itself when not given."""

    points: np.ndarray
    asw_truth: float | None = None
    edges: tuple[np.ndarray, np.ndarray] | None = None


def label_free_parts(embedding, coords=None, truth=None, seed: int = 0, n_pcs: int = 20) -> LabelFreeParts:
    return _parts_of(pca_embedding(embedding, n_pcs=n_pcs, seed=seed), coords, truth, seed)


def _parts_of(points: np.ndarray, coords, truth, seed: int) -> LabelFreeParts:
    asw_truth = None
    if truth is not None:
        truth = _as_labels(truth, "truth")
        if truth.size != points.shape[0]:
            raise SpamoInputError("truth", f"{truth.size} labels but the embedding has {points.shape[0]} rows")
        asw_truth = (_silhouette(points, truth, seed) + 1.0) / 2.0
    return LabelFreeParts(points, asw_truth, None if coords is None else spatial_edges(coords))


def label_free_scores(embedding, pred, coords=None, truth=None, seed: int = 0, n_pcs: int = 20,
                      parts: LabelFreeParts | None = None) -> dict[str, float]:
    """ASW (and ASW_gt with a truth) on the PCA-`n_pcs` embedding, plus spatial coherence when coords are given;
    `parts`: those of `label_free_parts` for the same arguments, computed beforehand."""
    pred = _as_labels(pred, "pred")
    points = parts.points if parts is not None else pca_embedding(embedding, n_pcs=n_pcs, seed=seed)
    if points.shape[0] != pred.size:
        raise SpamoInputError("pred", f"{pred.size} labels but the embedding has {points.shape[0]} rows")
    parts = parts or _parts_of(points, coords, truth, seed)
    scores = {"ASW": _silhouette(parts.points, pred, seed)}
    if parts.asw_truth is not None:
        scores["ASW_gt"] = parts.asw_truth
    if parts.edges is not None:
        scores["Spatial coherence"] = _share_agreeing(pred, parts.edges)
    return scores


# ------------------------------------------------------------------------------------------------ score names


def machine_named(scores: dict[str, float]) -> dict[str, float]:
    """Scores keyed by the reference's labels -> keyed by machine names (`SCORES`), values as floats.

    A label missing from the table is refused loudly (a KeyError), so a new score cannot slip past the table.
    """
    return {_MACHINE[label]: float(value) for label, value in scores.items()}


def reference_named(scores: dict[str, float]) -> dict[str, float]:
    """Machine-named scores -> the reference's labels, ground-truth scores in the reference's printout order first
    (what metrics.txt holds); names outside the table are kept as they are."""
    ordered = [name for name in SCORE_NAMES if name in scores] + [n for n in scores if n not in _LABEL]
    return {_LABEL.get(name, name): float(scores[name]) for name in ordered}


def clustering_scores(labels, embedding, coords=None, truth=None, seed: int = 0,
                      parts: LabelFreeParts | None = None) -> dict[str, float]:
    """Every score of one clustering, machine-named: truth scores (with a truth) then the label-free ones
    (`parts`: `label_free_parts(embedding, coords, truth, seed)` computed beforehand)."""
    scores: dict[str, float] = {}
    if truth is not None:
        scores.update(score_against_truth(truth, labels))
    scores.update(label_free_scores(embedding, labels, coords=coords, truth=truth, seed=seed, parts=parts))
    return machine_named(scores)


# ------------------------------------------------------------------------------------------------ text format


# TEXT_ORDER name -> the label the reference's cal_matrics.py writes for it
REFERENCE_TEXT_LABELS = {
    "Jaccard": "jaccard",
    "F_measure": "F_measure",
    "Mutual Information": "Mutual Information",
    "NMI": "NMI",
    "AMI": "AMI",
    "V-measure": "V-measure",
    "Homogeneity": "Homogeneity",
    "Completeness": "Completeness",
    "ARI": "(ARI)",
    "FMI": "(FMI)",
    "Avg.": "Avg.",
}
REFERENCE_TEXT_PREFIX = "Our     "


def format_metrics_text(scores: dict[str, float]) -> str:
    """The reference's metrics.txt for the ground-truth scores among `scores` (keyed by `TEXT_ORDER` names), in
    `TEXT_ORDER`, six decimals (see module docstring); other scores are left out."""
    return "".join(f"{REFERENCE_TEXT_PREFIX}{REFERENCE_TEXT_LABELS[name]}: {float(scores[name]):.6f}\n"
                   for name in TEXT_ORDER if name in scores)


_FROM_REFERENCE_LABEL = {label.lower(): name for name, label in REFERENCE_TEXT_LABELS.items()} | {
    name.lower(): name for name in TEXT_ORDER}


def parse_metrics_text(text: str, where: str = "metrics") -> dict[str, float]:
    """Read a metrics.txt in the reference's layout (``Our     (ARI): 0.995721``) or the older ``ARI: 0.995721``
    one (blank lines ignored); keys are `TEXT_ORDER` names where the label is one, else the label as written."""
    scores: dict[str, float] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(":")
        label = name.strip()
        if label.startswith("Our "):
            label = label[4:].strip()
        try:
            if not sep or not label:
                raise ValueError
            scores[_FROM_REFERENCE_LABEL.get(label.lower(), label)] = float(value)
        except ValueError:
            raise SpamoInputError(where, f"line {number} is not 'Name: value': {line.strip()[:60]!r}") from None
    return scores


# ------------------------------------------------------------------------------------------------ label files


def read_label_file(path: str | Path) -> np.ndarray:
    """One integer per line (trailing blank lines allowed); refuses a missing file or any other line."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise SpamoInputError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpamoInputError(path, f"cannot be read ({exc.__class__.__name__})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise SpamoInputError(path, "no labels (empty file)")
    labels = np.empty(len(lines), dtype=np.int64)
    for number, line in enumerate(lines, start=1):
        try:
            labels[number - 1] = int(line.strip())
        except ValueError:
            raise SpamoInputError(path, f"line {number} is not an integer: {line.strip()[:40]!r}") from None
    return labels


def score_label_files(truth_path: str | Path, pred_path: str | Path) -> dict[str, float]:
    """Read both label files, check they have the same length, and score the prediction against the truth."""
    truth = read_label_file(truth_path)
    pred = read_label_file(pred_path)
    if truth.size != pred.size:
        raise SpamoInputError(pred_path, f"{pred.size} labels but the truth file {truth_path} has {truth.size}")
    return score_against_truth(truth, pred)
