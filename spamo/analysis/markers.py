"""Marker features of every domain in every modality: counts for the analysed spots, normalised by modality kind,
ranked one domain against the rest (scanpy `rank_genes_groups`, Benjamini-Hochberg adjusted p-values).

Normalisation by kind: RNA and any unknown modality, counts to 1e4 per spot then log1p; ADT / protein, the centred
log ratio per spot (Seurat style, the transform of the model's preprocessing); ATAC / peaks, counts to 1e4 then
log1p. The TF-IDF of LSI multiplies each peak by a constant (its inverse document frequency), so per peak it is a
monotone transform of this one: Wilcoxon ranks, scores and p-values are identical, and log1p keeps scanpy's log fold
changes meaningful. A matrix that is not counts (non-integer or negative values, e.g. a pre-normalised peak file) is
used as given, with a note.
"""

from __future__ import annotations

from typing import Callable

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spamo.errors import SpamoInputError
from spamo.preprocessing import clr

MARKER_COLUMNS = ["domain", "modality", "feature", "rank", "score", "logfoldchange", "pval", "pval_adj"]


def as_group_labels(values: pd.Series) -> pd.Categorical:
    """String categories, in numeric order when every label is a number (so domain 10 comes after 9)."""
    strings = values.astype(object).where(values.notna(), None)
    strings = pd.Series([None if v is None else str(v) for v in strings], index=values.index)
    labels = sorted(set(strings.dropna()))
    try:
        labels = sorted(labels, key=float)
    except ValueError:
        pass
    return pd.Categorical(strings, categories=labels)


def modality_counts(adata, spot_names: pd.Index, max_features: int | None, where) -> ad.AnnData:
    """Raw counts of one loaded modality for the analysed spots, in their order (`layers['counts']` when present).

    `adata` is not changed (it may be the caller's object); `where` names the modality's source in a refusal.
    """
    names = pd.Index(adata.obs_names.astype(str))
    if not names.is_unique:
        raise SpamoInputError(where, "duplicated spot names")
    positions = names.get_indexer(spot_names)
    if (positions < 0).any():
        missing = spot_names[positions < 0]
        raise SpamoInputError(where, f"{len(missing)} spots of the run are not in this file (e.g. '{missing[0]}')")
    # markers compare counts: the counts layer when the file has one (the Simulation files keep transformed
    # values in .X), else .X
    matrix = (adata.layers["counts"] if "counts" in adata.layers else adata.X)[positions]
    out = ad.AnnData(X=_as_float_matrix(matrix), obs=pd.DataFrame(index=spot_names),
                     var=pd.DataFrame(index=adata.var_names.astype(str)))
    out.var_names_make_unique()
    return _keep_detected_features(out, max_features)


def _as_float_matrix(matrix):
    if sp.issparse(matrix):
        return sp.csr_matrix(matrix, dtype=np.float32)
    return np.asarray(matrix, dtype=np.float32)


def _keep_detected_features(adata, max_features: int | None, min_spots: int = 3):
    """Drop features seen in fewer than `min_spots` spots; cap very wide modalities (peaks) at the most detected."""
    detected = np.asarray((adata.X != 0).sum(axis=0)).ravel()
    keep = detected >= min(min_spots, adata.n_obs)
    if max_features and keep.sum() > max_features:
        order = np.argsort(-detected, kind="stable")[:max_features]
        keep = np.zeros_like(keep)
        keep[order] = True
    return adata[:, keep].copy()


def _looks_like_counts(matrix) -> bool:
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix).ravel()
    sample = values[: 200_000]
    return bool(np.all(sample >= 0) and np.allclose(sample, np.round(sample)))


def normalise_log(adata) -> None:
    """Counts to 1e4 per spot, then log1p (RNA, peaks, anything unknown)."""
    import scanpy as sc

    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)


def normalise_clr(adata) -> None:
    """Centred log ratio per spot, Seurat style: the same transform as the model's ADT preprocessing."""
    adata.X = clr(adata.X).astype(np.float32)


# modality kind -> normaliser; modality names map to kinds through MODALITY_KINDS (unknown names are "rna")
NORMALISERS: dict[str, Callable] = {"rna": normalise_log, "protein": normalise_clr, "peaks": normalise_log}
MODALITY_KINDS = {"rna": "rna", "gex": "rna", "adt": "protein", "protein": "protein", "atac": "peaks",
                  "peaks": "peaks", "chromatin": "peaks", "epigenome": "peaks"}


def normalise_modality(name: str, adata) -> str | None:
    """Normalise in place by the modality's kind; returns a note when the matrix was not counts and kept as is."""
    if not _looks_like_counts(adata.X):
        return f"{name}: matrix is not counts; used as given (no normalisation)"
    kind = MODALITY_KINDS.get(name.lower(), "rna")
    NORMALISERS[kind](adata)
    return None


def rank_markers(adata, groupby: str, method: str, modality: str) -> pd.DataFrame:
    """Every feature ranked for every group against the rest (stores the ranking in `adata.uns` for plots)."""
    import scanpy as sc

    sc.tl.rank_genes_groups(adata, groupby, method=method, corr_method="benjamini-hochberg", use_raw=False,
                            n_genes=adata.n_vars, pts=False)
    table = sc.get.rank_genes_groups_df(adata, group=None)
    if "group" not in table.columns:  # a single tested group comes back without the column
        table.insert(0, "group", adata.uns["rank_genes_groups"]["names"].dtype.names[0])
    table["rank"] = table.groupby("group", observed=True).cumcount() + 1
    out = pd.DataFrame({
        "domain": table["group"].astype(str).to_numpy(),
        "modality": modality,
        "feature": table["names"].astype(str).to_numpy(),
        "rank": table["rank"].astype(np.int32).to_numpy(),
        "score": table["scores"].astype(np.float64).to_numpy(),
        "logfoldchange": table["logfoldchanges"].astype(np.float64).to_numpy(),
        "pval": table["pvals"].astype(np.float64).to_numpy(),
        "pval_adj": table["pvals_adj"].astype(np.float64).to_numpy(),
    })
    return out[MARKER_COLUMNS]


def testable_groups(labels: pd.Categorical, min_size: int = 2) -> tuple[list[str], list[str]]:
    """Groups with enough spots for a two-sample test, and the ones left out."""
    counts = pd.Series(labels).value_counts()
    keep = [g for g in labels.categories if counts.get(g, 0) >= min_size]
    dropped = [g for g in labels.categories if counts.get(g, 0) < min_size]
    return keep, dropped
