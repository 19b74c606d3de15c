"""Per-data-type preprocessing into model-ready features (docs/method.md section 1): `RECIPES`, one
recipe per data type, which the registry `spamo.datatypes` takes its types' recipes from.

A recipe maps each modality (by its conventional name, or its position) to a `ModalityRecipe`: feature and spot
filters on raw counts, then a chain of small steps (`normalize_total`, `keep_hvg`, `log1p`, `scale`, `clr`, `pca`,
`lsi`) turning the kept counts into `feat`, a dense float32 N x f_m matrix. Spot filters of all modalities are
intersected, so every modality keeps the same spots in the same order.

Each step is also a plain function on matrices (`clr(counts)`, `lsi(counts, n_components, seed)`, ...).
Matrices stay sparse until a step needs them dense (scaling, PCA input of small feature sets).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp

from spamo.data import MultiOmicsData, PreparedData, input_matrix
from spamo.errors import SpamoInputError
from spamo.modalities import kind_of, names_for

log = logging.getLogger(__name__)

HVG_TOP = 3000
TARGET_SUM = 1e4
SCALE_MAX_VALUE = None  # scanpy's `sc.pp.scale` default: z-score without clipping (the reference calls it so)

# ----------------------------------------------------------------------------------------------------------------
# plain matrix functions


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


def pca(matrix, n_components: int, seed: int = 2025) -> np.ndarray:
    """Principal component scores (N x n_components, float32), centring implicitly so sparse input stays sparse.

    Solver by shape: few features -> exact covariance eigendecomposition; fewer components than half the rank ->
    ARPACK (sparse-friendly, start vector seeded); otherwise an exact dense SVD. Signs follow scikit-learn's rule,
    so a seed gives the same scores on every run.
    """
    from sklearn.decomposition import PCA

    n, p = matrix.shape
    n_components = int(min(n_components, n, p))
    if p <= 500:
        solver = "covariance_eigh"
    elif n_components < min(n, p) // 2:
        solver = "arpack"
    else:
        solver = "full"
        matrix = matrix.toarray() if sp.issparse(matrix) else matrix
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


# ----------------------------------------------------------------------------------------------------------------
# recipe steps: each takes and returns a `ModalityState`


@dataclass
class RecipeContext:
    """What steps may read beyond their own matrix: the ADT feature count and the seed."""

    n_adt: int
    seed: int


@dataclass
class ModalityState:
    counts: object  # raw counts of the kept spots and features (for HVG selection and LSI)
    matrix: object  # the current transformed matrix
    obsm: dict  # the modality's obsm entries, rows restricted to the kept spots
    context: RecipeContext


Step = Callable[[ModalityState], ModalityState]
ComponentCount = Callable[[RecipeContext], int]


def adt_count(offset: int = 0) -> ComponentCount:
    """Component count = number of ADT features + offset (the published rule for 2- and 3-modality data)."""

    def count(context: RecipeContext) -> int:
        return context.n_adt + offset

    count.__doc__ = f"n_ADT {offset:+d}"
    return count


def fixed_count(n: int) -> ComponentCount:
    def count(context: RecipeContext) -> int:
        return n

    return count


def _with_matrix(state: ModalityState, matrix) -> ModalityState:
    return dataclasses.replace(state, matrix=matrix)


def normalize_step(target_sum: float = TARGET_SUM) -> Step:
    return lambda state: _with_matrix(state, normalize_total(state.matrix, target_sum))


def hvg_step(n_top: int = HVG_TOP) -> Step:
    """Keep the highly variable features chosen on raw counts (after normalising totals over all features)."""

    def keep(state: ModalityState) -> ModalityState:
        chosen = highly_variable_features(state.counts, n_top)
        return dataclasses.replace(state, counts=state.counts[:, chosen], matrix=state.matrix[:, chosen])

    return keep


def log1p_step() -> Step:
    return lambda state: _with_matrix(state, log1p(state.matrix))


def clr_step() -> Step:
    return lambda state: _with_matrix(state, clr(state.matrix))


def scale_step(max_value: float | None = SCALE_MAX_VALUE) -> Step:
    """Z-score; before PCA on sparse input without clipping, divide by sd only (PCA centres, same scores)."""

    def standardise(state: ModalityState) -> ModalityState:
        m = state.matrix
        if sp.issparse(m) and max_value is None:
            csr = sp.csr_matrix(m)
            mean = np.asarray(csr.mean(axis=0)).ravel()
            sq_mean = np.asarray(csr.multiply(csr).mean(axis=0)).ravel()
            n = csr.shape[0]
            sd = np.sqrt(np.maximum(sq_mean - mean**2, 0) * n / max(n - 1, 1))
            sd[sd == 0] = 1.0
            return _with_matrix(state, _CentreLater(sp.csr_matrix(csr @ sp.diags(1.0 / sd))))
        return _with_matrix(state, scale(m, max_value))

    return standardise


@dataclass
class _CentreLater:
    """A sparse matrix whose centring is left to the PCA that follows (keeps N x genes sparse)."""

    matrix: sp.csr_matrix


def pca_step(components: ComponentCount) -> Step:
    def project(state: ModalityState) -> ModalityState:
        n = components(state.context)
        if n < 1:
            raise ValueError(f"PCA needs at least one component, the recipe asks for {n}")
        m = state.matrix.matrix if isinstance(state.matrix, _CentreLater) else state.matrix
        return _with_matrix(state, pca(m, n, seed=state.context.seed))

    return project


def lsi_step(components: ComponentCount, precomputed: str | None = "X_lsi") -> Step:
    """LSI over all peaks with `components` components, the first dropped; `obsm[precomputed]` is used if present."""

    def embed(state: ModalityState) -> ModalityState:
        if precomputed and precomputed in state.obsm:
            return _with_matrix(state, np.ascontiguousarray(state.obsm[precomputed], dtype=np.float32))
        return _with_matrix(state, lsi(state.counts, components(state.context), seed=state.context.seed))

    return embed


# ----------------------------------------------------------------------------------------------------------------
# recipes


@dataclass(frozen=True)
class ModalityRecipe:
    """Filters (on raw counts, all spots) and steps turning one modality into `feat`."""

    steps: tuple[Step, ...]
    min_spots_per_feature: int = 0  # drop features positive in fewer spots
    min_features_per_spot: int = 0  # drop spots with fewer positive features (applied to every modality)


@dataclass(frozen=True)
class Recipe:
    """The preprocessing of one data type: a `ModalityRecipe` per conventional modality name, in order."""

    modalities: dict = field(default_factory=dict)  # name -> ModalityRecipe, RNA first
    adt_modality: str | None = "ADT"  # the modality whose feature count is n_ADT (else the second modality)

    def __call__(self, data: MultiOmicsData, seed: int = 2025) -> PreparedData:
        return run_recipe(self, data, seed)

    def recipe_for(self, name: str, position: int) -> ModalityRecipe:
        """Match by name or one of its kind's aliases (case-insensitive, `spamo.modalities`), else by position."""
        by_name = {k.lower(): v for k, v in self.modalities.items()}
        for alias in names_for(name):
            if alias in by_name:
                return by_name[alias]
        ordered = list(self.modalities.values())
        if position < len(ordered):
            return ordered[position]
        raise SpamoInputError(name, f"no preprocessing for a modality number {position + 1} in this data type")


