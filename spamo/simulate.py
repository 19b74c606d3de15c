"""The built-in simulator of spatial multi-omics data (docs/data.md section 3).

A grid of spots (square, or hexagonal like Visium) carries spatial domains: background (label 0), smooth blobs
and wavy bands. Each modality draws counts from a realistic distribution (negative-binomial RNA with library-size
variation, ADT with ambient background, sparse binary-like ATAC) and is *blind* to one pair of domains: the pair
shares the same planted features in that modality. The blind pairs are chosen so every pair of domains is told
apart by some modality and none tells all apart, so integration is what recovers every domain.

Generation runs in chunks of spots with one random stream per (seed, modality, chunk), so the result depends only
on the seed and the size, and a million spots fit in memory (counts are stored as sparse CSR).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.sparse as sp

from spamo.dataset_table import get_dataset_spec
from spamo.errors import SpamoInputError
from spamo.io import atomic_dir, write_h5ad

CHUNK_SPOTS = 16384
MIN_SPOTS, MAX_SPOTS = 300, 1_000_000
MIN_DOMAINS, MAX_DOMAINS = 4, 8
GRIDS = ("square", "hex")
LAYOUT_MODALITIES = {"sim": ("RNA", "ADT", "ATAC"), "hln": ("RNA", "ADT"), "mb": ("RNA", "ATAC")}


# ------------------------------------------------------------------------------------------------ modality models
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


# ------------------------------------------------------------------------------------------------ tissue layout
@dataclass
class Tissue:
    """Spot positions and their domains: shared by every modality of one simulation."""

    coords: np.ndarray  # N x 2 float64 in [-2, 2]
    labels: np.ndarray  # N int8, 0 = background
    spfac: np.ndarray  # N x (n_domains - 1) float32 one-hot of the spatial factors (background rows zero)
    nsfac: np.ndarray  # N x 3 float32 non-spatial factors
    spot_names: list[str] = field(repr=False, default_factory=list)

    @property
    def n_spots(self) -> int:
        return int(self.labels.size)


def grid_coordinates(n_spots: int, grid: str = "square") -> np.ndarray:
    """Row-major positions on a square or hexagonal (odd rows shifted by half a spot) grid, scaled to [-2, 2]."""
    n_cols = math.ceil(math.sqrt(n_spots))
    index = np.arange(n_spots)
    row, col = index // n_cols, index % n_cols
    x = col.astype(np.float64)
    y = row.astype(np.float64)
    if grid == "hex":
        x = x + 0.5 * (row % 2)
        y = y * (math.sqrt(3.0) / 2.0)
    span = max(np.ptp(x), np.ptp(y), 1e-12)
    coords = np.column_stack([x - x.min(), y - y.min()]) / span * 4.0 - 2.0
    return coords


def domain_labels(coords: np.ndarray, n_domains: int, rng: np.random.Generator) -> np.ndarray:
    """Background 0, then smooth wobbly blobs in the upper part and wavy bands (layers) in the lower part."""
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    unit = (coords - lo) / np.maximum(hi - lo, 1e-12)
    u, v = unit[:, 0], unit[:, 1]
    n_factors = n_domains - 1
    n_blobs = math.ceil(n_factors / 2)
    n_bands = n_factors - n_blobs
    labels = np.zeros(coords.shape[0], dtype=np.int8)
    radius = min(0.22, 0.46 / n_blobs)
    for i in range(n_blobs):
        cx = (i + 0.5) / n_blobs + rng.uniform(-0.02, 0.02)
        cy = 0.28 + rng.uniform(-0.02, 0.02)
        phase = rng.uniform(0, 2 * np.pi)
        theta = np.arctan2(v - cy, u - cx)
        r_edge = radius * (1.0 + 0.12 * np.sin(3.0 * theta + phase))
        inside = (np.hypot(u - cx, v - cy) <= r_edge) & (labels == 0)
        labels[inside] = i + 1
    height = 0.4 / max(n_bands, 1)
    wave_phase = rng.uniform(0, 2 * np.pi)
    v_wavy = v - 0.03 * np.sin(2 * np.pi * 1.5 * u + wave_phase)
    for j in range(n_bands):
        top = 0.56 + j * height + 0.06 * height
        bottom = 0.56 + (j + 1) * height - 0.06 * height
        inside = (v_wavy >= top) & (v_wavy < bottom) & (labels == 0)
        labels[inside] = n_blobs + j + 1
    return labels


def make_tissue(n_spots: int, seed: int, n_domains: int = 5, grid: str = "square") -> Tissue:
    """Positions, domains, spatial-factor one-hots and non-spatial factors of one simulation."""
    rng = np.random.default_rng([seed, 0])
    coords = grid_coordinates(n_spots, grid)
    labels = domain_labels(coords, n_domains, rng)
    spfac = np.zeros((n_spots, n_domains - 1), dtype=np.float32)
    has = labels > 0
    spfac[np.flatnonzero(has), labels[has] - 1] = 1.0
    nsfac = rng.standard_normal((n_spots, 3)).astype(np.float32)
    width = max(4, len(str(n_spots - 1)))
    names = [f"{i:0{width}d}_spot" for i in range(n_spots)]
    return Tissue(coords=coords, labels=labels, spfac=spfac, nsfac=nsfac, spot_names=names)


def truth_from_spfac(spfac: np.ndarray) -> np.ndarray:
    """The method's ground truth: label = sum_k (k+1) * spfac[:, k] (0 = background)."""
    weights = np.arange(1, spfac.shape[1] + 1, dtype=np.float64)
    return np.rint(np.asarray(spfac, dtype=np.float64) @ weights).astype(np.int64)


