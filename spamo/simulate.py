"""The built-in simulator of spatial multi-omics data (docs/data.md section 3).

A grid of spots (square, or hexagonal like Visium) carries spatial domains: background (label 0), smooth blobs
and wavy bands. Each modality draws counts from a realistic distribution (negative-binomial RNA with library-size
variation, ADT with ambient background, sparse binary-like ATAC) and is *blind* to one pair of domains: the pair
shares the same planted features in that modality. The blind pairs are chosen so every pair of domains is told
apart by some modality and none tells all apart, so integration is what recovers every domain.

Generation runs in chunks of spots with one random stream per (seed, modality, chunk), so the result depends only
on the seed and the size, and a million spots fit in memory (counts are stored as sparse CSR).

`Difficulty` grades a simulation (noise, contrast, which domains each modality merges, irregular shapes, a
"confusable" pair seen by one weak modality only); its defaults reproduce the original simulation bit for bit.
`configs/benchmarks/selection.toml` fixes the graded presets of the selection benchmark (`PRESETS`).
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
from spamo.io import atomic_dir, read_toml, write_h5ad
from spamo.package_data import CONFIG_DIR

CHUNK_SPOTS = 16384
MIN_SPOTS, MAX_SPOTS = 300, 1_000_000
MIN_DOMAINS, MAX_DOMAINS = 4, 8
GRIDS = ("square", "hex")
LAYOUT_MODALITIES = {"sim": ("RNA", "ADT", "ATAC"), "hln": ("RNA", "ADT"), "mb": ("RNA", "ATAC")}
PRESET_FILE = CONFIG_DIR / "benchmarks" / "selection.toml"


@dataclass(frozen=True)
class Difficulty:
    """How hard a simulation is. The defaults are the original simulation (every factor 1, nothing extra merged).

    - ``noise``: multiplies the non-spatial factor loadings and the overdispersion 1/theta of RNA and ADT.
      Non-spatial variation is what a method must learn to ignore; more of it hides the domains.
    - ``contrast``: multiplies every planted log-fold change (how different domains look); ``modality_contrast``
      multiplies one modality's on top (a weak modality).
    - ``blind``: extra pairs of domains each modality merges (shares features for), on top of its own blind pair:
      fewer domains each modality can tell apart, so more depends on integration.
    - ``irregularity``: 0 = smooth blobs and gently wavy bands; towards 1 the boundaries get lobes and
      interdigitate (a seeded smooth field warps the positions the domains are drawn on).
    - ``confusable``: a pair (a, b) merged by every modality but ``confusable_modality``, where b keeps a's
      features plus its own at ``confusable_contrast`` of the usual fold change: visible only to one weak modality.
    """

    noise: float = 1.0
    contrast: float = 1.0
    modality_contrast: dict = field(default_factory=dict)
    blind: dict = field(default_factory=dict)  # modality -> list of (a, b) pairs
    irregularity: float = 0.0
    confusable: tuple | None = None
    confusable_modality: str | None = None
    confusable_contrast: float = 0.3

    def merged_pairs(self, model: "ModalityModel", n_domains: int) -> list[tuple[int, int]]:
        """Every pair of domains `model` cannot tell apart under this difficulty."""
        pairs = [tuple(model.blind_pair(n_domains))]
        pairs += [tuple(int(v) for v in pair) for pair in self.blind.get(model.name, [])]
        if self.confusable is not None and model.name != self.confusable_modality:
            pairs.append(tuple(int(v) for v in self.confusable))
        return pairs


DEFAULT_DIFFICULTY = Difficulty()


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


def domain_labels(coords: np.ndarray, n_domains: int, rng: np.random.Generator, irregularity: float = 0.0,
                  shape_rng: np.random.Generator | None = None) -> np.ndarray:
    """Background 0, then smooth wobbly blobs in the upper part and wavy bands (layers) in the lower part.

    With `irregularity` > 0 the positions are first warped by a smooth random field drawn from `shape_rng` (a
    sum of a few plane waves, amplitude proportional to `irregularity`), so boundaries grow lobes and fingers;
    `rng` is consumed exactly as without it, so the blob centres and phases do not move.
    """
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    unit = (coords - lo) / np.maximum(hi - lo, 1e-12)
    u, v = unit[:, 0], unit[:, 1]
    if irregularity > 0:
        shape_rng = shape_rng or np.random.default_rng(0)
        warp_u, warp_v = np.zeros_like(u), np.zeros_like(v)
        for _ in range(6):
            freq = shape_rng.uniform(2.0, 7.0, size=2) * shape_rng.choice([-1, 1], size=2)
            phase_u, phase_v = shape_rng.uniform(0, 2 * np.pi, size=2)
            wave = 2 * np.pi * (freq[0] * u + freq[1] * v)
            warp_u += np.sin(wave + phase_u)
            warp_v += np.sin(wave + phase_v)
        amplitude = 0.035 * irregularity / math.sqrt(6)
        u, v = u + amplitude * warp_u, v + amplitude * warp_v
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


def make_tissue(n_spots: int, seed: int, n_domains: int = 5, grid: str = "square",
                difficulty: Difficulty = DEFAULT_DIFFICULTY) -> Tissue:
    """Positions, domains, spatial-factor one-hots and non-spatial factors of one simulation."""
    rng = np.random.default_rng([seed, 0])
    coords = grid_coordinates(n_spots, grid)
    labels = domain_labels(coords, n_domains, rng, difficulty.irregularity, np.random.default_rng([seed, 0, 1]))
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
def domain_groups(model: ModalityModel, n_domains: int, difficulty: Difficulty = DEFAULT_DIFFICULTY) -> np.ndarray:
    """Domain -> group index for one modality: merged domains share a group, every other domain has its own.

    Merged pairs join transitively (union-find); groups are numbered by their smallest domain, in domain order.
    """
    root = list(range(n_domains))

    def find(d: int) -> int:
        while root[d] != d:
            d = root[d]
        return d

    for a, b in difficulty.merged_pairs(model, n_domains):
        if not (0 <= a < n_domains and 0 <= b < n_domains):
            raise SpamoInputError("difficulty", f"{model.name} merges domains ({a}, {b}) outside 0..{n_domains - 1}")
        ra, rb = find(a), find(b)
        root[max(ra, rb)] = min(ra, rb)
    group = np.empty(n_domains, dtype=np.int64)
    numbers: dict[int, int] = {}
    for d in range(n_domains):
        group[d] = numbers.setdefault(find(d), len(numbers))
    return group


def apply_difficulty(model: ModalityModel, params: dict, group_of_domain: np.ndarray,
                     difficulty: Difficulty) -> dict:
    """Scale the drawn parameters in place: fold changes by contrast, non-spatial loadings and 1/theta by noise,
    and the weak modality's confusable domain to its partner's features plus a faint signature of its own."""
    scale = difficulty.contrast * difficulty.modality_contrast.get(model.name, 1.0)
    if scale != 1.0:
        params["lfc"] = (params["lfc"] * scale).astype(np.float32)
    if difficulty.noise != 1.0:
        params["ns_load"] = (params["ns_load"] * difficulty.noise).astype(np.float32)
        if "theta" in params:
            params["theta"] = params["theta"] / difficulty.noise
    if difficulty.confusable is not None and model.name == difficulty.confusable_modality:
        a, b = (int(v) for v in difficulty.confusable)
        ga, gb = group_of_domain[a], group_of_domain[b]
        if ga != gb:
            params["lfc"][gb] = params["lfc"][ga] + difficulty.confusable_contrast * params["lfc"][gb]
    return params


def simulate_modality(model: ModalityModel, tissue: Tissue, seed: int, n_domains: int,
                      n_features: int | None = None, progress: Callable[[int], None] | None = None,
                      difficulty: Difficulty = DEFAULT_DIFFICULTY):
    """One modality as an AnnData: counts in `.X` (float32) and `layers['counts']` (int32), the transformed values
    (log-normalised RNA, log1p ADT/ATAC) in `layers['lognorm']`; all CSR."""
    import anndata as ad
    import pandas as pd

    n_features = n_features or model.n_features
    group_of_domain = domain_groups(model, n_domains, difficulty)
    n_groups = int(group_of_domain.max()) + 1
    params = model.make_params(np.random.default_rng([seed, model.stream, 0]), n_features, n_groups)
    params = apply_difficulty(model, params, group_of_domain, difficulty)
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
    # .X holds the counts (as float32, like the authors' files; the loaders read .X), layers['counts'] the same
    # integers, layers['lognorm'] the log-normalised values
    as_float = sp.csr_matrix((counts_data.astype(np.float32), indices, indptr), shape=shape)
    adata = ad.AnnData(X=as_float, layers={"counts": counts, "lognorm": x},
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


def check_difficulty(difficulty: Difficulty, layout: str, n_domains: int) -> None:
    """Refuse a confusable pair that no modality of the layout can see (one line, before anything is drawn)."""
    if difficulty.confusable is None:
        return
    weak = difficulty.confusable_modality
    if weak not in LAYOUT_MODALITIES[layout]:
        raise SpamoInputError("confusable_modality", f"'{weak}' is not a modality of layout {layout} "
                                                     f"({', '.join(LAYOUT_MODALITIES[layout])})")
    a, b = (int(v) for v in difficulty.confusable)
    groups = domain_groups(MODALITY_MODELS[weak], n_domains, difficulty)
    if groups[a] == groups[b]:
        raise SpamoInputError("confusable", f"{weak} itself merges domains {a} and {b}: the pair would be "
                                            "invisible to every modality")


def simulate(n_spots: int = 1296, seed: int = 0, n_domains: int = 5, layout: str = "sim", grid: str = "square",
             n_features: dict | None = None, progress: Callable[[int], None] | None = None,
             difficulty: Difficulty = DEFAULT_DIFFICULTY) -> Simulation:
    """Simulate the modalities of `layout` in memory (`progress` is called with the spots done per step)."""
    check_simulation_args(n_spots, n_domains, layout, grid)
    check_difficulty(difficulty, layout, n_domains)
    tissue = make_tissue(n_spots, seed, n_domains, grid, difficulty)
    modalities = {}
    for name in LAYOUT_MODALITIES[layout]:
        size = (n_features or {}).get(name)
        modalities[name] = simulate_modality(MODALITY_MODELS[name], tissue, seed, n_domains, size, progress,
                                             difficulty)
        modalities[name].uns["spamo_simulation"].update({"layout": layout, "grid": grid})
    return Simulation(modalities=modalities, truth=tissue.labels.astype(np.int64), coords=tissue.coords,
                      layout=layout)


def write_simulation(out_dir: str | Path, n_spots: int = 1296, seed: int = 0, layout: str = "sim",
                     grid: str = "square", n_domains: int = 5, n_features: dict | None = None,
                     progress: Callable[[int], None] | None = None,
                     difficulty: Difficulty = DEFAULT_DIFFICULTY) -> Path:
    """Write a simulation in the folder layout of dataset `layout` (docs/data.md section 1), atomically.

    Modalities are generated and written one at a time (peak memory: one modality), into a temporary sibling
    folder that is renamed into place at the end, so an interrupted run leaves nothing half-written.
    """
    check_simulation_args(n_spots, n_domains, layout, grid)
    check_difficulty(difficulty, layout, n_domains)
    spec = get_dataset_spec(layout)
    out_dir = Path(out_dir)
    tissue = make_tissue(n_spots, seed, n_domains, grid, difficulty)
    with atomic_dir(out_dir) as tmp:
        tmp.chmod(0o755)  # a dataset folder is an ordinary folder, not a private temporary one
        for name in LAYOUT_MODALITIES[layout]:
            size = (n_features or {}).get(name)
            adata = simulate_modality(MODALITY_MODELS[name], tissue, seed, n_domains, size, progress, difficulty)
            adata.uns["spamo_simulation"].update({"layout": layout, "grid": grid})
            write_h5ad(adata, tmp / spec.modality_files[name])
            del adata
        (tmp / spec.truth_file).write_text("\n".join(str(int(v)) for v in tissue.labels) + "\n")
    return out_dir


# ------------------------------------------------------------------------------------------------ presets
PRESET_KEYS = {"layout", "n_spots", "seed", "n_domains", "grid", "description"}
DIFFICULTY_KEYS = set(Difficulty.__dataclass_fields__)


@dataclass(frozen=True)
class Preset:
    """One named, seeded simulation of the selection benchmark (a table of configs/benchmarks/selection.toml)."""

    name: str
    layout: str
    n_spots: int
    seed: int
    n_domains: int = 5
    grid: str = "square"
    description: str = ""
    difficulty: Difficulty = DEFAULT_DIFFICULTY

    def simulate(self, n_features: dict | None = None) -> Simulation:
        return simulate(self.n_spots, self.seed, self.n_domains, self.layout, self.grid, n_features,
                        difficulty=self.difficulty)

    def write(self, out_dir: str | Path, progress: Callable[[int], None] | None = None) -> Path:
        return write_simulation(out_dir, self.n_spots, self.seed, self.layout, self.grid, self.n_domains,
                                progress=progress, difficulty=self.difficulty)


def _preset_from_table(name: str, table: dict, where: Path) -> Preset:
    if not isinstance(table, dict):
        raise SpamoInputError(where, f"[{name}] must be a table")
    unknown = set(table) - PRESET_KEYS - DIFFICULTY_KEYS
    if unknown:
        raise SpamoInputError(where, f"[{name}] has unknown key '{sorted(unknown)[0]}'")
    for key in ("layout", "n_spots", "seed"):
        if key not in table:
            raise SpamoInputError(where, f"[{name}] misses '{key}'")
    hard = {k: table[k] for k in DIFFICULTY_KEYS if k in table}
    if "blind" in hard:
        hard["blind"] = {m: [tuple(p) for p in pairs] for m, pairs in hard["blind"].items()}
    if hard.get("confusable") is not None:
        hard["confusable"] = tuple(hard["confusable"])
    preset = Preset(name=name, layout=table["layout"], n_spots=int(table["n_spots"]), seed=int(table["seed"]),
                    n_domains=int(table.get("n_domains", 5)), grid=table.get("grid", "square"),
                    description=table.get("description", ""), difficulty=Difficulty(**hard))
    try:
        check_simulation_args(preset.n_spots, preset.n_domains, preset.layout, preset.grid)
        check_difficulty(preset.difficulty, preset.layout, preset.n_domains)
    except SpamoInputError as exc:
        raise SpamoInputError(where, f"[{name}] {exc}") from None
    return preset


def load_presets(path: str | Path = PRESET_FILE) -> dict[str, Preset]:
    """Every preset of the benchmark file, in file order."""
    path = Path(path)
    raw = read_toml(path, "simulation preset file")
    return {name: _preset_from_table(name, table, path) for name, table in raw.items()}


def get_preset(name: str, path: str | Path = PRESET_FILE) -> Preset:
    presets = load_presets(path)
    if name not in presets:
        raise SpamoInputError("--preset", f"unknown preset '{name}' (known: {', '.join(presets)})")
    return presets[name]


def is_preset(name: str, path: str | Path = PRESET_FILE) -> bool:
    """Whether `name` is a preset of the benchmark file (False when the file is absent)."""
    return Path(path).is_file() and name in load_presets(path)


def total_steps(n_spots: int, layout: str) -> int:
    """Progress units of one simulation: spots x modalities."""
    return n_spots * len(LAYOUT_MODALITIES[layout])
