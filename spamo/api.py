"""The Python API: the one code path of spamo; the `spamo` command line is a thin layer over it.

scverse style: objects in memory in, objects in memory out, nothing written unless asked.

- `fit(data, data_type=..., n_clusters=..., **settings) -> RunResult`: train once on a MuData, a dict modality
  name -> AnnData, or a list of AnnData (RNA first), aligned by `obs_names`, coordinates in `obsm['spatial']`.
  `result.annotate(mdata)` writes `obsm['X_spamo']`, `obsm['X_spamo_<modality>']` and `obs['spamo_domain']`;
  `result.write(out_dir)` writes the run folder `spamo run` writes.
- `tune(...) -> TuneResult` and `evaluate(...) -> dict[str, pyarrow.Table]`: the Ray Tune search and the
  evaluation of its best configurations (thin wrappers over `search/` and `evaluation/`).
- `analyze(result_or_run_folder, ...)`: the downstream biology of the domains.

Every refusal of bad input is a `spamo.errors.SpamoInputError` carrying the one line the CLI prints.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pyarrow.feather as feather

from evaluation.evaluate import EvaluateRequest, evaluate_best
from search.tuning import TuneRequest, start_tune
from spamo import analysis, datasets, pipeline
from spamo.config import SpamoConfig
from spamo.data import MultiOmicsData
from spamo.errors import SpamoInputError, quiet_readers
from spamo.pipeline import RunResult

__all__ = ["fit", "tune", "evaluate", "analyze", "RunResult", "TuneResult", "build_run_config", "quiet_readers"]


def build_run_config(config: SpamoConfig | dict | str | Path | None = None, where: str = "spamo.fit",
                     **settings: Any) -> SpamoConfig:
    """A config from a SpamoConfig, a mapping or a TOML file, then keyword settings (spamo or reference names,
    e.g. `knn_k=10` or `KNN_k=10`, `RNA_weight=2`); `None` values mean "not given". Every value is checked here,
    before any data is read."""
    if config is None:
        base = SpamoConfig()
    elif isinstance(config, SpamoConfig):
        base = config
    elif isinstance(config, dict):
        base = SpamoConfig.from_dict(config, where=where)
    elif isinstance(config, (str, Path)):
        base = SpamoConfig.from_toml(config)
    else:
        raise SpamoInputError(where, f"config must be a SpamoConfig, a dict or a TOML path, got {type(config).__name__}")
    given = {k: v for k, v in settings.items() if v is not None}
    if not given:
        return base
    return SpamoConfig.from_dict({**base.to_dict(), **given}, where=where)


def fit(data, *, data_type: str | None = None, n_clusters: int | None = None,
        config: SpamoConfig | dict | str | Path | None = None, modalities: list[str] | None = None, truth=None,
        layer: str | None = None, progress: bool = False, **settings: Any) -> RunResult:
    """Train SPAMO once on data in memory and cluster the fused embedding into domains.

    `data` is a MuData, a dict modality name -> AnnData, or a list of AnnData in the data type's modality order
    (RNA first); the modalities are aligned by `obs_names` (refused if their spots differ) and the coordinates read
    from `obsm['spatial']`. `data_type` is one of the registry's (10x, SPOTS, Stereo-CITE-seq,
    Spatial-epigenome-transcriptome, Simulation). `n_clusters` is the number of domains. `config` (a SpamoConfig,
    a dict or a TOML file) and `**settings` (any `SpamoConfig` field or reference flag name) set the method;
    `modalities` trains on a subset (an ablation); `truth` (N labels, or an obs column name) adds ground-truth scores;
    `layer` reads `layers[layer]` instead of `.X`. Nothing is written to disk and the inputs are not modified.
    Returns a `RunResult`: `.embedding`, `.labels`, `.scores`, `.config`, `.annotate(mdata)`, `.write(out_dir)`.
    """
    config = build_run_config(config, data_type=data_type, n_clusters=n_clusters, **settings)
    if isinstance(data, MultiOmicsData):
        loaded = data
    else:
        if config.data_type is None:
            raise SpamoInputError("data_type", "give the data type of in-memory data (data_type=...)")
        with quiet_readers():
            loaded = datasets.from_memory(data, config.data_type, truth=truth, layer=layer)
    return pipeline.run(loaded, config, modalities=modalities, progress=progress)


def load(dataset: str | None = None, data_dir: str | Path | None = None, data_type: str | None = None,
         data_root: str | Path = "Data", modality_files: dict[str, str] | None = None,
         truth_file: str | Path | None = None, n_clusters: int | None = None,
         layer: str | None = None) -> MultiOmicsData:
    """Read a dataset from disk (a built-in key, a folder of .h5ad files or a .h5mu file), quietly; `fit` takes the
    result as its `data`."""
    with quiet_readers():
        return pipeline.load_data(dataset=dataset, data_dir=data_dir, data_type=data_type, data_root=data_root,
                                  modality_files=modality_files, truth_file=truth_file, n_clusters=n_clusters,
                                  layer=layer)


# ------------------------------------------------------------------------------------------------ tune


@dataclass
class TuneResult:
    """A finished (or interrupted) search: `trials` (one row per trial, as trials.parquet), `best_config` (the best
    trial's resolved SpamoConfig, None before any trial ended), `metric`, `complete` and `path` (the run folder)."""

    path: Path
    trials: Any  # pandas.DataFrame
    best_config: SpamoConfig | None
    metric: str
    complete: bool


def tune(dataset: str | None = None, *, data_dir: str | Path | None = None, data_type: str | None = None,
         n_clusters: int | None = None, num_samples: int = 20, epochs: int | None = None, name: str | None = None,
         log: Callable[..., None] | None = None, **options: Any) -> TuneResult:
    """Search SPAMO's settings with Ray Tune + Optuna on a dataset (a built-in key or `data_dir`).

    `options` are the other fields of `search.tuning.TuneRequest` (space, metric, scheduler, cpus_per_trial,
    gpus_per_trial, max_concurrent, storage, address, report_every, seed, results_root, layer, ...). Writes the tune
    run folder (`results_root/name`), as `spamo tune` does, and returns its content.
    """
    known = {f.name for f in dataclasses.fields(TuneRequest)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SpamoInputError("spamo.tune", f"unknown option '{unknown[0]}' (known: {', '.join(sorted(known))})")
    if name is None:
        name = f"{dataset or (Path(data_dir).name if data_dir else 'tune')}-{time.strftime('%Y%m%d-%H%M%S')}"
    request = TuneRequest(name=name, num_samples=num_samples, dataset=dataset,
                          data_dir=str(data_dir) if data_dir is not None else None, data_type=data_type,
                          n_clusters=n_clusters, epochs=epochs, **options)
    outcome = start_tune(request, log=log or (lambda *args, **kwargs: None))
    run_dir = Path(outcome.run_dir)
    trials = pd.read_parquet(run_dir / "trials.parquet")
    best_file = run_dir / "best_config.toml"
    best = SpamoConfig.from_toml(best_file) if best_file.is_file() else None
    return TuneResult(path=run_dir, trials=trials, best_config=best, metric=outcome.metric, complete=outcome.complete)


# ------------------------------------------------------------------------------------------------ evaluate


def evaluate(runs: list[str | Path] | None = None, *, log: Callable[..., None] | None = None, progress: bool = False,
             **options: Any) -> dict:
    """Re-train the best configurations of tune runs over seeds (and across datasets) and build the evaluation
    tables; returns them as {name: pyarrow.Table} (also written under `out`, as `spamo evaluate --best` does).

    `options` are the other fields of `evaluation.evaluate.EvaluateRequest` (runs_root, top_k, seeds, first_seed,
    out, address, num_cpus, cpus_per_run, gpus_per_run, cross, plots, analyze, gene_sets).
    """
    known = {f.name for f in dataclasses.fields(EvaluateRequest)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SpamoInputError("spamo.evaluate", f"unknown option '{unknown[0]}' (known: {', '.join(sorted(known))})")
    for key in ("runs_root", "out"):
        if key in options:
            options[key] = str(options[key])
    if "gene_sets" in options:
        options["gene_sets"] = [str(g) for g in options["gene_sets"]]
    request = EvaluateRequest(runs=[str(r) for r in runs] if runs else None, **options)
    outcome = evaluate_best(request, log=log or (lambda *args, **kwargs: None), progress=progress)
    return {path.stem: feather.read_table(path) for path in outcome.files if path.suffix == ".arrow"}


# ------------------------------------------------------------------------------------------------ analyze


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
