"""The Python API's searches: `tune` (Ray Tune + Optuna) and `evaluate` (the best configurations over seeds and
datasets), thin wrappers over `search/` and `evaluation/` (re-exported by `spamo.api` and `spamo`).

They write the folders `spamo tune` / `spamo evaluate --best` write and return their content in memory. Apart from
`spamo.api_run`, so that a single run never imports Ray or Optuna (the scores they search over are those of
docs/method.md section 6). Like the command line, each function checks its options (`search.options`) before
it imports the search or the evaluation, which brings Ray, Optuna and torch (seconds): a refused option answers at
once.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pyarrow.feather as feather

from search.options import check_evaluate_options, check_tune_options
from spamo.config import SpamoConfig
from spamo.errors import SpamoInputError

__all__ = ["tune", "evaluate", "TuneResult"]

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
    if name is None:
        name = f"{dataset or (Path(data_dir).name if data_dir else 'tune')}-{time.strftime('%Y%m%d-%H%M%S')}"
    given = dict(name=name, num_samples=num_samples, dataset=dataset,
                 data_dir=str(data_dir) if data_dir is not None else None, data_type=data_type, n_clusters=n_clusters,
                 epochs=epochs, **options)
    check_tune_options(given)
    from search.tuning import TuneRequest, start_tune  # after the checks: Ray, Optuna and torch come with it

    known = {f.name for f in dataclasses.fields(TuneRequest)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SpamoInputError("spamo.tune", f"unknown option '{unknown[0]}' (known: {', '.join(sorted(known))})")
    outcome = start_tune(TuneRequest(**given), log=log or (lambda *args, **kwargs: None))
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
    for key in ("runs_root", "out"):
        if key in options:
            options[key] = str(options[key])
    if "gene_sets" in options:
        options["gene_sets"] = [str(g) for g in options["gene_sets"]]
    options["runs"] = [str(r) for r in runs] if runs else None
    check_evaluate_options(options)
    from evaluation.evaluate import EvaluateRequest, evaluate_best  # after the checks: Ray and torch come with it

    known = {f.name for f in dataclasses.fields(EvaluateRequest)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SpamoInputError("spamo.evaluate", f"unknown option '{unknown[0]}' (known: {', '.join(sorted(known))})")
    request = EvaluateRequest(**options)
    outcome = evaluate_best(request, log=log or (lambda *args, **kwargs: None), progress=progress)
    return {path.stem: feather.read_table(path) for path in outcome.files if path.suffix == ".arrow"}
