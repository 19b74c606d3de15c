"""Pooling finished tune runs by dataset and ranking their top-K configurations.

The tune-run folder itself (`tune_run.toml`, `trials.parquet`) is read by `search.run_folder`, which owns the format;
runs of the same dataset (same name and same ground truth) are pooled here before the top K are taken.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from search.results import metric_mode
from search.run_folder import RESULTS_ROOT as DEFAULT_RUNS_ROOT, TuneRequest, TuneRun, find_runs, read as read_run
from spamo.errors import SpamoInputError

__all__ = ["DEFAULT_RUNS_ROOT", "TuneRun", "Candidate", "DatasetRuns", "find_runs", "read_run", "group_by_dataset",
           "top_configs"]


@dataclass
class Candidate:
    """One configuration chosen for re-evaluation: its rank on its dataset and where it came from."""

    dataset: str
    rank: int
    run: str
    trial_id: str
    trial_number: int | None
    metric: str
    tune_value: float
    config: dict  # the trial's resolved SpamoConfig as a dict


@dataclass
class DatasetRuns:
    """Every tune run of one dataset, pooled."""

    dataset: str
    runs: list[TuneRun] = field(default_factory=list)

    @property
    def request(self) -> TuneRequest:
        return self.runs[0].request

    @property
    def metric(self) -> str:
        return self.runs[0].metric


def group_by_dataset(runs: list[TuneRun]) -> list[DatasetRuns]:
    """Pool runs of the same dataset; two different datasets under one name, or mixed metrics, are refused."""
    groups: dict[str, DatasetRuns] = {}
    for run in runs:
        group = groups.setdefault(run.dataset, DatasetRuns(run.dataset))
        if group.runs:
            first = group.runs[0]
            if first.truth_sha256 != run.truth_sha256:
                raise SpamoInputError(run.path, f"dataset '{run.dataset}' has a different ground truth than in "
                                                f"{first.path}: give the runs different dataset names")
            if first.metric != run.metric:
                raise SpamoInputError(run.path, f"ranks '{run.dataset}' by {run.metric} but {first.path} by "
                                                f"{first.metric}: pool only runs with the same metric")
        group.runs.append(run)
    return list(groups.values())


def top_configs(group: DatasetRuns, k: int) -> list[Candidate]:
    """The K best finished trials of a dataset by its run's metric, distinct configurations only (seed ignored)."""

    metric = group.metric
    frames = [run.trials.assign(_run=run.name) for run in group.runs]
    trials = pd.concat(frames, ignore_index=True)
    if metric not in trials:
        raise SpamoInputError(group.runs[0].path, f"the trials table has no '{metric}' column")
    done = trials[(trials["status"] == "finished") & trials[metric].notna() & trials["config_json"].notna()]
    if done.empty:
        raise SpamoInputError(group.runs[0].path, f"no finished trial with a '{metric}' score")
    done = done.sort_values([metric, "_run", "trial_id"], ascending=[metric_mode(metric) == "min", True, True],
                            kind="stable")
    chosen: list[Candidate] = []
    seen: set[str] = set()
    for _, row in done.iterrows():
        config = json.loads(row["config_json"])
        identity = json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True)
        if identity in seen:
            continue
        seen.add(identity)
        number = row.get("number")
        chosen.append(Candidate(dataset=group.dataset, rank=len(chosen) + 1, run=str(row["_run"]),
                                trial_id=str(row["trial_id"]),
                                trial_number=None if pd.isna(number) else int(number), metric=metric,
                                tune_value=float(row[metric]), config=config))
        if len(chosen) == k:
            break
    return chosen