# ------------------------------------------------------------------------------------------------ generation
def domain_groups(model: ModalityModel, n_domains: int) -> np.ndarray:
    """Domain -> group index for one modality: its blind pair shares a group, every other domain has its own."""
    a, b = model.blind_pair(n_domains)
    group = np.empty(n_domains, dtype=np.int64)
    next_group = 0
    for d in range(n_domains):
        if d == b:
            group[d] = group[a]
        else:
            group[d] = next_group
            next_group += 1
    return group


def simulate_modality(model: ModalityModel, tissue: Tissue, seed: int, n_domains: int,
                      n_features: int | None = None, progress: Callable[[int], None] | None = None):
    """One modality as an AnnData: integer counts in `layers['counts']`, transformed values in `.X` (both CSR)."""
    import anndata as ad
    import pandas as pd

    n_features = n_features or model.n_features
    group_of_domain = domain_groups(model, n_domains)
    n_groups = int(group_of_domain.max()) + 1
    params = model.make_params(np.random.default_rng([seed, model.stream, 0]), n_features, n_groups)
    lib_rng = np.random.default_rng([seed, model.stream, 1])
    lib = np.exp(lib_rng.normal(0.0, params["lib_sd"], size=tissue.n_spots)).astype(np.float32)

    data_parts, index_parts, row_nnz = [], [], []
    for chunk, start in enumerate(range(0, tissue.n_spots, CHUNK_SPOTS)):
        stop = min(start + CHUNK_SPOTS, tissue.n_spots)
        rng = np.random.default_rng([seed, model.stream, 2, chunk])
        groups = group_of_domain[tissue.labels[start:stop]]
        dense = model.draw(rng, params, groups, tissue.nsfac[start:stop], lib[start:stop])
        rows, cols = np.nonzero(dense)
        data_parts.append(dense[rows, cols].astype(np.int32))
        index_parts.append(cols.astype(np.int32))
        row_nnz.append(np.bincount(rows, minlength=stop - start))
        del dense, rows, cols
        if progress is not None:
            progress(stop - start)
    indptr = np.zeros(tissue.n_spots + 1, dtype=np.int64)
    np.cumsum(np.concatenate(row_nnz), out=indptr[1:])
    if indptr[-1] < np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    counts_data = np.concatenate(data_parts)
    del data_parts
    indices = np.concatenate(index_parts)
    del index_parts
    shape = (tissue.n_spots, n_features)
    counts = sp.csr_matrix((counts_data, indices, indptr), shape=shape)
    x = sp.csr_matrix((model.transform(counts), indices, indptr), shape=shape)

    var_names = [f"{model.feature_prefix}{j:04d}" for j in range(n_features)]
    adata = ad.AnnData(X=x, layers={"counts": counts},
                       obs=pd.DataFrame(index=pd.Index(tissue.spot_names, name=None)),
                       var=pd.DataFrame(index=pd.Index(var_names)))
    adata.obsm["spatial"] = tissue.coords.copy()
    adata.obsm["spfac"] = tissue.spfac.copy()
    adata.obsm["nsfac"] = tissue.nsfac.copy()
    adata.uns["planted_features"], adata.uns["planted_shared_features"] = _planted_names(
        params["planted"], group_of_domain, var_names)
    adata.uns["spamo_simulation"] = {"seed": int(seed), "n_domains": int(n_domains), "n_spots": tissue.n_spots,
                                     "modality": model.name, "blind_pair": list(model.blind_pair(n_domains))}
    return adata