def run_recipe(recipe: Recipe, data: MultiOmicsData, seed: int) -> PreparedData:
    """Filter features and spots, then run each modality's steps on the spots every modality kept."""
    names = data.modality_names
    recipes = [recipe.recipe_for(name, i) for i, name in enumerate(names)]
    counts, kept_spots = [], np.ones(data.n_spots, dtype=bool)
    for name, mod_recipe in zip(names, recipes):
        where = _where(data, name)
        raw = raw_counts(data.modalities[name], getattr(data, "layer", None))
        feature_mask = spots_per_feature(raw) >= mod_recipe.min_spots_per_feature
        if not feature_mask.any():
            raise SpamoInputError(where, f"zero features after filtering (features in fewer than "
                                  f"{mod_recipe.min_spots_per_feature} spots dropped, of {raw.shape[1]})")
        raw = raw[:, feature_mask] if not feature_mask.all() else raw
        if mod_recipe.min_features_per_spot:
            spot_mask = features_per_spot(raw) >= mod_recipe.min_features_per_spot
            if not spot_mask.any():
                raise SpamoInputError(where, f"zero spots after filtering (spots with fewer than "
                                      f"{mod_recipe.min_features_per_spot} features dropped)")
            kept_spots &= spot_mask
        counts.append(raw)
    if not kept_spots.any():
        raise SpamoInputError(data.name, "zero spots after filtering (no spot passes every modality's filter)")
    kept_index = np.flatnonzero(kept_spots)
    counts = [c[kept_index] if len(kept_index) < data.n_spots else c for c in counts]
    context = RecipeContext(n_adt=_n_adt(recipe, names, counts), seed=seed)
    features = []
    for name, mod_recipe, kept_counts in zip(names, recipes, counts):
        obsm = {key: np.asarray(value)[kept_index] for key, value in data.modalities[name].obsm.items()
                if getattr(value, "shape", (0,))[0] == data.n_spots}
        state = ModalityState(counts=kept_counts, matrix=kept_counts, obsm=obsm, context=context)
        for step in mod_recipe.steps:
            state = step(state)
        feat = state.matrix.toarray() if sp.issparse(state.matrix) else np.asarray(state.matrix)
        features.append(np.ascontiguousarray(feat, dtype=np.float32))
        log.info("%s: %d spots x %d features", name, feat.shape[0], feat.shape[1])
    return PreparedData(
        name=data.name,
        data_type=data.data_type,
        modality_names=names,
        features=features,
        coords=np.asarray(data.coords, dtype=np.float64)[kept_index],
        spot_names=np.asarray(data.spot_names)[kept_index],
        kept_index=kept_index,
        n_spots_original=data.n_spots,
        truth=None if data.truth is None else np.asarray(data.truth)[kept_index],
        n_clusters=data.n_clusters,
    )


