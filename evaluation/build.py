"""Rows of the five tables, from the seed-run records (always read back from the cache, so a re-run that trains
nothing builds exactly the same tables)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from evaluation.published import load_published, published_key, same_data_note
from evaluation.tables import (ALL_SCORES, MAIN_SCORES, SCORES, SPLIT_MERGE_PREFIX, TIMES, VERSIONS, config_columns,
                               mean_sd, to_arrow)
from search.results import TRUTH_SCORES, metric_mode, selection_note


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def seed_run_row(job, record: dict, prepared) -> dict:
    """One row of `seed_runs`: the job, every score of both clusterings, times, versions."""
    config = json.loads(job.config_json)
    row = {"key": job.key, "dataset": job.dataset, "config_from": job.config_from, "config_rank": job.config_rank,
           "transferred": job.transferred, "seed": job.seed, "n_spots": prepared.n_spots,
           "n_modalities": prepared.n_modalities, "n_clusters": config["n_clusters"]}
    row.update({s: _num(record["scores"].get(s)) for s in SCORES})
    row.update({SPLIT_MERGE_PREFIX + s: _num(record["split_merge_scores"].get(s)) for s in SCORES})
    row.update(sm_init_k=record["split_merge"]["init_k"], sm_estimated_k=record["split_merge"]["estimated_k"],
               epochs_run=record["epochs"], final_loss=_num(record["final_loss"]))
    row.update({t: _num(record["timings"].get(t)) for t in TIMES})
    row.update(device=record["device"], hostname=record["hostname"], config_json=job.config_json,
               ground_truth_sha256=job.truth_sha256)
    row.update({v: record["versions"].get(v.removeprefix("version_")) for v in VERSIONS})
    return row


def split_merge_rows(job, record: dict) -> list[dict]:
    path = record["split_merge"]
    base = {"key": job.key, "dataset": job.dataset, "config_from": job.config_from, "config_rank": job.config_rank,
            "seed": job.seed, "n_clusters": json.loads(job.config_json)["n_clusters"], "init_k": path["init_k"],
            "estimated_k": path["estimated_k"]}
    return [{**base, **{k: (_num(v) if k in ("ari", "nmi", "criterion") else v) for k, v in step.items()}}
            for step in path["steps"]]


def best_config_rows(entries: dict, seed_rows: list[dict], seeds: list[int]) -> list[dict]:
    """Per dataset and rank: the configuration, and mean +- sd over seeds of every score."""

    rows = []
    for name, entry in entries.items():
        for candidate in entry.candidates:
            runs = [r for r in seed_rows if r["dataset"] == name and r["config_from"] == name
                    and r["config_rank"] == candidate.rank]
            row = {"dataset": name, "rank": candidate.rank, "run": candidate.run, "trial_id": candidate.trial_id,
                   "trial_number": candidate.trial_number, "metric": candidate.metric,
                   "selection": selection_note(candidate.metric),
                   "selected_against_annotation": candidate.metric in TRUTH_SCORES,
                   "tune_value": candidate.tune_value, "n_seeds": len(runs), "seeds": sorted(r["seed"] for r in runs),
                   "config_json": runs[0]["config_json"] if runs else json.dumps(candidate.config, sort_keys=True)}
            row.update(config_columns(json.loads(row["config_json"])))
            for score in ALL_SCORES:
                row[f"{score}_mean"], row[f"{score}_sd"] = mean_sd([r[score] for r in runs])
            row["sm_estimated_k_mean"] = mean_sd([r["sm_estimated_k"] for r in runs])[0]
            row["train_s_mean"] = mean_sd([r["train_s"] for r in runs])[0]
            rows.append(row)
    return rows


def rank_metric(entries: dict) -> str:
    """The metric the cross-dataset ranking uses: the selection metric most datasets were tuned by."""
    metrics = [entry.runs.metric for entry in entries.values()]
    return max(sorted(set(metrics)), key=metrics.count)


def cross_rows(entries: dict, seed_rows: list[dict]) -> list[dict]:
    """Each dataset's best configuration on every dataset (itself included), ranked by its mean over datasets."""

    metric = rank_metric(entries)
    rows = []
    for source, source_entry in entries.items():
        best = source_entry.candidates[0]
        for name in entries:
            runs = [r for r in seed_rows if r["dataset"] == name and r["config_from"] == source
                    and r["config_rank"] == best.rank]
            row = {"config_from": source, "dataset": name, "transferred": name != source, "n_seeds": len(runs),
                   "rank_metric": metric, "config_json": runs[0]["config_json"] if runs else None}
            for score in MAIN_SCORES:
                row[f"{score}_mean"], row[f"{score}_sd"] = mean_sd([r[score] for r in runs])
            rows.append(row)
    overall = {source: mean_sd([r[f"{metric}_mean"] for r in rows if r["config_from"] == source])[0]
               for source in entries}
    sign = 1 if metric_mode(metric) == "min" else -1
    order = sorted(entries, key=lambda s: (np.isnan(overall[s]), sign * np.nan_to_num(overall[s]), s))
    for row in rows:
        row["overall_mean"] = overall[row["config_from"]]
        row["overall_rank"] = order.index(row["config_from"]) + 1
    return sorted(rows, key=lambda r: (r["overall_rank"], r["dataset"]))


