"""Downstream biology of the domains: markers, PAGA, gene-set enrichment (`spamo analyze`).

For every domain the analysis ranks marker features in every modality against all other spots (`markers.py`),
connects the domains with PAGA over the neighbour graph of the fused embedding (`paga.py`), and tests gene-set
enrichment of its RNA markers against GMT files or Enrichr libraries (`gene_sets.py`, `enrichment.py`); the figures
are drawn by `figures.py`. `analyze_data(data, labels, embedding)` works on data in memory; `analyze(run_dir)` reads
a `spamo run` folder and calls it (`run.py`).

Outputs, written atomically into `RUN_DIR/analysis/` (or `out_dir`): `markers.parquet`, `enrichment.parquet`,
`paga.parquet`, `markers_<modality>.png`, `top_markers_spatial.png`, `paga.png` (schemas: docs/analysis.md). Bad
input raises `SpamoInputError` before anything is computed or written.
"""

from spamo.analysis.enrichment import (ENRICHMENT_COLUMNS, benjamini_hochberg, over_representation,
                                       prerank_enrichment)
from spamo.analysis.gene_sets import (DEFAULT_ENRICHR_URL, DEFAULT_ONLINE_LIBRARIES, fetch_enrichr_library,
                                      load_gene_sets, parse_gmt_text, read_gmt)
from spamo.analysis.markers import MARKER_COLUMNS, MODALITY_KINDS, NORMALISERS
from spamo.analysis.paga import PAGA_COLUMNS
from spamo.analysis.run import METHODS, AnalysisResult, analyze, analyze_data

__all__ = ["DEFAULT_ENRICHR_URL", "DEFAULT_ONLINE_LIBRARIES", "ENRICHMENT_COLUMNS", "MARKER_COLUMNS", "METHODS",
           "MODALITY_KINDS", "NORMALISERS", "PAGA_COLUMNS", "AnalysisResult", "analyze", "analyze_data",
           "benjamini_hochberg", "fetch_enrichr_library", "load_gene_sets", "over_representation",
           "prerank_enrichment", "parse_gmt_text", "read_gmt"]
