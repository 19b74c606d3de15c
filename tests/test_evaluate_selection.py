"""The selection table of `spamo evaluate --best`: per dataset the published default, the annotation-tuned and the
label-free-tuned configuration, each re-trained over the evaluation seeds (real training, in-process, tiny data)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from pathlib import Path

from evaluation.evaluate import DatasetEntry
from evaluation.runs import DatasetRuns, TuneRun
from evaluation.seed_runs import seed_task
from search.run_folder import TuneRequest
from evaluation.selection import CHOICES, build_jobs, draw_selection, selection_table, write_selection
from spamo import pipeline
from spamo.config import SpamoConfig
from spamo.simulate import simulate


def _entry(name: str, seed: int) -> DatasetEntry:
    from spamo.data import MultiOmicsData

    sim = simulate(300, seed=seed, layout="hln", n_features={"RNA": 200, "ADT": 30})
    data = MultiOmicsData(name=name, data_type="10x", modalities=sim.modalities, coords=sim.coords,
                          truth=sim.truth, n_clusters=5)
    prepared, base = pipeline.prepare(data, SpamoConfig(epochs=3, cluster_method="kmeans"))
    configs = [base.replace(lr=lr).to_dict() for lr in (0.01, 0.003, 0.03, 0.001)]
    trials = pd.DataFrame({
        "number": [1, 2, 3, 4], "trial_id": ["a", "b", "c", "d"], "status": ["finished"] * 3 + ["error"],
        "config_json": [json.dumps(c, sort_keys=True) for c in configs],
        "ari": [0.5, 0.9, 0.6, 0.99], "spatial_coherence": [0.7, 0.6, 0.95, 0.99],
        "asw": [0.1, 0.3, 0.2, 0.5], "consistency": [0.1, 0.2, 0.4, 0.9], "stability": [0.2, 0.1, 0.5, 1.0],
        "composite": [0.3, 0.2, 0.6, 0.9]})
    run = TuneRun(path=Path(name), request=TuneRequest(name=name, num_samples=4), trials=trials)
    return DatasetEntry(runs=DatasetRuns(name, [run]), candidates=[], data=data, prepared=prepared, config=base)


def test_three_rows_per_dataset_over_the_seeds(tmp_path):
    entries = {"one": _entry("one", 1), "two": _entry("two", 2)}
    seeds = [7, 8]
    jobs = build_jobs(entries, seeds, "spatial_coherence")
    records = {job.key: seed_task(entries[job.dataset].prepared, job)[0] for group in jobs.values() for job in group}
    table = selection_table(entries, jobs, records, "spatial_coherence")
    assert len(table) == 6
    for _, part in table.groupby("dataset"):
        assert list(part["choice"]) == list(CHOICES)
    assert (table["n_seeds"] == 2).all()
    one = table[table["dataset"] == "one"].set_index("choice")
    # the first trial, the best finished trial by ARI (marked), the best finished trial by the criterion
    assert one.loc[CHOICES[0], "trial_number"] == 1
    assert one.loc[CHOICES[1], "trial_number"] == 2 and one.loc[CHOICES[1], "selected_against_annotation"]
    assert one.loc[CHOICES[2], "trial_number"] == 3 and not one.loc[CHOICES[2], "selected_against_annotation"]
    for choice in CHOICES:  # mean and sd over exactly the seed runs of that configuration
        job_group = jobs[("one", choice)]
        values = [records[j.key]["scores"]["ari"] for j in job_group]
        assert {j.seed for j in job_group} == set(seeds)
        assert one.loc[choice, "ari_mean"] == np.mean(values)
        assert np.isclose(one.loc[choice, "ari_sd"], np.std(values, ddof=1))
    written = write_selection(table, tmp_path) + draw_selection(table, tmp_path)
    assert pd.read_parquet(written[0]).shape == table.shape and written[1].stat().st_size > 1000
