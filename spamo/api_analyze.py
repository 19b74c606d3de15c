"""The Python API's downstream analysis: `analyze` on a `RunResult` in memory or on a run folder (re-exported by
`spamo.api` and `spamo`). Apart from `spamo.api_run`, so that a single run does not import the analysis stack
(scanpy, igraph, gseapy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spamo import analysis
from spamo.errors import SpamoInputError
from spamo.pipeline import RunResult

__all__ = ["analyze"]


def analyze(run: RunResult | str | Path, **options: Any):
    """Markers per modality, PAGA and gene-set enrichment of the domains, for a `RunResult` in memory (its data,
    labels and embedding; nothing re-read from disk, nothing written without `out_dir`) or a run folder written by
    `spamo run` / `RunResult.write` (written into RUN_DIR/analysis by default).

    `options` are those of `spamo.analysis.analyze_data` / `analyze` (groupby, gene_sets, out_dir, method, n_top,
    online_gene_sets, seed, permutations, ...). Returns the `AnalysisResult` (markers, enrichment, PAGA tables).
    """
    if isinstance(run, RunResult):
        if run.data is None:
            raise SpamoInputError("spamo.analyze", "this result does not carry its data")
        prepared = run.prepared
        return analysis.analyze_data(run.data, run.labels, run.fused, spot_names=prepared.spot_names,
                                     coords=prepared.coords, modalities=prepared.modality_names, **options)
    return analysis.analyze(run, **options)
