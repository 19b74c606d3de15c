"""Gene sets for the enrichment tests: GMT files, and Enrichr libraries fetched by name (the only network access).

Every source is read and checked before any analysis work starts, so a malformed file is one refusal naming the
file, the line and the problem.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Sequence

from spamo.errors import MissingDependencyError, SpamoInputError

DEFAULT_ENRICHR_URL = "https://maayanlab.cloud/Enrichr"
DEFAULT_ONLINE_LIBRARIES = ("GO_Biological_Process_2023",)

GeneSets = dict[str, list[str]]  # gene-set name -> genes


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


def load_gene_sets(gene_sets: Sequence[str | Path], online_gene_sets: Sequence[str]) -> dict[str, GeneSets]:
    """Source name -> gene sets, for every GMT file and every requested Enrichr library (read before any work)."""
    sources: dict[str, GeneSets] = {}
    for path in gene_sets:
        label = Path(path).name
        if label in sources:
            label = str(path)
        sources[label] = read_gmt(path)
    for name in online_gene_sets:
        sources[f"enrichr:{name}"] = fetch_enrichr_library(name)
    return sources
