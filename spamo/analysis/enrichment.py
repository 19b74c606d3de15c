"""Gene-set enrichment of each domain's RNA markers: over-representation (hypergeometric) and ranked (gseapy prerank).

Gene names match case-insensitively (human gene sets on mouse genes); p-values are adjusted (Benjamini-Hochberg)
within each domain and gene-set source.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import hypergeom

ENRICHMENT_COLUMNS = ["domain", "gene_set", "source", "overlap", "set_size", "p", "p_adj", "method", "nes", "genes"]

Progress = Callable[[str], None]


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
        return empty_enrichment()
    return pd.concat(tables, ignore_index=True)


def _stable_int(label: str) -> int:
    return sum(ord(c) for c in str(label))


def empty_enrichment() -> pd.DataFrame:
    return pd.DataFrame({"domain": pd.Series(dtype=str), "gene_set": pd.Series(dtype=str),
                         "source": pd.Series(dtype=str), "overlap": pd.Series(dtype=np.int64),
                         "set_size": pd.Series(dtype=np.int64), "p": pd.Series(dtype=float),
                         "p_adj": pd.Series(dtype=float), "method": pd.Series(dtype=str),
                         "nes": pd.Series(dtype=float), "genes": pd.Series(dtype=str)})
