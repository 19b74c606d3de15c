"""Generating a simulation (docs/data.md section 3): in memory (`simulate`) or written in a dataset's folder layout
(`write_simulation`, docs/data.md section 1), after refusing sizes and choices the simulator does not support.

Generation runs in chunks of spots with one random stream per (seed, modality, chunk), so the result depends only on
the seed and the size, and a million spots fit in memory (counts are stored as sparse CSR); a written simulation
appears atomically, one modality in memory at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.sparse as sp

from spamo.dataset_table import get_dataset_spec
from spamo.errors import SpamoInputError
from spamo.io import atomic_dir, write_h5ad
from spamo.simulate.counts import CHUNK_SPOTS, MODALITY_MODELS, ModalityModel
from spamo.simulate.difficulty import DEFAULT_DIFFICULTY, Difficulty
from spamo.simulate.tissue import Tissue, make_tissue

MIN_SPOTS, MAX_SPOTS = 300, 1_000_000
MIN_DOMAINS, MAX_DOMAINS = 4, 8


GRIDS = ("square", "hex")


LAYOUT_MODALITIES = {"sim": ("RNA", "ADT", "ATAC"), "hln": ("RNA", "ADT"), "mb": ("RNA", "ATAC")}


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


def total_steps(n_spots: int, layout: str) -> int:
    """Progress units of one simulation: spots x modalities."""
    return n_spots * len(LAYOUT_MODALITIES[layout])
