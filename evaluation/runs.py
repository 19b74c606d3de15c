"""Reading finished tune runs: what data they searched, how they ranked, and their top-K configurations.

A tune run folder (written by `spamo tune`, see `search.tuning`) holds `tune_run.toml` (the request: enough to reload
the data) and `trials.parquet` (one row per trial, with `config_json`, the scores and the run's `metric`). Runs of the
same dataset (same name and same ground truth) are pooled before the top K are taken.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from search.results import metric_mode
from spamo.errors import SpamoInputError

RUN_FILE = "tune_run.toml"
TRIALS_FILE = "trials.parquet"
DEFAULT_RUNS_ROOT = Path("results/tune")


@dataclass
class TuneRun:
    """One tune run folder, read."""

    path: Path
    request: dict  # the [tune] table of tune_run.toml
    trials: pd.DataFrame

    @property
    def name(self) -> str:
        return str(self.request.get("name") or self.path.name)

    @property
    def metric(self) -> str:
        values = self.trials["metric"].dropna().unique() if "metric" in self.trials else []
        return str(values[0]) if len(values) else str(self.request.get("metric") or "ari")

    @property
    def dataset(self) -> str:
        values = self.trials["dataset"].dropna().unique() if "dataset" in self.trials else []
        return str(values[0]) if len(values) else self.name

    @property
    def truth_sha256(self) -> str | None:
        column = self.trials.get("ground_truth_sha256")
        values = column.dropna().unique() if column is not None else []
        return str(values[0]) if len(values) else None


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
    def request(self) -> dict:
        return self.runs[0].request

    @property
    def metric(self) -> str:
        return self.runs[0].metric


def find_runs(paths: list[str | Path] | None, root: str | Path = DEFAULT_RUNS_ROOT) -> list[Path]:
    """The run folders named, or every run folder under `root` when none is named."""
    if paths:
        return [Path(p) for p in paths]
    root = Path(root)
    found = sorted(p.parent for p in root.glob(f"*/{RUN_FILE}")) if root.is_dir() else []
    if not found:
        raise SpamoInputError("--runs", f"no tune runs under {root} (name run folders with --runs DIR)")
    return found


def read_run(path: str | Path) -> TuneRun:
    """Read one run folder; a folder that is not a finished tune run is refused with one line."""
    path = Path(path)
    if not path.is_dir():
        raise SpamoInputError(path, "tune run folder not found")
    run_file, trials_file = path / RUN_FILE, path / TRIALS_FILE
    if not run_file.is_file():
        raise SpamoInputError(path, f"not a tune run folder (no {RUN_FILE})")
    if not trials_file.is_file():
        raise SpamoInputError(path, f"the tune run has no {TRIALS_FILE} (did it finish?)")
    try:
        with open(run_file, "rb") as fh:
            request = tomllib.load(fh).get("tune", {})
    except tomllib.TOMLDecodeError as exc:
        raise SpamoInputError(run_file, f"not valid TOML ({exc})") from None
    try:
        trials = pd.read_parquet(trials_file)
    except Exception as exc:  # noqa: BLE001 - any unreadable table is one line for the user
        raise SpamoInputError(trials_file, f"cannot read the trials table ({type(exc).__name__})") from None
    missing = [c for c in ("status", "config_json", "trial_id") if c not in trials]
    if missing:
        raise SpamoInputError(trials_file, f"missing column(s) {', '.join(missing)}")
    return TuneRun(path=path.resolve(), request=request, trials=trials)


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
