"""The refusals of bad input matrices (docs/data.md section 4) and the one rule for the number of clusters.

Every check runs in O(nnz) on sparse matrices and in row blocks of `ROW_BLOCK` rows on dense ones, so a big matrix
is never densified to be checked. Counts are required (non-negative whole numbers) only for the modality kinds whose
preprocessing is defined on raw counts (`spamo.modalities`: HVG selection and the CLR, docs/method.md section 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from spamo import modalities as modality_kinds
from spamo.data import input_matrix
from spamo.errors import SpamoInputError


ROW_BLOCK = 65536


def check_n_clusters(n_clusters: int, n_spots: int | None = None) -> None:
    """The one rule for the number of clusters (loaders and `SpamoConfig.resolve` both call it): an integer of at
    least 2, and at most the number of spots when that is known."""
    if isinstance(n_clusters, bool) or int(n_clusters) != n_clusters:
        raise SpamoInputError("n_clusters", f"n_clusters={n_clusters!r} must be a whole number")
    if n_spots is None:
        if n_clusters < 2:
            raise SpamoInputError("n_clusters", f"n_clusters={n_clusters} must be at least 2")
        return
    if not 2 <= int(n_clusters) <= n_spots:
        raise SpamoInputError("n_clusters", f"n_clusters={n_clusters} must be between 2 and the number of "
                                            f"spots ({n_spots})")


def matrix_label(layer: str | None) -> str:
    return ".X" if layer is None else f"layers['{layer}']"


def raw_counts(adata, layer: str | None = None):
    """Kept for callers of the old name: the input matrix (`.X` unless a layer is named)."""
    return input_matrix(adata, layer)


def check_modality(adata, modality: str, source: Path | str, layer: str | None = None) -> None:
    """Refuse a modality with no spots/features, duplicated spot names, a missing input matrix, non-finite values
    or (for kinds that need counts, `spamo.modalities`) negative values in the matrix that will be read."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise SpamoInputError(source, f"has {adata.n_obs} spots and {adata.n_vars} features")
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()][0]
        n_dup = int(adata.obs_names.duplicated().sum())
        raise SpamoInputError(source, f"duplicated spot names ({n_dup}, e.g. '{dup}')")
    label = matrix_label(layer)
    matrix = input_matrix(adata, layer, where=source)
    if matrix is None:
        raise SpamoInputError(source, f"has no {label} matrix")
    if not _is_numeric(matrix):
        raise SpamoInputError(source, f"{label} is not a numeric matrix (dtype {matrix.dtype})")
    bad = _first_nonfinite_row(matrix)
    if bad is not None:
        raise SpamoInputError(source, f"NaN or infinite value in {label} (spot '{adata.obs_names[bad]}')")
    if modality_kinds.counts_required(modality):
        bad = _first_negative_row(matrix)
        if bad is not None:
            raise SpamoInputError(source, f"negative counts in {label} (spot '{adata.obs_names[bad]}'); raw "
                                          f"counts are expected")
        if not np.issubdtype(matrix.dtype, np.integer):
            fractional = _first_bad_row(matrix, lambda v: v != np.round(v))
            if fractional is not None:  # HVG selection (Seurat v3) and the CLR are defined on raw counts
                hint = ("; pass --layer counts to read layers['counts']" if layer is None and "counts" in adata.layers
                        else "; pass --layer NAME to read a layer of raw counts")
                raise SpamoInputError(source, f"non-integer values in {label} (spot '{adata.obs_names[fractional]}') "
                                              f"where raw counts are expected{hint}")


def _first_bad_row(matrix, is_bad) -> int | None:
    """Index of the first row holding a value where `is_bad(values)` is true, in O(nnz) for sparse input."""
    if hasattr(matrix, "to_memory"):  # backed sparse dataset
        matrix = matrix.to_memory()
    if sp.issparse(matrix):
        csr = sp.csr_matrix(matrix) if matrix.format != "csr" else matrix
        bad = np.flatnonzero(is_bad(csr.data))
        if bad.size == 0:
            return None
        return int(np.searchsorted(csr.indptr, bad[0], side="right") - 1)
    n = matrix.shape[0]
    for start in range(0, n, ROW_BLOCK):
        block = np.asarray(matrix[start:start + ROW_BLOCK])
        rows = np.flatnonzero(is_bad(block).any(axis=tuple(range(1, block.ndim))))
        if rows.size:
            return start + int(rows[0])
    return None


def _is_numeric(matrix) -> bool:
    return np.issubdtype(matrix.dtype, np.number) or matrix.dtype == bool


def _first_nonfinite_row(matrix) -> int | None:
    if np.issubdtype(matrix.dtype, np.integer) or matrix.dtype == bool:
        return None  # integers cannot hold NaN or inf
    return _first_bad_row(matrix, lambda v: ~np.isfinite(v))


def _first_negative_row(matrix) -> int | None:
    if np.issubdtype(matrix.dtype, np.unsignedinteger) or matrix.dtype == bool:
        return None
    return _first_bad_row(matrix, lambda v: v < 0)


def _dense(matrix) -> np.ndarray:
    if sp.issparse(matrix):
        return matrix.toarray()
    if hasattr(matrix, "to_numpy"):
        return matrix.to_numpy()
    return np.asarray(matrix)
