"""Recipe steps (docs/method.md section 1): each takes and returns a `ModalityState` (the kept raw counts, the
current matrix, the modality's obsm rows), so a recipe is a chain of small steps.

Component counts are functions of a `RecipeContext` because the published rule depends on the data: PCA and LSI
take the number of ADT features (minus one for two modalities, plus one for ATAC in three).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp

from spamo.preprocessing.matrices import (HVG_TOP, SCALE_MAX_VALUE, TARGET_SUM, clr, highly_variable_features, log1p,
                                          lsi, normalize_total, pca, scale)


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
