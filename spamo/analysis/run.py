"""The two entry points of the analysis: `analyze_data` on data in memory, `analyze` on a `spamo run` folder.

`analyze(run_dir)` reads the run folder (`spamo.run_folder`), loads the run's original modality files with the
project's loader (`spamo.datasets`, the same checks as `spamo run`), then calls `analyze_data`: there is one code path
and one reader of raw files. The evaluation layer, which holds the data in memory, calls `analyze_data` directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd

from spamo import run_folder
from spamo.analysis.enrichment import empty_enrichment, enrich_domains
from spamo.analysis.figures import draw_figures
from spamo.analysis.gene_sets import DEFAULT_ONLINE_LIBRARIES, GeneSets, load_gene_sets
from spamo.analysis.markers import (as_group_labels, modality_counts, normalise_modality, rank_markers,
                                    testable_groups)
from spamo.analysis.paga import domain_paga
from spamo.data import MultiOmicsData
from spamo.datasets import load_folder, load_h5mu
from spamo.errors import SpamoInputError
from spamo.io import atomic_dir

METHODS = ("wilcoxon", "t-test")
H5MU_SOURCE = re.compile(r"^(?P<path>.+\.h5mu)\[(?P<key>[^\]]+)\]$")  # how the loader names a MuData modality

Progress = Callable[[str], None]


@dataclass
class AnalysisResult:
    """What the analysis computed, and where it wrote it (`out_dir` None: nothing was written)."""

    out_dir: Path | None
    markers: pd.DataFrame  # MARKER_COLUMNS: top n_top features per domain and modality
    enrichment: pd.DataFrame  # ENRICHMENT_COLUMNS
    paga: pd.DataFrame  # PAGA_COLUMNS, one row per pair of domains
    figures: dict[str, Path] = field(default_factory=dict)  # figure name -> written path
    notes: list[str] = field(default_factory=list)  # things the user should know (skipped groups, data used as is)


def analyze_data(data: MultiOmicsData, labels, embedding, *, spot_names=None, coords=None,
                 modalities: Sequence[str] | None = None, groupby: str = "domain",
                 gene_sets: Sequence[str | Path] | Mapping[str, GeneSets] = (), out_dir: str | Path | None = None,
                 method: str = "wilcoxon", n_top: int = 100, online: bool = False,
                 online_gene_sets: Sequence[str] = (), seed: int = 0, permutations: int = 100, alpha: float = 0.05,
                 n_dot_genes: int = 3, max_features: int | None = 30000,
                 progress: Progress | None = None) -> AnalysisResult:
    """Markers, PAGA and gene-set enrichment of the domains `labels` of the loaded `data`, in memory.

    `labels` (one per spot, any label values) and `embedding` (the fused embedding, N x d) describe the spots
    `spot_names` (default: every spot of `data`, in order; a run's kept spots otherwise); `coords` default to the
    data's coordinates of those spots. `modalities` (default all of `data`'s, RNA first) are the ones tested;
    enrichment uses the first. `groupby` names the label column in the tables. `gene_sets` are GMT files (or
    sources already read by `load_gene_sets`); `online=True` or `online_gene_sets` fetches Enrichr libraries.
    `n_top` markers per domain and modality are kept and form the ORA foreground; `permutations=0` skips prerank.
    Every input is checked before any work; with `out_dir` the tables and figures appear there atomically, without
    it nothing is written and no figure is drawn.
    """
    progress = progress or (lambda message: None)
    _check_options(method, n_top)
    spots = pd.Index(np.asarray(data.spot_names if spot_names is None else spot_names).astype(str), name="spot")
    groups_of_spots = _label_series(labels, spots)
    embedding = np.asarray(embedding)
    if embedding.ndim != 2 or embedding.shape[0] != len(spots):
        raise SpamoInputError("embedding", f"shape {embedding.shape} does not give one row per spot ({len(spots)})")
    names = list(modalities) if modalities is not None else data.modality_names
    unknown = [name for name in names if name not in data.modalities]
    if unknown or not names:
        raise SpamoInputError("modalities", f"{unknown or 'none'} not among the data's ({', '.join(data.modalities)})")
    if coords is None:
        coords = data.coords[_positions(data, spots)]
    if isinstance(gene_sets, Mapping):
        gene_set_sources = dict(gene_sets)
    else:
        progress("reading gene sets")
        online_names = list(online_gene_sets) or (list(DEFAULT_ONLINE_LIBRARIES) if online else [])
        gene_set_sources = load_gene_sets(gene_sets, online_names)

    frame = ad.AnnData(obs=pd.DataFrame(index=spots))
    frame.obs[groupby] = as_group_labels(groups_of_spots)
    frame.obsm[run_folder.OBSM_FUSED] = embedding
    frame.obsm[run_folder.OBSM_SPATIAL] = np.asarray(coords, dtype=np.float64)

    values = frame.obs[groupby].to_numpy()
    groups, dropped = testable_groups(frame.obs[groupby].cat.remove_unused_categories().values)
    if len(groups) < 2:
        raise SpamoInputError("--groupby", f"'{groupby}' has fewer than 2 groups with at least 2 spots")
    notes = [f"group '{g}' has fewer than 2 spots; left out of the marker tests" for g in dropped]
    tested = frame[pd.Series(values).isin(groups).to_numpy()].copy()
    tested.obs[groupby] = pd.Categorical(tested.obs[groupby].astype(str), categories=groups)

    markers, modality_data = [], {}
    for name in names:
        progress(f"markers: {name}")
        adata = modality_counts(data.modalities[name], tested.obs_names, max_features, data.sources.get(name, name))
        note = normalise_modality(name, adata)
        if note:
            notes.append(note)
        adata.obs[groupby] = tested.obs[groupby].values
        markers.append(rank_markers(adata, groupby, method, name))
        modality_data[name] = adata
    all_markers = pd.concat(markers, ignore_index=True)
    top_markers = all_markers[all_markers["rank"] <= n_top].reset_index(drop=True)

    rna_name = names[0]
    enrichment = empty_enrichment()
    if gene_set_sources:
        rna = all_markers[all_markers["modality"] == rna_name]
        enrichment = enrich_domains(rna, list(modality_data[rna_name].var_names), gene_set_sources, n_top,
                                    alpha, permutations, seed, progress)

    progress("PAGA")
    paga = domain_paga(tested, groupby, seed)
    if out_dir is None:
        return AnalysisResult(out_dir=None, markers=top_markers, enrichment=enrichment, paga=paga, notes=notes)

    final_dir = Path(out_dir)
    with atomic_dir(final_dir) as tmp:
        progress("writing tables")
        _write_parquet(top_markers, tmp / "markers.parquet")
        _write_parquet(enrichment, tmp / "enrichment.parquet")
        _write_parquet(paga, tmp / "paga.parquet")
        progress("drawing figures")
        figure_names = draw_figures(tmp, tested, groupby, modality_data, top_markers, n_dot_genes, seed)
    return AnalysisResult(out_dir=final_dir, markers=top_markers, enrichment=enrichment, paga=paga,
                          figures={k: final_dir / v for k, v in figure_names.items()}, notes=notes)


def analyze(run_dir: str | Path, groupby: str = "domain", gene_sets: Sequence[str | Path] = (),
            out_dir: str | Path | None = None, method: str = "wilcoxon", n_top: int = 100, online: bool = False,
            online_gene_sets: Sequence[str] = (), seed: int = 0, permutations: int = 100, alpha: float = 0.05,
            n_dot_genes: int = 3, max_features: int | None = 30000,
            progress: Progress | None = None) -> AnalysisResult:
    """Markers, PAGA and gene-set enrichment of the domains of one `spamo run` output folder.

    `groupby` is any label key of `embedding.h5ad` obs ("domain", "truth"); the other arguments are those of
    `analyze_data`. The outputs go to `out_dir` (default `RUN_DIR/analysis`). Every refusal (no run folder, an
    unknown label key, a moved modality file, a bad gene-set file) comes before the modality files are read.
    """
    progress = progress or (lambda message: None)
    _check_options(method, n_top)
    run_dir = Path(run_dir)
    stored = run_folder.read_embedding_anndata(run_dir)
    where = run_dir / run_folder.EMBEDDING_FILE
    if groupby not in stored.obs.columns:
        keys = ", ".join(map(str, stored.obs.columns)) or "none"
        raise SpamoInputError("--groupby", f"label key '{groupby}' not in {where.name} obs (available: {keys})")
    meta = stored.uns.get(run_folder.UNS_KEY, {})
    if len(meta.get("modalities", [])) == 0 or len(meta.get("sources", {})) == 0:
        raise SpamoInputError(where, f"uns['{run_folder.UNS_KEY}'] lacks 'modalities' or 'sources'")
    sources = _run_sources(meta)
    online_names = list(online_gene_sets) or (list(DEFAULT_ONLINE_LIBRARIES) if online else [])
    progress("reading gene sets")
    gene_set_sources = load_gene_sets(gene_sets, online_names)
    progress("markers: reading the modality files")
    data = _load_sources(sources, str(meta.get("data_type", "")))
    return analyze_data(data, stored.obs[groupby], stored.obsm[run_folder.OBSM_FUSED],
                        spot_names=stored.obs_names, coords=stored.obsm[run_folder.OBSM_SPATIAL],
                        modalities=list(sources), groupby=groupby, gene_sets=gene_set_sources,
                        out_dir=Path(out_dir) if out_dir is not None else run_dir / "analysis", method=method,
                        n_top=n_top, seed=seed, permutations=permutations, alpha=alpha, n_dot_genes=n_dot_genes,
                        max_features=max_features, progress=progress)


def _check_options(method: str, n_top: int) -> None:
    if method not in METHODS:
        raise SpamoInputError("--method", f"unknown method '{method}' (choose from {', '.join(METHODS)})")
    if n_top < 1:
        raise SpamoInputError("--n-top", "must be at least 1")


def _label_series(labels, spots: pd.Index) -> pd.Series:
    """The labels as a Series over `spots`; integral numbers become ints, so domain 3 is "3", not "3.0"."""
    values = labels.to_numpy() if isinstance(labels, pd.Series) else np.asarray(labels)
    if len(values) != len(spots):
        raise SpamoInputError("labels", f"{len(values)} labels for {len(spots)} spots")
    if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values == np.round(values)):
        values = values.astype(np.int64)
    return pd.Series(values, index=spots)


def _positions(data: MultiOmicsData, spots: pd.Index) -> np.ndarray:
    positions = pd.Index(np.asarray(data.spot_names).astype(str)).get_indexer(spots)
    if (positions < 0).any():
        raise SpamoInputError("spot_names", f"{int((positions < 0).sum())} spots are not in the data "
                                            f"(e.g. '{spots[positions < 0][0]}')")
    return positions


def _run_sources(meta) -> dict[str, str]:
    """Modality name -> original source, in the run's modality order; refuses a file that no longer exists."""
    sources = {}
    for name in list(meta["modalities"]):
        source = meta["sources"].get(name)
        if source is None:
            continue
        source = str(source)
        match = H5MU_SOURCE.match(source)
        if not Path(match["path"] if match else source).is_file():
            raise SpamoInputError(source, f"original {name} file no longer exists (moved or deleted since the run)")
        sources[str(name)] = source
    if not sources:
        raise SpamoInputError(run_folder.EMBEDDING_FILE, f"uns['{run_folder.UNS_KEY}']['sources'] names no modality "
                                                         "file")
    return sources


def _load_sources(sources: dict[str, str], data_type: str) -> MultiOmicsData:
    """The run's modalities, read again by the project's loader (a MuData file, or .h5ad files anywhere)."""
    in_mudata = {name: H5MU_SOURCE.match(source) for name, source in sources.items()}
    if all(in_mudata.values()):
        files = {match["path"] for match in in_mudata.values()}
        if len(files) == 1:
            return load_h5mu(files.pop(), data_type, modalities={n: m["key"] for n, m in in_mudata.items()})
    if any(in_mudata.values()):
        raise SpamoInputError(run_folder.EMBEDDING_FILE, "the run's modalities come from several MuData files or "
                                                         "from MuData and .h5ad files together; analyse them apart")
    files = {name: Path(source) for name, source in sources.items()}
    return load_folder(next(iter(files.values())).parent, data_type, modality_files=files)


def _write_parquet(table: pd.DataFrame, path: Path) -> None:
    table.to_parquet(path, index=False, engine="pyarrow")
