"""How each modality's counts are drawn (docs/data.md section 3): a `ModalityModel` per modality in
`MODALITY_MODELS`.

Negative-binomial RNA with library-size variation, ADT with ambient background, sparse binary-like ATAC; each model
plants up-regulated features per group of domains and names the pair of domains it cannot tell apart. Values are
transformed in row blocks of `CHUNK_SPOTS` spots, so a million spots never need full-size float64 temporaries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp


CHUNK_SPOTS = 16384


@dataclass(frozen=True)
class ModalityModel:
    """How one modality's counts are drawn, and which pair of domains it cannot tell apart."""

    name: str
    stream: int  # random-stream tag: a modality's values do not depend on which others are simulated
    n_features: int
    feature_prefix: str
    n_planted: int  # up-regulated features per group of domains
    blind_pair: Callable[[int], tuple[int, int]]  # n_domains -> the two domains this modality merges
    make_params: Callable[[np.random.Generator, int, int], dict]  # (rng, n_features, n_groups) -> parameters
    draw: Callable[[np.random.Generator, dict, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    transform: Callable[[sp.csr_matrix], np.ndarray]  # counts -> .X data array (same sparsity pattern)


def _planted_lfc(rng: np.random.Generator, n_features: int, n_groups: int, n_planted: int,
                 low: float, high: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Group x feature log-fold-change matrix with `n_planted` distinct up-regulated features per group."""
    order = rng.permutation(n_features)
    lfc = np.zeros((n_groups, n_features), dtype=np.float32)
    planted = []
    for g in range(n_groups):
        idx = np.sort(order[g * n_planted:(g + 1) * n_planted])
        lfc[g, idx] = rng.uniform(low, high, size=idx.size)
        planted.append(idx)
    return lfc, planted


def _nonspatial_loadings(rng: np.random.Generator, n_features: int, n_factors: int, n_hit: int,
                         scale: float) -> np.ndarray:
    """Sparse loadings of the non-spatial factors: each factor moves `n_hit` random features a little."""
    load = np.zeros((n_factors, n_features), dtype=np.float32)
    for k in range(n_factors):
        idx = rng.choice(n_features, size=min(n_hit, n_features), replace=False)
        load[k, idx] = rng.normal(0.0, scale, size=idx.size)
    return load


def _rna_params(rng, n_features, n_groups):
    n_planted = _n_planted(30, n_features, n_groups)
    lfc, planted = _planted_lfc(rng, n_features, n_groups, n_planted, 1.2, 2.0)
    log_base = rng.normal(np.log(0.3), 1.0, size=n_features).astype(np.float32)
    for idx in planted:  # planted genes are expressed at least moderately, so markers are detectable
        log_base[idx] = np.maximum(log_base[idx], np.log(0.3))
    return {"lfc": lfc, "planted": planted, "log_base": log_base, "theta": 4.0, "lib_sd": 0.35,
            "ns_load": _nonspatial_loadings(rng, n_features, 3, 40, 0.4)}


def _rna_draw(rng, params, groups, nsfac, lib):
    """Negative binomial (gamma-Poisson) around base x library size x planted fold change x non-spatial factors."""
    log_mu = params["log_base"][None, :] + params["lfc"][groups] + nsfac @ params["ns_load"]
    mu = np.exp(log_mu) * lib[:, None]
    theta = params["theta"]
    return rng.poisson(rng.gamma(theta, mu / theta)).astype(np.int32)


def _rna_transform(counts: sp.csr_matrix) -> np.ndarray:
    """log1p of counts normalised to 1e4 per spot (what the method's simulation keeps in .X)."""
    totals = np.asarray(counts.sum(axis=1, dtype=np.int64)).ravel()
    scale = (1e4 / np.maximum(totals, 1)).astype(np.float32)
    return _blockwise(counts, lambda values, rows: np.log1p(values * scale[rows]))


def _blockwise(counts: sp.csr_matrix, transform) -> np.ndarray:
    """Apply `transform(values, row_of_each_value)` to the stored values in row blocks, into float32.

    Working in blocks keeps the float64 temporaries small: at a million spots the full-size ones would be
    several GiB each.
    """
    out = np.empty(counts.nnz, dtype=np.float32)
    indptr = counts.indptr
    for start in range(0, counts.shape[0], CHUNK_SPOTS):
        stop = min(start + CHUNK_SPOTS, counts.shape[0])
        lo, hi = indptr[start], indptr[stop]
        rows = np.repeat(np.arange(start, stop), np.diff(indptr[start:stop + 1]))
        out[lo:hi] = transform(counts.data[lo:hi].astype(np.float32), rows)
    return out


def _adt_params(rng, n_features, n_groups):
    n_planted = _n_planted(20, n_features, n_groups)
    lfc, planted = _planted_lfc(rng, n_features, n_groups, n_planted, 1.5, 2.5)
    return {"lfc": lfc, "planted": planted,
            "log_specific": rng.normal(np.log(15.0), 0.6, size=n_features).astype(np.float32),
            "ambient": np.exp(rng.normal(np.log(25.0), 0.5, size=n_features)).astype(np.float32),
            "theta": 8.0, "lib_sd": 0.3, "ns_load": _nonspatial_loadings(rng, n_features, 3, 10, 0.4)}


def _adt_draw(rng, params, groups, nsfac, lib):
    """Specific binding (planted fold changes) on top of ambient background, negative binomial noise."""
    specific = np.exp(params["log_specific"][None, :] + params["lfc"][groups] + nsfac @ params["ns_load"])
    mu = (specific + params["ambient"][None, :]) * lib[:, None]
    theta = params["theta"]
    return rng.poisson(rng.gamma(theta, mu / theta)).astype(np.int32)


def _log1p_transform(counts: sp.csr_matrix) -> np.ndarray:
    return _blockwise(counts, lambda values, rows: np.log1p(values))


def _atac_params(rng, n_features, n_groups):
    n_planted = _n_planted(50, n_features, n_groups)
    lfc, planted = _planted_lfc(rng, n_features, n_groups, n_planted, 2.0, 2.8)
    log_rate = np.log(np.clip(np.exp(rng.normal(np.log(0.06), 0.6, size=n_features)), 0.005, 0.3))
    return {"lfc": lfc, "planted": planted, "log_rate": log_rate.astype(np.float32), "lib_sd": 0.4,
            "ns_load": _nonspatial_loadings(rng, n_features, 3, 40, 0.3)}


def _atac_draw(rng, params, groups, nsfac, lib):
    """Sparse, binary-like fragment counts: Poisson with small accessible rates, capped at 4."""
    rate = np.exp(params["log_rate"][None, :] + params["lfc"][groups] + nsfac @ params["ns_load"]) * lib[:, None]
    return np.minimum(rng.poisson(np.minimum(rate, 2.0)), 4).astype(np.int32)


def _n_planted(wanted: int, n_features: int, n_groups: int) -> int:
    return max(1, min(wanted, n_features // (n_groups + 1)))


MODALITY_MODELS: dict[str, ModalityModel] = {
    "RNA": ModalityModel("RNA", 1, 1000, "Gene", 30, lambda d: (1, 2), _rna_params, _rna_draw, _rna_transform),
    "ADT": ModalityModel("ADT", 2, 100, "Protein", 20, lambda d: (d - 2, d - 1), _adt_params, _adt_draw,
                         _log1p_transform),
    "ATAC": ModalityModel("ATAC", 3, 1000, "Peak", 40, lambda d: (0, 1), _atac_params, _atac_draw,
                          _log1p_transform),
}