def _planted_names(planted: list[np.ndarray], group_of_domain: np.ndarray, var_names: list[str]):
    """{domain label: names} for domains this modality separates, {"a,b": names} for its blind pair."""
    own, shared = {}, {}
    for g, idx in enumerate(planted):
        domains = np.flatnonzero(group_of_domain == g)
        names = [var_names[i] for i in idx]
        if domains.size == 1:
            own[str(int(domains[0]))] = names
        else:
            shared[",".join(str(int(d)) for d in domains)] = names
    return own, shared


@dataclass
class Simulation:
    """A simulated dataset: modalities in order (RNA first), ground truth and the layout it is written in."""

    modalities: dict  # modality name -> AnnData
    truth: np.ndarray
    coords: np.ndarray
    layout: str


def check_simulation_args(n_spots: int, n_domains: int, layout: str, grid: str) -> None:
    """Refuse sizes and choices the simulator does not support, before anything is generated or written."""
    if not MIN_SPOTS <= n_spots <= MAX_SPOTS:
        raise SpamoInputError("--n-spots", f"must be between {MIN_SPOTS} and {MAX_SPOTS}, got {n_spots}")
    if not MIN_DOMAINS <= n_domains <= MAX_DOMAINS:
        raise SpamoInputError("--n-domains", f"must be between {MIN_DOMAINS} and {MAX_DOMAINS}, got {n_domains}")
    if layout not in LAYOUT_MODALITIES:
        raise SpamoInputError("--layout", f"'{layout}' is not one of {', '.join(LAYOUT_MODALITIES)}")
    if grid not in GRIDS:
        raise SpamoInputError("--grid", f"'{grid}' is not one of {', '.join(GRIDS)}")


def simulate(n_spots: int = 1296, seed: int = 0, n_domains: int = 5, layout: str = "sim", grid: str = "square",
             n_features: dict | None = None, progress: Callable[[int], None] | None = None) -> Simulation:
    """Simulate the modalities of `layout` in memory (`progress` is called with the spots done per step)."""
    check_simulation_args(n_spots, n_domains, layout, grid)
    tissue = make_tissue(n_spots, seed, n_domains, grid)
    modalities = {}
    for name in LAYOUT_MODALITIES[layout]:
        size = (n_features or {}).get(name)
        modalities[name] = simulate_modality(MODALITY_MODELS[name], tissue, seed, n_domains, size, progress)
        modalities[name].uns["spamo_simulation"].update({"layout": layout, "grid": grid})
    return Simulation(modalities=modalities, truth=tissue.labels.astype(np.int64), coords=tissue.coords,
                      layout=layout)


def write_simulation(out_dir: str | Path, n_spots: int = 1296, seed: int = 0, layout: str = "sim",
                     grid: str = "square", n_domains: int = 5, n_features: dict | None = None,
                     progress: Callable[[int], None] | None = None) -> Path:
    """Write a simulation in the folder layout of dataset `layout` (docs/data.md section 1), atomically.

    Modalities are generated and written one at a time (peak memory: one modality), into a temporary sibling
    folder that is renamed into place at the end, so an interrupted run leaves nothing half-written.
    """
    check_simulation_args(n_spots, n_domains, layout, grid)
    spec = get_dataset_spec(layout)
    out_dir = Path(out_dir)
    tissue = make_tissue(n_spots, seed, n_domains, grid)
    with atomic_dir(out_dir) as tmp:
        tmp.chmod(0o755)  # a dataset folder is an ordinary folder, not a private temporary one
        for name in LAYOUT_MODALITIES[layout]:
            size = (n_features or {}).get(name)
            adata = simulate_modality(MODALITY_MODELS[name], tissue, seed, n_domains, size, progress)
            adata.uns["spamo_simulation"].update({"layout": layout, "grid": grid})
            write_h5ad(adata, tmp / spec.modality_files[name])
            del adata
        (tmp / spec.truth_file).write_text("\n".join(str(int(v)) for v in tissue.labels) + "\n")
    return out_dir


def total_steps(n_spots: int, layout: str) -> int:
    """Progress units of one simulation: spots x modalities."""
    return n_spots * len(LAYOUT_MODALITIES[layout])
