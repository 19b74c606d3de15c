"""What a tune run leaves in its folder: trials.parquet, best_config.toml, pictures, and the table it prints.

The pictures are drawn with matplotlib's object API (`matplotlib.figure.Figure`, no pyplot, as spamo.plots does), so
writing them changes nothing process-wide: no backend switch, no figure registry to close.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from spamo.io import atomic_path, atomic_write_text, dump_toml
from spamo.metrics import LABEL_FREE_SCORES, TRUTH_SCORES

# Scores that need the ground truth and the label-free ones: the one score table, spamo.metrics.SCORES.
LOWER_IS_BETTER = ("loss",)
METRICS = TRUTH_SCORES + LABEL_FREE_SCORES + LOWER_IS_BETTER
ANNOTATION_NOTE = "selected against the annotation"


def metric_mode(metric: str) -> str:
    return "min" if metric in LOWER_IS_BETTER else "max"


def selection_note(metric: str) -> str:
    return ANNOTATION_NOTE if metric in TRUTH_SCORES else "selected by a label-free score"


def trials_frame(records: dict[str, dict], pending: list[dict], meta: dict) -> pd.DataFrame:
    """One row per trial: number, id, status, error, config columns, scores, times, node, provenance."""
    rows = []
    for record in list(records.values()) + pending:
        row = {"number": record.get("number"), "trial_id": record["trial_id"], "status": record["status"],
               "error": record.get("error")}
        row.update(record.get("params", {}))
        row.update(record.get("result", {}))
        row.update(meta)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame = frame.sort_values("number", kind="stable").reset_index(drop=True)
    for column in frame.columns:  # mixed object columns (a None among numbers) -> numbers where possible
        if frame[column].dtype == object and column not in ("error", "config_json"):
            converted = pd.to_numeric(frame[column], errors="coerce")
            if converted.notna().sum() == frame[column].notna().sum():
                frame[column] = converted
    return frame


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def best_row(frame: pd.DataFrame, metric: str) -> pd.Series | None:
    """The best finished trial by `metric` (trials stopped early or failed are never selected)."""
    if frame.empty or metric not in frame:
        return None
    done = frame[(frame["status"] == "finished") & frame[metric].notna()]
    if done.empty:
        return None
    values = done[metric].astype(float)
    return done.loc[values.idxmin() if metric_mode(metric) == "min" else values.idxmax()]


def write_best_config(row: pd.Series, metric: str, path: Path, why: str | None = None) -> None:
    """The best trial's full config as `[spamo]` (readable by `spamo run --config`), and how it was chosen."""
    config = {k: v for k, v in json.loads(row["config_json"]).items() if v is not None}
    record = {"spamo": config, "tune": {"metric": metric, "value": float(row[metric]), "trial_id": row["trial_id"],
                                        "trial_number": int(row["number"]), "selection": selection_note(metric)}}
    if why:
        record["tune"]["why"] = why
    header = f"# Best configuration of a spamo tune run, {selection_note(metric)} ({metric}).\n"
    atomic_write_text(path, header + dump_toml(record))


def plot_history(frame: pd.DataFrame, metric: str, path: Path) -> None:
    """Optimisation history: each trial's score by trial number, and the best so far."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if frame.empty or metric not in frame:  # no trial ended yet (an early interruption): an empty history
        frame = pd.DataFrame({"number": [], "status": [], metric: []})
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    done = frame[frame["status"].isin(["finished", "stopped_early"])]
    for status, marker in (("finished", "o"), ("stopped_early", "x")):
        part = done[done["status"] == status]
        ax.scatter(part["number"], part[metric], marker=marker, label=status.replace("_", " "))
    finished = done[done["status"] == "finished"].dropna(subset=[metric])
    if not finished.empty:
        best = (finished[metric].cummin() if metric_mode(metric) == "min" else finished[metric].cummax())
        ax.step(finished["number"], best, where="post", color="k", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"optimisation history ({selection_note(metric)})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def plot_importances(study, path: Path) -> bool:
    """Parameter importances (Optuna's fANOVA) as a bar chart; False when too few trials completed."""
    import optuna

    completed = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(completed) < 2:
        return False
    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):
        return False
    from matplotlib.figure import Figure

    names = list(importances)[::-1]
    fig = Figure(figsize=(6.5, 0.35 * len(names) + 1.2))
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title(f"parameter importances ({len(completed)} trials)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return True


def top_table(frame: pd.DataFrame, metric: str, params: list[str], n: int = 10):
    """A rich table of the best trials (finished first, then the rest)."""
    from rich.table import Table

    table = Table(title=f"top trials by {metric} ({selection_note(metric)})")
    shown_scores = [s for s in dict.fromkeys((metric, "ari", "nmi", "asw")) if s in frame]
    for column in ["#", "status", *shown_scores, "epoch", "wall_s", *params]:
        table.add_column(column, justify="right" if column not in ("status",) else "left")
    ordered = frame.assign(_done=frame["status"] == "finished")
    if metric in frame:
        ordered = ordered.sort_values(["_done", metric], ascending=[False, metric_mode(metric) == "min"],
                                      na_position="last")
    for _, row in ordered.head(n).iterrows():
        cells = [str(row.get("number")), str(row["status"])]
        cells += [_fmt(row.get(s)) for s in shown_scores]
        cells += [_fmt(row.get("epoch")), _fmt(row.get("wall_s"))]
        cells += [_fmt(row.get(p)) for p in params]
        table.add_row(*cells)
    return table


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)