def published_rows(entries: dict, best_rows: list[dict]) -> list[dict]:
    """The published numbers beside our best mean scores, for datasets whose name matches a published key."""
    import pandas as pd


    published = load_published()
    frame = pd.DataFrame(best_rows)
    rows = []
    for name, entry in entries.items():
        key = published_key(name, published)
        if key is None:
            continue
        ref = published[key]
        ours = best_choice(frame, name)
        same, note = same_data_note(entry.data, entry.prepared.n_spots, ref)
        row = {"dataset_key": key, "published_name": ref["name"], "published_spots": ref["spots"],
               "published_n_clusters": ref["n_clusters"], "published_ari": ref["ari"], "published_nmi": ref["nmi"],
               "published_ami": ref["ami"], "published_avg": ref["avg"],
               "published_configuration": ref["configuration"], "dataset": name, "our_rank": int(ours["rank"]),
               "our_spots": entry.prepared.n_spots, "our_n_clusters": int(entry.config.n_clusters),
               "our_n_seeds": int(ours["n_seeds"]), "same_data": same, "data_note": note}
        for score in ("ari", "nmi", "ami", "avg"):
            row[f"{score}_mean"], row[f"{score}_sd"] = float(ours[f"{score}_mean"]), float(ours[f"{score}_sd"])
        rows.append(row)
    return rows


def build_tables(entries: dict, jobs: list, records: dict, seeds: list[int]) -> dict[str, pa.Table]:
    """All five tables, in the order they are documented."""
    seed_rows = [seed_run_row(job, records[job.key], entries[job.dataset].prepared) for job in jobs]
    sm_rows = [row for job in jobs for row in split_merge_rows(job, records[job.key])]
    best_rows = best_config_rows(entries, seed_rows, seeds)
    return {
        "best_configs": to_arrow("best_configs", best_rows),
        "seed_runs": to_arrow("seed_runs", seed_rows),
        "split_merge": to_arrow("split_merge", sm_rows),
        "cross_dataset": to_arrow("cross_dataset", cross_rows(entries, seed_rows)),
        "published": to_arrow("published", published_rows(entries, best_rows)),
    }


def best_choice(best_configs, dataset: str):
    """The dataset's best configuration after the seed runs: highest mean of its metric (lowest for a loss)."""

    rows = best_configs[best_configs["dataset"] == dataset]
    metric = rows["metric"].iloc[0]
    column = f"{metric}_mean"
    if column not in rows or rows[column].isna().all():
        return rows.sort_values("rank").iloc[0]
    ordered = rows.sort_values([column, "rank"], ascending=[metric_mode(metric) == "min", True], na_position="last")
    return ordered.iloc[0]
