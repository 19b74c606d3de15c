"""Downstream biology of the domains of a `spamo run`: markers, PAGA, gene-set enrichment.

`analyze(run_dir)` reads `RUN_DIR/embedding.h5ad` (the domains, the fused embedding, and where the original
modality files live), then for every domain:

- ranks marker features in every modality against all other spots (scanpy `rank_genes_groups`, Wilcoxon by
  default, `t-test` on request; Benjamini-Hochberg adjusted p-values) on normalised data:
  RNA and any unknown modality: counts normalised to 1e4 per spot, log1p;
  ADT / protein: centred log ratio per spot (Seurat style, the same transform the model's preprocessing uses);
  ATAC / peaks: counts normalised to 1e4 per spot, log1p. The TF-IDF of LSI multiplies each peak by a constant
  (its inverse document frequency), so per peak it is a monotone transform of this one: Wilcoxon ranks, scores and
  p-values are identical; log1p of normalised counts is kept because scanpy's log fold changes assume log1p data.
  A modality whose matrix is not counts (non-integer or negative values, e.g. a pre-normalised peak file) is
  used as given, and the result says so in its notes.
- connects the domains with PAGA over the neighbour graph of the fused embedding (`X_spamo`);
- tests gene-set enrichment of its RNA markers against the gene sets of GMT files: an over-representation test
  (hypergeometric, universe = every RNA feature tested, foreground = the domain's top `n_top` markers that are
  up-regulated with adjusted p < `alpha`), and a ranked test (gseapy prerank on the Wilcoxon/t scores of all RNA
  features, seeded, `permutations` permutations). P-values are adjusted within each domain and gene-set file.
  Gene names match case-insensitively (human gene sets on mouse genes). Enrichr libraries are fetched by name only
  when asked for (`online_gene_sets`), from `$SPAMO_ENRICHR_URL` (default the public Enrichr server).

Everything is written atomically into `RUN_DIR/analysis/` (or `out_dir`): `markers.parquet`,
`enrichment.parquet`, `paga.parquet`, `markers_<modality>.png`, `top_markers_spatial.png`, `paga.png`.
Bad input (no `embedding.h5ad`, an unknown label key, a missing or malformed GMT file, a vanished modality file)
raises `SpamoInputError` before anything is computed or written.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from spamo.errors import MissingDependencyError, SpamoInputError
from spamo.io import atomic_dir

METHODS = ("wilcoxon", "t-test")
MARKER_COLUMNS = ["domain", "modality", "feature", "rank", "score", "logfoldchange", "pval", "pval_adj"]
ENRICHMENT_COLUMNS = ["domain", "gene_set", "source", "overlap", "set_size", "p", "p_adj", "method", "nes", "genes"]
PAGA_COLUMNS = ["source_domain", "target_domain", "connectivity", "in_tree"]
DEFAULT_ENRICHR_URL = "https://maayanlab.cloud/Enrichr"
DEFAULT_ONLINE_LIBRARIES = ("GO_Biological_Process_2023",)

Progress = Callable[[str], None]


@dataclass
class AnalysisResult:
    """What `analyze` computed and where it wrote it."""

    out_dir: Path
    markers: pd.DataFrame  # MARKER_COLUMNS: top n_top features per domain and modality
    enrichment: pd.DataFrame  # ENRICHMENT_COLUMNS
    paga: pd.DataFrame  # PAGA_COLUMNS, one row per pair of domains
    figures: dict[str, Path] = field(default_factory=dict)  # figure name -> written path
    notes: list[str] = field(default_factory=list)  # things the user should know (skipped groups, data used as is)


# ------------------------------------------------------------------------------------------------ gene-set files


def parse_gmt_text(text: str, where: str | Path) -> dict[str, list[str]]:
    """Gene sets of GMT text (name <tab> description <tab> gene ...), refusing any line that is not one.

    Blank lines are skipped; empty gene fields (trailing tabs, Enrichr's format) are ignored; ",weight" suffixes
    on genes (Enrichr's fuzzy libraries) are dropped.
    """
    gene_sets: dict[str, list[str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) < 3:
            raise SpamoInputError(where, f"line {number}: fewer than 3 tab-separated fields "
                                         "(expected name, description, genes)")
        name = fields[0].strip()
        if not name:
            raise SpamoInputError(where, f"line {number}: empty gene-set name")
        genes = [g.strip().split(",")[0] for g in fields[2:]]
        genes = list(dict.fromkeys(g for g in genes if g))
        if not genes:
            raise SpamoInputError(where, f"line {number}: gene set '{name}' is empty")
        if name in gene_sets:
            raise SpamoInputError(where, f"line {number}: duplicate gene-set name '{name}'")
        gene_sets[name] = genes
    if not gene_sets:
        raise SpamoInputError(where, "no gene sets in the file")
    return gene_sets


def read_gmt(path: str | Path) -> dict[str, list[str]]:
    """Gene sets of one GMT file; a missing, unreadable or malformed file is refused."""
    path = Path(path)
    if not path.is_file():
        raise SpamoInputError(path, "gene-set file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpamoInputError(path, f"cannot read gene-set file ({type(exc).__name__})") from None
    return parse_gmt_text(text, path)


def fetch_enrichr_library(name: str, timeout: float = 30.0) -> dict[str, list[str]]:
    """Download one Enrichr gene-set library by name (the only network access of the analysis)."""
    base = os.environ.get("SPAMO_ENRICHR_URL", DEFAULT_ENRICHR_URL).rstrip("/")
    url = f"{base}/geneSetLibrary?mode=text&libraryName={urllib.parse.quote(name)}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        raise SpamoInputError("--online-gene-sets",
                              f"Enrichr has no library '{name}' (HTTP {exc.code} from {base})") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MissingDependencyError("--online-gene-sets", f"cannot reach Enrichr at {base} to fetch '{name}' "
                                     f"(network absent? {str(reason).splitlines()[0] if str(reason) else ''})") \
            from None
    return parse_gmt_text(text, f"enrichr:{name}")


def load_gene_sets(gene_sets: Sequence[str | Path], online_gene_sets: Sequence[str]) -> dict[str, dict]:
    """Source name -> gene sets, for every GMT file and every requested Enrichr library (read before any work)."""
    sources: dict[str, dict[str, list[str]]] = {}
    for path in gene_sets:
        label = Path(path).name
        if label in sources:
            label = str(path)
        sources[label] = read_gmt(path)
    for name in online_gene_sets:
        sources[f"enrichr:{name}"] = fetch_enrichr_library(name)
    return sources


# ------------------------------------------------------------------------------------------------ run folder


def load_embedding(run_dir: str | Path, groupby: str):
    """The run's embedding AnnData with `groupby` checked; refuses a folder that is not a run's output."""
    import anndata as ad

    run_dir = Path(run_dir)
    path = run_dir / "embedding.h5ad"
    if not run_dir.is_dir():
        raise SpamoInputError(run_dir, "run folder not found")
    if not path.is_file():
        raise SpamoInputError(run_dir, "no embedding.h5ad in the run folder (is it the output of `spamo run`?)")
    try:
        adata = ad.read_h5ad(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one refusal
        raise SpamoInputError(path, f"cannot read ({type(exc).__name__})") from None
    if groupby not in adata.obs.columns:
        keys = ", ".join(map(str, adata.obs.columns)) or "none"
        raise SpamoInputError("--groupby", f"label key '{groupby}' not in {path.name} obs (available: {keys})")
    if "X_spamo" not in adata.obsm:
        raise SpamoInputError(path, "no obsm['X_spamo'] (fused embedding)")
    if "spatial" not in adata.obsm:
        raise SpamoInputError(path, "no obsm['spatial'] (coordinates)")
    meta = adata.uns.get("spamo", {})
    if len(meta.get("modalities", [])) == 0 or len(meta.get("sources", {})) == 0:
        raise SpamoInputError(path, "uns['spamo'] lacks 'modalities' or 'sources'")
    adata.obs[groupby] = _as_group_labels(adata.obs[groupby])
    return adata


def _as_group_labels(values: pd.Series) -> pd.Categorical:
    """String categories, in numeric order when every label is a number (so domain 10 comes after 9)."""
    strings = values.astype(object).where(values.notna(), None)
    strings = pd.Series([None if v is None else str(v) for v in strings], index=values.index)
    labels = sorted(set(strings.dropna()))
    try:
        labels = sorted(labels, key=float)
    except ValueError:
        pass
    return pd.Categorical(strings, categories=labels)


def modality_sources(adata) -> dict[str, Path]:
    """Modality name -> original file; refuses a file that no longer exists."""
    meta = adata.uns["spamo"]
    sources = {}
    for name in list(meta["modalities"]):
        source = meta["sources"].get(name)
        if source is None:
            continue
        path = Path(str(source))
        if not path.is_file():
            raise SpamoInputError(path, f"original {name} file no longer exists (moved or deleted since the run)")
        sources[str(name)] = path
    if not sources:
        raise SpamoInputError("embedding.h5ad", "uns['spamo']['sources'] names no modality file")
    return sources


def load_modality(name: str, path: Path, spot_names: pd.Index, max_features: int | None):
    """Raw counts of one modality for the run's spots, in the run's order (`layers['counts']` when present)."""
    adata = _read_modality_file(name, path)
    adata.obs_names = adata.obs_names.astype(str)
    missing = spot_names.difference(adata.obs_names)
    if len(missing):
        raise SpamoInputError(path, f"{len(missing)} spots of the run are not in this file (e.g. '{missing[0]}')")
    if not adata.obs_names.is_unique:
        raise SpamoInputError(path, "duplicated spot names")
    adata = adata[spot_names]
    matrix = adata.layers["counts"] if "counts" in adata.layers else adata.X
    import anndata as ad

    out = ad.AnnData(X=_as_float_matrix(matrix), obs=pd.DataFrame(index=spot_names),
                     var=pd.DataFrame(index=adata.var_names.astype(str)))
    out.var_names_make_unique()
    return _keep_detected_features(out, max_features)


def _read_modality_file(name: str, path: Path):
    import anndata as ad

    try:
        if path.suffix == ".h5mu":
            import mudata as md

            mdata = md.read_h5mu(path)
            if name not in mdata.mod:
                raise SpamoInputError(path, f"no modality '{name}' (has: {', '.join(mdata.mod)})")
            return mdata.mod[name]
        return ad.read_h5ad(path)
    except SpamoInputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise SpamoInputError(path, f"cannot read ({type(exc).__name__})") from None


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


# ------------------------------------------------------------------------------------------------ normalisation


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
    from spamo.preprocessing import clr

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


# ------------------------------------------------------------------------------------------------ markers


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


# ------------------------------------------------------------------------------------------------ enrichment


def benjamini_hochberg(pvalues: Iterable[float]) -> np.ndarray:
    """BH adjusted p-values (monotone, capped at 1)."""
    p = np.asarray(list(pvalues), dtype=np.float64)
    if p.size == 0:
        return p
    order = np.argsort(p)
    scaled = p[order] * p.size / np.arange(1, p.size + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def _case_insensitive_sets(gene_sets: dict[str, list[str]], universe_upper: set[str]) -> dict[str, list[str]]:
    """Gene sets upper-cased and restricted to the universe."""
    restricted = {}
    for name, genes in gene_sets.items():
        members = list(dict.fromkeys(g.upper() for g in genes if g.upper() in universe_upper))
        restricted[name] = members
    return restricted


def over_representation(foreground: Sequence[str], universe: Sequence[str], gene_sets: dict[str, list[str]],
                        min_set_size: int = 3) -> pd.DataFrame:
    """Hypergeometric over-representation of each gene set among `foreground` (all within `universe`)."""
    from scipy.stats import hypergeom

    upper_to_name = {}
    for g in universe:
        upper_to_name.setdefault(g.upper(), g)
    fg = {g.upper() for g in foreground} & set(upper_to_name)
    rows = []
    for name, members in _case_insensitive_sets(gene_sets, set(upper_to_name)).items():
        if len(members) < min_set_size:
            continue
        hits = [upper_to_name[g] for g in members if g in fg]
        p = float(hypergeom.sf(len(hits) - 1, len(upper_to_name), len(members), len(fg))) if fg else 1.0
        rows.append({"gene_set": name, "overlap": len(hits), "set_size": len(members), "p": p,
                     "nes": np.nan, "genes": ";".join(hits)})
    table = pd.DataFrame(rows, columns=["gene_set", "overlap", "set_size", "p", "nes", "genes"])
    table["p_adj"] = benjamini_hochberg(table["p"])
    table["method"] = "ora"
    table = table[table["overlap"] > 0]
    return table.sort_values(["p", "gene_set"], kind="stable").reset_index(drop=True)


def prerank_enrichment(scores: pd.Series, gene_sets: dict[str, list[str]], permutations: int, seed: int,
                       min_set_size: int = 3) -> pd.DataFrame:
    """Ranked enrichment (gseapy prerank, offline, seeded) of gene sets along one domain's marker scores."""
    import gseapy

    ranking = scores.copy()
    ranking.index = ranking.index.str.upper()
    ranking = ranking[~ranking.index.duplicated()].sort_values(ascending=False, kind="stable")
    # equal scores (genes with the same rank sums) are ordered as the marker table orders them, made explicit
    # with a vanishing strictly decreasing offset so the prerank order is deterministic
    ranking = ranking - np.arange(ranking.size) * 1e-9
    restricted = {k: v for k, v in _case_insensitive_sets(gene_sets, set(ranking.index)).items()
                  if len(v) >= min_set_size}
    empty = pd.DataFrame(columns=["gene_set", "overlap", "set_size", "p", "nes", "genes", "p_adj", "method"])
    if not restricted:
        return empty
    try:
        result = gseapy.prerank(rnk=ranking, gene_sets=restricted, permutation_num=permutations, seed=seed,
                                threads=1, outdir=None, no_plot=True, verbose=False, min_size=min_set_size,
                                max_size=max(len(v) for v in restricted.values()))
    except (LookupError, ValueError) as exc:  # gseapy refuses when no set passes its filters
        if "gene set" in str(exc).lower() or "filter" in str(exc).lower():
            return empty
        raise
    res = result.res2d
    tag = res["Tag %"].astype(str).str.split("/", expand=True)
    upper_to_name: dict[str, str] = {}
    for name in scores.index:
        upper_to_name.setdefault(name.upper(), name)
    table = pd.DataFrame({
        "gene_set": res["Term"].astype(str),
        "overlap": tag[0].astype(int),
        "set_size": tag[1].astype(int),
        "p": pd.to_numeric(res["NOM p-val"], errors="coerce").astype(float),
        "nes": pd.to_numeric(res["NES"], errors="coerce").astype(float),
        "genes": res["Lead_genes"].astype(str).map(
            lambda s: ";".join(upper_to_name.get(g, g) for g in s.split(";") if g)),
        "p_adj": pd.to_numeric(res["FDR q-val"], errors="coerce").astype(float),
    })
    table["method"] = "prerank"
    return table.sort_values(["p", "nes", "gene_set"], ascending=[True, False, True], kind="stable") \
        .reset_index(drop=True)


def enrich_domains(rna_ranking: pd.DataFrame, universe: Sequence[str], sources: dict[str, dict], n_top: int,
                   alpha: float, permutations: int, seed: int, progress: Progress) -> pd.DataFrame:
    """ORA and prerank for every domain and every gene-set source."""
    tables = []
    for domain, ranked in rna_ranking.groupby("domain", sort=False):
        ranked = ranked.sort_values("rank")
        up = ranked[(ranked["logfoldchange"] > 0) & (ranked["pval_adj"] < alpha)]
        foreground = up["feature"].head(n_top).tolist()
        scores = pd.Series(ranked["score"].to_numpy(), index=pd.Index(ranked["feature"].astype(str)))
        for source, gene_sets in sources.items():
            progress(f"enrichment: domain {domain}, {source}")
            for table in (over_representation(foreground, universe, gene_sets),
                          prerank_enrichment(scores, gene_sets, permutations, seed + _stable_int(domain))
                          if permutations > 0 else None):
                if table is None or table.empty:
                    continue
                table = table.copy()
                table.insert(0, "domain", str(domain))
                table["source"] = source
                tables.append(table[ENRICHMENT_COLUMNS])
    if not tables:
        return _empty_enrichment()
    return pd.concat(tables, ignore_index=True)


def _stable_int(label: str) -> int:
    return sum(ord(c) for c in str(label))


def _empty_enrichment() -> pd.DataFrame:
    return pd.DataFrame({"domain": pd.Series(dtype=str), "gene_set": pd.Series(dtype=str),
                         "source": pd.Series(dtype=str), "overlap": pd.Series(dtype=np.int64),
                         "set_size": pd.Series(dtype=np.int64), "p": pd.Series(dtype=float),
                         "p_adj": pd.Series(dtype=float), "method": pd.Series(dtype=str),
                         "nes": pd.Series(dtype=float), "genes": pd.Series(dtype=str)})


# ------------------------------------------------------------------------------------------------ PAGA


EXACT_KNN_MAX_SPOTS = 50_000


class _CsrOutput:
    """Wraps a kNN transformer so its graph comes back as `csr_matrix`.

    scanpy 1.11.5's own pynndescent path fails with scipy >= 1.15 (the graph is a `csr_array`, which has no
    `getnnz`); handing scanpy a transformer object whose output is converted avoids it.
    """

    def __init__(self, inner):
        self.inner = inner

    def get_params(self, deep: bool = True) -> dict:
        return self.inner.get_params(deep)

    def set_params(self, **params):
        self.inner.set_params(**params)
        return self

    def fit(self, X, y=None):
        self.inner.fit(X)
        return self

    def transform(self, X):
        return sp.csr_matrix(self.inner.transform(X))

    def fit_transform(self, X, y=None):
        return sp.csr_matrix(self.inner.fit_transform(X))


def knn_transformer(n_obs: int, n_neighbors: int, seed: int):
    """Exact kNN (scikit-learn, chunked, memory O(N k)) up to EXACT_KNN_MAX_SPOTS spots; approximate above.

    Exact search costs O(N^2 d) time (3 s at 10,000 spots on 2 cores); NN-descent costs a one-off numba compile
    (about a minute) and then scales near-linearly.
    """
    if n_obs <= EXACT_KNN_MAX_SPOTS:
        return "sklearn"
    from pynndescent import PyNNDescentTransformer

    return _CsrOutput(PyNNDescentTransformer(n_neighbors=n_neighbors, metric="euclidean", random_state=seed,
                                             n_jobs=1))


def domain_paga(embedding, groupby: str, seed: int, n_neighbors: int = 15,
                neighbors_method: str = "gauss") -> pd.DataFrame:
    """PAGA connectivity between domains over the kNN graph of the fused embedding (sparse, O(N k)).

    The kNN graph's edges are weighted with scanpy's Gaussian kernel by default: the same graph as the "umap"
    weighting, without its ~10 s numba compilation on first use; `neighbors_method="umap"` gives scanpy's default.
    """
    import scanpy as sc

    k = min(n_neighbors, embedding.n_obs - 1)
    sc.pp.neighbors(embedding, use_rep="X_spamo", n_neighbors=k, method=neighbors_method, random_state=seed,
                    transformer=knn_transformer(embedding.n_obs, k, seed))
    sc.tl.paga(embedding, groups=groupby)
    groups = list(embedding.obs[groupby].cat.categories)
    connectivity = sp.csr_matrix(embedding.uns["paga"]["connectivities"]).toarray()
    tree = sp.csr_matrix(embedding.uns["paga"]["connectivities_tree"]).toarray()
    tree = (tree + tree.T) > 0
    rows = [{"source_domain": groups[i], "target_domain": groups[j], "connectivity": float(connectivity[i, j]),
             "in_tree": bool(tree[i, j])}
            for i in range(len(groups)) for j in range(i + 1, len(groups))]
    return pd.DataFrame(rows, columns=PAGA_COLUMNS).astype({"source_domain": str, "target_domain": str,
                                                            "connectivity": float, "in_tree": bool})


# ------------------------------------------------------------------------------------------------ figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _group_colors(n: int) -> list:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _point_size(n: int) -> float:
    return float(np.clip(20000.0 / max(n, 1), 0.3, 30.0))


def _save_png(save: Callable, path: Path, dpi: int) -> None:
    """Render through `save(buffer, dpi=, format=)`, then store as a 256-colour palette PNG (about 3x smaller)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    save(buffer, dpi=dpi, format="png")
    buffer.seek(0)
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                                dither=Image.Dither.NONE)
        palette.save(path, format="PNG", optimize=True)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def plot_marker_dots(adata, groupby: str, path: Path, n_genes: int, title: str) -> None:
    """Dot plot of the top markers of every domain (scanpy), saved as PNG."""
    import scanpy as sc

    plt = _pyplot()
    dotplot = sc.pl.rank_genes_groups_dotplot(adata, groupby=groupby, n_genes=n_genes, show=False,
                                              return_fig=True, title=title, dendrogram=False)
    _save_png(lambda buffer, **kw: dotplot.savefig(buffer, bbox_inches="tight", **kw), path, dpi=90)
    plt.close("all")


def plot_top_markers_spatial(coords: np.ndarray, labels: pd.Categorical,
                             values: dict[str, dict[str, tuple[str, np.ndarray]]], path: Path) -> None:
    """One column per domain: where the domain is, then its top marker's normalised value in each modality.

    Reading down a column shows which modality tells that domain apart (a modality blind to it shows a marker
    shared with another domain).
    """
    plt = _pyplot()
    domains = list(labels.categories)
    modalities = list(values)
    nrows, ncols = 1 + len(modalities), len(domains)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.9 * ncols, 1.95 * nrows), squeeze=False)
    size = _point_size(len(coords)) * 0.35
    colors = _group_colors(len(domains))
    codes = np.asarray(labels.codes)
    for col, domain in enumerate(domains):
        ax = axes[0, col]
        inside = codes == col
        ax.scatter(coords[~inside, 0], coords[~inside, 1], s=size, color="0.85", rasterized=True, linewidths=0)
        ax.scatter(coords[inside, 0], coords[inside, 1], s=size, color=colors[col], rasterized=True, linewidths=0)
        ax.set_title(f"domain {domain} ({inside.sum()})", fontsize=8)
        for row, modality in enumerate(modalities, start=1):
            ax = axes[row, col]
            if domain not in values[modality]:
                ax.axis("off")
                continue
            feature, value = values[modality][domain]
            high = float(np.quantile(value, 0.99)) if value.size else 1.0
            ax.scatter(coords[:, 0], coords[:, 1], c=value, s=size, cmap="viridis", vmin=0.0 if value.min() >= 0
                       else None, vmax=high if high > 0 else None, rasterized=True, linewidths=0)
            ax.set_title(f"{modality}: {feature}", fontsize=7)
    for ax in axes.flat:
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.4)
    _save_png(fig.savefig, path, dpi=72)
    plt.close(fig)


def paga_layout(embedding) -> np.ndarray:
    """A deterministic force-directed layout of the PAGA graph (Fruchterman-Reingold from a circle).

    Computed here rather than by scanpy, whose own layout step fails on scipy's current sparse indexing.
    """
    import igraph
    import scipy.sparse as sparse

    connectivities = sparse.coo_matrix(embedding.uns["paga"]["connectivities"])
    n = connectivities.shape[0]
    upper = connectivities.row < connectivities.col
    graph = igraph.Graph(n=n, edges=list(zip(connectivities.row[upper].tolist(), connectivities.col[upper].tolist())))
    angles = 2 * np.pi * np.arange(n) / max(n, 1)
    start = np.column_stack([np.cos(angles), np.sin(angles)]).tolist()
    if graph.ecount() == 0:
        return np.asarray(start)
    layout = graph.layout_fruchterman_reingold(weights=connectivities.data[upper].tolist(), seed=start, niter=500)
    return np.asarray(layout.coords)


def plot_paga(embedding, groupby: str, path: Path, seed: int) -> None:
    """PAGA graph of the domains: abstract layout, and drawn at the domains' spatial centroids over the tissue."""
    import scanpy as sc

    plt = _pyplot()
    labels = embedding.obs[groupby].cat
    colors = _group_colors(len(labels.categories))
    embedding.uns[f"{groupby}_colors"] = [plt.matplotlib.colors.to_hex(c) for c in colors]
    coords = np.asarray(embedding.obsm["spatial"], dtype=float)
    codes = np.asarray(labels.codes)
    centroids = np.stack([coords[codes == i].mean(axis=0) for i in range(len(labels.categories))])
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4.2))
    sc.pl.paga(embedding, ax=left, show=False, pos=paga_layout(embedding), threshold=0.02, fontsize=8,
               title="PAGA of the domains (fused embedding)", add_pos=False, frameon=False)
    right.scatter(coords[:, 0], coords[:, 1], s=_point_size(len(coords)), c=[colors[c] for c in codes],
                  alpha=0.25, rasterized=True, linewidths=0)
    sc.pl.paga(embedding, ax=right, show=False, pos=centroids, threshold=0.02, fontsize=8,
               title="the same graph at the domains' spatial centroids", add_pos=False, frameon=False)
    right.set_aspect("equal")
    fig.tight_layout()
    _save_png(fig.savefig, path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ entry point


def analyze(run_dir: str | Path, groupby: str = "domain", gene_sets: Sequence[str | Path] = (),
            out_dir: str | Path | None = None, method: str = "wilcoxon", n_top: int = 100, online: bool = False,
            online_gene_sets: Sequence[str] = (), seed: int = 0, permutations: int = 100, alpha: float = 0.05,
            n_dot_genes: int = 3, max_features: int | None = 30000,
            progress: Progress | None = None) -> AnalysisResult:
    """Markers, PAGA and gene-set enrichment of the domains of one `spamo run` output folder.

    `groupby` is any label key of `embedding.h5ad` obs ("domain", "truth"); `gene_sets` are GMT files;
    `online=True` (or naming `online_gene_sets`) fetches Enrichr libraries (default GO Biological Process 2023);
    `n_top` markers per domain and modality are written and form the ORA foreground; `permutations` = 0 skips the
    prerank test. All input is validated before any work; outputs appear atomically in `out_dir`
    (default `RUN_DIR/analysis`). The evaluation layer calls this function directly.
    """
    progress = progress or (lambda message: None)
    if method not in METHODS:
        raise SpamoInputError("--method", f"unknown method '{method}' (choose from {', '.join(METHODS)})")
    if n_top < 1:
        raise SpamoInputError("--n-top", "must be at least 1")
    run_dir = Path(run_dir)
    embedding = load_embedding(run_dir, groupby)
    sources = modality_sources(embedding)
    online_names = list(online_gene_sets) or (list(DEFAULT_ONLINE_LIBRARIES) if online else [])
    progress("reading gene sets")
    gene_set_sources = load_gene_sets(gene_sets, online_names)

    labels = embedding.obs[groupby].to_numpy()
    groups, dropped = testable_groups(embedding.obs[groupby].cat.remove_unused_categories().values)
    if len(groups) < 2:
        raise SpamoInputError("--groupby", f"'{groupby}' has fewer than 2 groups with at least 2 spots")
    notes = [f"group '{g}' has fewer than 2 spots; left out of the marker tests" for g in dropped]
    tested = embedding[pd.Series(labels).isin(groups).to_numpy()].copy()
    tested.obs[groupby] = pd.Categorical(tested.obs[groupby].astype(str), categories=groups)

    markers, modality_data = [], {}
    for name, path in sources.items():
        progress(f"markers: {name}")
        adata = load_modality(name, path, tested.obs_names, max_features)
        note = normalise_modality(name, adata)
        if note:
            notes.append(note)
        adata.obs[groupby] = tested.obs[groupby].values
        markers.append(rank_markers(adata, groupby, method, name))
        modality_data[name] = adata
    all_markers = pd.concat(markers, ignore_index=True)
    top_markers = all_markers[all_markers["rank"] <= n_top].reset_index(drop=True)

    rna_name = next(iter(sources))
    enrichment = _empty_enrichment()
    if gene_set_sources:
        rna = all_markers[all_markers["modality"] == rna_name]
        enrichment = enrich_domains(rna, list(modality_data[rna_name].var_names), gene_set_sources, n_top,
                                    alpha, permutations, seed, progress)

    progress("PAGA")
    paga = domain_paga(tested, groupby, seed)

    with atomic_dir(Path(out_dir) if out_dir is not None else run_dir / "analysis") as tmp:
        progress("writing tables")
        _write_parquet(top_markers, tmp / "markers.parquet")
        _write_parquet(enrichment, tmp / "enrichment.parquet")
        _write_parquet(paga, tmp / "paga.parquet")
        progress("drawing figures")
        figure_names = _draw_figures(tmp, tested, groupby, modality_data, top_markers, n_dot_genes, seed)
    final_dir = Path(out_dir) if out_dir is not None else run_dir / "analysis"
    return AnalysisResult(out_dir=final_dir, markers=top_markers, enrichment=enrichment, paga=paga,
                          figures={k: final_dir / v for k, v in figure_names.items()}, notes=notes)


def _write_parquet(table: pd.DataFrame, path: Path) -> None:
    table.to_parquet(path, index=False, engine="pyarrow")


def _draw_figures(folder: Path, tested, groupby: str, modality_data: dict, top_markers: pd.DataFrame,
                  n_dot_genes: int, seed: int) -> dict[str, str]:
    figures = {}
    for name, adata in modality_data.items():
        file = f"markers_{_safe_name(name)}.png"
        plot_marker_dots(adata, groupby, folder / file, n_dot_genes, f"{name} markers per {groupby}")
        figures[f"markers_{name}"] = file
    values: dict[str, dict] = {}
    for name, adata in modality_data.items():
        firsts = top_markers[(top_markers["modality"] == name) & (top_markers["rank"] == 1)]
        values[name] = {}
        for domain, feature in zip(firsts["domain"], firsts["feature"]):
            column = adata[:, feature].X
            values[name][domain] = (feature,
                                    np.asarray(column.toarray() if sp.issparse(column) else column).ravel())
    plot_top_markers_spatial(np.asarray(tested.obsm["spatial"], dtype=float), tested.obs[groupby].values,
                             values, folder / "top_markers_spatial.png")
    figures["top_markers_spatial"] = "top_markers_spatial.png"
    plot_paga(tested, groupby, folder / "paga.png", seed)
    figures["paga"] = "paga.png"
    return figures
