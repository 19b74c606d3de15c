"""How much did tuning help, and how much of it needed the labels? The selection table of `spamo evaluate --best`.

Per dataset, three configurations from the same pooled trials of its tune runs, each re-trained over the
evaluation seeds:

- ``published default``: the search's first trial (the published / data-type default configuration);
- ``tuned against the annotation``: the best finished trial by ``ari`` (marked: it has seen the labels it is then
  scored against);
- ``tuned label-free``: the best finished trial by the label-free default criterion
  (`spamo.selection.DEFAULT_LABEL_FREE`), what a user without an annotation would have picked.

`selection.parquet` has one row per dataset and choice (mean and sd over seeds of ARI, NMI and the criterion);
`selection.png` draws ARI per dataset as three bars with their seed spread.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from evaluation.seed_runs import SeedJob, config_json
from evaluation.transfer import config_for
from search.results import write_parquet
from spamo.io import atomic_path
from spamo.pipeline import truth_sha256

SELECTION_FILE = "selection.parquet"
SELECTION_PICTURE = "selection.png"
CHOICES = ("published default", "tuned against the annotation", "tuned label-free")
# seed-job ranks of the three choices (distinct from the top-K ranks 1, 2, ...; the cache key ignores them)
CHOICE_RANK = {choice: -(i + 1) for i, choice in enumerate(CHOICES)}


def _pooled(entry) -> pd.DataFrame:
    frames = [run.trials.assign(_run=run.name) for run in entry.runs.runs]
    trials = pd.concat(frames, ignore_index=True)
    return trials[(trials["status"] == "finished") & trials["config_json"].notna()]


def choices(entry, label_free: str) -> list[tuple[str, str, pd.Series]]:
    """(choice, criterion, trial row) for the dataset; a choice whose score is missing everywhere is left out."""
    done = _pooled(entry)
    if done.empty:
        return []
    out = []
    first = done.sort_values(["_run", "number"], kind="stable")
    first = first[first["_run"] == first["_run"].iloc[0]].iloc[0]
    out.append((CHOICES[0], "first trial", first))
    for choice, criterion in ((CHOICES[1], "ari"), (CHOICES[2], label_free)):
        if criterion in done and done[criterion].notna().any():
            out.append((choice, criterion, done.loc[done[criterion].astype(float).idxmax()]))
    return out


def build_jobs(entries: dict, seeds: list[int], label_free: str) -> dict[tuple[str, str], list[SeedJob]]:
    """The seed runs of each (dataset, choice)."""
    jobs = {}
    for name, entry in entries.items():
        truth = truth_sha256(entry.prepared.truth) if entry.prepared.truth is not None else None
        for choice, _, row in choices(entry, label_free):
            source = json.loads(row["config_json"])
            jobs[(name, choice)] = [
                SeedJob(name, name, CHOICE_RANK[choice], seed,
                        config_json(config_for(source, entry.prepared, seed, same_dataset=True,
                                               n_clusters=entry.config.n_clusters)), truth)
                for seed in seeds]
    return jobs


def selection_table(entries: dict, jobs: dict, records: dict, label_free: str) -> pd.DataFrame:
    """One row per dataset and choice: where it came from and its scores over the seeds (mean, sd)."""
    rows = []
    for name, entry in entries.items():
        for choice, criterion, trial in choices(entry, label_free):
            runs = [records[job.key] for job in jobs[(name, choice)]]
            row = {"dataset": name, "choice": choice, "criterion": criterion,
                   "selected_against_annotation": choice == CHOICES[1], "run": str(trial["_run"]),
                   "trial_number": int(trial["number"]) if pd.notna(trial.get("number")) else None,
                   "tune_value": float(trial[criterion]) if criterion in trial and pd.notna(trial[criterion])
                   else float("nan"),
                   "n_seeds": len(runs), "config_json": str(trial["config_json"])}
            for score in ("ari", "nmi", label_free):
                values = np.array([float(r["scores"].get(score, np.nan) or np.nan) for r in runs], dtype=float)
                row[f"{score}_mean"] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
                row[f"{score}_sd"] = float(np.nanstd(values, ddof=1)) if np.isfinite(values).sum() > 1 else 0.0
            rows.append(row)
    return pd.DataFrame(rows)


def write_selection(frame: pd.DataFrame, out_dir) -> list:
    path = Path(out_dir) / SELECTION_FILE
    write_parquet(frame, path)
    return [path]


def draw_selection(frame: pd.DataFrame, out_dir) -> list:
    """ARI per dataset: three bars (default, annotation-tuned, label-free-tuned) with their seed spread."""
    path = Path(out_dir) / SELECTION_PICTURE
    datasets = list(dict.fromkeys(frame["dataset"]))
    width = 0.27
    fig = Figure(figsize=(max(5.0, 1.6 * len(datasets) + 2), 3.8))  # object API: no pyplot, no backend switch
    ax = fig.subplots()
    for i, choice in enumerate(CHOICES):
        part = frame[frame["choice"] == choice].set_index("dataset").reindex(datasets)
        label = choice + (" (has seen the labels)" if choice == CHOICES[1] else "")
        ax.bar(np.arange(len(datasets)) + (i - 1) * width, part["ari_mean"], width, yerr=part["ari_sd"], capsize=3,
               label=label)
    ax.set_xticks(np.arange(len(datasets)), datasets, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("ARI (mean +- sd over seeds)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("how much tuning helped, and how much of it needed the labels", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return [path]