def _where(data: MultiOmicsData, name: str) -> str:
    return str(data.sources.get(name, name)) if data.sources else name


def _n_adt(recipe: Recipe, names: list[str], counts: list) -> int:
    """Feature count (after filtering) of the ADT modality, else of the second modality, else of the first."""
    if recipe.adt_modality:
        wanted = kind_of(recipe.adt_modality)
        for name, matrix in zip(names, counts):
            kind = kind_of(name)
            if name.lower() == recipe.adt_modality.lower() or (kind is not None and kind is wanted):
                return int(matrix.shape[1])
    return int(counts[min(1, len(counts) - 1)].shape[1])


def preprocess(data: MultiOmicsData, seed: int = 2025) -> PreparedData:
    """Model-ready features of a loaded dataset, by the recipe of its data type (`RECIPES`, which the data-type
    registry `spamo.datatypes` registers each type with)."""
    recipe = RECIPES.get(data.data_type)
    if recipe is None:
        raise SpamoInputError("data_type", f"data type '{data.data_type}' has no preprocessing recipe "
                                           f"(known: {', '.join(RECIPES)})")
    return recipe(data, seed)


# ----------------------------------------------------------------------------------------------------------------
# the published recipes (docs/method.md section 1)


def _rna(min_spots: int, min_genes: int, scaled: bool, components: ComponentCount) -> ModalityRecipe:
    steps = [normalize_step(), hvg_step(), log1p_step()]
    if scaled:
        steps.append(scale_step())
    steps.append(pca_step(components))
    return ModalityRecipe(tuple(steps), min_spots_per_feature=min_spots, min_features_per_spot=min_genes)


def _adt(min_spots: int, scaled: bool, components: ComponentCount) -> ModalityRecipe:
    steps = [clr_step()] + ([scale_step()] if scaled else []) + [pca_step(components)]
    return ModalityRecipe(tuple(steps), min_spots_per_feature=min_spots)


def _peaks(components: ComponentCount, precomputed: str | None) -> ModalityRecipe:
    return ModalityRecipe((lsi_step(components, precomputed),))


RECIPES: dict[str, Recipe] = {
    "10x": Recipe({"RNA": _rna(10, 0, True, adt_count(-1)), "ADT": _adt(0, True, adt_count(-1))}),
    "SPOTS": Recipe({"RNA": _rna(10, 0, True, adt_count(-1)), "ADT": _adt(0, True, adt_count(-1))}),
    "Stereo-CITE-seq": Recipe({"RNA": _rna(10, 80, False, adt_count(-1)), "ADT": _adt(50, False, adt_count(-1))}),
    "Spatial-epigenome-transcriptome": Recipe(
        {"RNA": _rna(10, 200, True, fixed_count(50)), "ATAC": _peaks(fixed_count(51), "X_lsi")}, adt_modality=None
    ),
    "Simulation": Recipe(
        {
            "RNA": _rna(0, 0, False, adt_count(0)),
            "ADT": _adt(0, False, adt_count(0)),
            "ATAC": _peaks(adt_count(+1), None),
        }
    ),
}
