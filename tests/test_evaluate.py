"""`spamo evaluate --best` end to end: two real tune runs of two different simulated datasets (a three-modality
`sim` layout and a two-modality `hln` layout), re-evaluated over two seeds on a real local Ray (2 CPUs).

Checked: every table read back with pyarrow and pandas (schema and contents), mean +- sd against the seed runs,
every cross-dataset pair, the split-and-merge path of each seed run, the published numbers beside ours, a re-run that
trains nothing and writes the same tables, a configuration and seed that reproduce their row exactly in another
process, and a failing seed run that leaves no table behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
import torch

from evaluation.tables import SCHEMAS, TABLE_NAMES

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray
SEEDS = [2025, 2026]
# The environment before anything in this process starts R: rpy2 prepends R's library folders to LD_LIBRARY_PATH,
# after which a child `python` can load the system's libpython and lose its site-packages.
CLEAN_ENV = dict(os.environ)


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, env=CLEAN_ENV, capture_output=True,
                          text=True, timeout=timeout)


def tune_args(data: Path, data_type: str, storage: Path, name: str) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "tune", "--data-dir", str(data), "--data-type", data_type,
            "--num-samples", "2", "--epochs", "10", "--scheduler", "none", "--storage", str(storage), "--name", name,
            "--max-concurrent", "1"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Two tune runs (run side by side), then one evaluation of both: top 1, 2 seeds, cross-dataset."""
    from spamo.simulate import write_simulation

    base = tmp_path_factory.mktemp("evaluate")
    write_simulation(base / "data" / "sim", n_spots=300, seed=1, layout="sim")
    write_simulation(base / "data" / "hln", n_spots=300, seed=2, layout="hln")
    runs = base / "runs"
    tunes = [subprocess.Popen(tune_args(base / "data" / name, data_type, runs, f"{name}_run"), cwd=ROOT,
                              env=CLEAN_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, data_type in (("sim", "Simulation"), ("hln", "10x"))]
    for tune in tunes:
        output, _ = tune.communicate(timeout=300)
        assert tune.returncode == 0, output[-3000:]
    out = base / "eval"
    done = cli("evaluate", "--best", "--runs", str(runs / "sim_run"), "--runs", str(runs / "hln_run"), "--top-k",
               "1", "--seeds", "2", "--out", str(out), "--num-cpus", "2", "--quiet")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tables = {name: pd.read_parquet(out / f"{name}.parquet") for name in TABLE_NAMES}
    return {"base": base, "runs": runs, "out": out, "stdout": done.stdout, "tables": tables}


def trials(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "trials.parquet")


# ------------------------------------------------------------------------------------------------ tables


def test_every_table_reads_back_with_its_schema_in_parquet_and_arrow_ipc(evaluated):
    out = evaluated["out"]
    for name in TABLE_NAMES:
        table = pq.read_table(out / f"{name}.parquet")
        assert table.schema.equals(SCHEMAS[name], check_metadata=False), name
        ipc = feather.read_table(out / f"{name}.arrow")
        assert ipc.equals(table), name
        frame = pd.read_parquet(out / f"{name}.parquet")
        assert list(frame.columns) == SCHEMAS[name].names and len(frame) == table.num_rows > 0, name
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".part")]
    assert not leftovers


def test_best_configs_report_mean_and_sd_over_seeds_of_the_tuned_best(evaluated):
    best, seeds = evaluated["tables"]["best_configs"], evaluated["tables"]["seed_runs"]
    assert sorted(best["dataset"]) == ["hln", "sim"] and (best["rank"] == 1).all()
    for _, row in best.iterrows():
        run = trials(evaluated["runs"] / f"{row['dataset']}_run")
        finished = run[run["status"] == "finished"]
        top = finished.loc[finished["ari"].idxmax()]
        assert row["metric"] == "ari" and row["tune_value"] == pytest.approx(top["ari"])
        assert row["trial_id"] == top["trial_id"] and row["selected_against_annotation"]
        assert row["selection"] == "selected against the annotation"
        tuned = json.loads(top["config_json"])
        ours = json.loads(row["config_json"])
        assert {k: v for k, v in ours.items() if k != "seed"} == {k: v for k, v in tuned.items() if k != "seed"}
        assert list(row["seeds"]) == SEEDS and row["n_seeds"] == 2
        own = seeds[(seeds["dataset"] == row["dataset"]) & (seeds["config_from"] == row["dataset"])]
        assert sorted(own["seed"]) == SEEDS
        for score in ("ari", "nmi", "avg", "asw", "spatial_coherence", "sm_ari", "sm_nmi"):
            values = own[score].to_numpy()
            assert np.isfinite(values).all(), score
            assert row[f"{score}_mean"] == pytest.approx(values.mean()), score
            assert row[f"{score}_sd"] == pytest.approx(values.std(ddof=1)), score
        # the first seed is the tune's own seed: the trial's score comes back
        first = own[own["seed"] == 2025].iloc[0]
        assert first["ari"] == pytest.approx(top["ari"], abs=1e-12)
    assert "±" in evaluated["stdout"] and "best configurations" in evaluated["stdout"]


def test_seed_runs_hold_scores_times_and_versions(evaluated):
    seeds = evaluated["tables"]["seed_runs"]
    assert len(seeds) == 8  # 2 datasets x 2 seeds on their own data + 2 transfers x 2 seeds
    assert seeds.groupby(["dataset", "config_from", "config_rank", "seed"]).size().eq(1).all()
    for column in ("train_s", "cluster_s", "split_merge_s", "wall_s"):
        assert (seeds[column] > 0).all(), column
    assert seeds["version_torch"].notna().all() and seeds["version_ray"].notna().all()
    assert (seeds["epochs_run"] == 10).all() and seeds["ground_truth_sha256"].str.len().eq(64).all()
    assert ((seeds["ari"] >= -1) & (seeds["ari"] <= 1)).all()
    assert (seeds["n_modalities"] == seeds["dataset"].map({"sim": 3, "hln": 2})).all()


def test_split_merge_records_every_k_visited_for_each_seed_run(evaluated):
    steps, seeds = evaluated["tables"]["split_merge"], evaluated["tables"]["seed_runs"]
    assert set(steps["key"]) == set(seeds["key"])
    for key, path in steps.groupby("key"):
        path = path.sort_values("step")
        run = seeds[seeds["key"] == key].iloc[0]
        assert list(path["step"]) == list(range(len(path)))
        assert path["action"].iloc[0] == "init" and path["k"].iloc[0] == run["sm_init_k"]
        assert path["at_target"].sum() == 1 and path[path["at_target"]]["k"].iloc[0] == run["n_clusters"]
        settled = path[path["settled"]]
        assert len(settled) == 1 and settled["k"].iloc[0] == run["sm_estimated_k"]
        merges = path.dropna(subset=["merge_index"])
        assert list(merges["merge_index"]) == list(range(1, len(merges) + 1))
        assert merges["action"].str.endswith("merge").all() and merges["pair_a"].notna().all()
        assert np.isfinite(path["criterion"]).all() and path["ari"].between(-1, 1).all()
        # the split-and-merge score of the seed run is the ARI of the clustering kept at K
        assert path[path["at_target"]]["ari"].iloc[0] == pytest.approx(run["sm_ari"])


def test_cross_dataset_has_every_pair_and_ranks_configurations(evaluated):
    cross, best = evaluated["tables"]["cross_dataset"], evaluated["tables"]["best_configs"]
    seeds = evaluated["tables"]["seed_runs"]
    pairs = set(zip(cross["config_from"], cross["dataset"]))
    assert pairs == {(a, b) for a in ("sim", "hln") for b in ("sim", "hln")}
    assert (cross["transferred"] == (cross["config_from"] != cross["dataset"])).all()
    assert (cross["n_seeds"] == 2).all() and (cross["rank_metric"] == "ari").all()
    for _, row in cross[~cross["transferred"]].iterrows():
        own = best[best["dataset"] == row["dataset"]].iloc[0]
        assert row["ari_mean"] == pytest.approx(own["ari_mean"])
    overall = cross.groupby("config_from")["overall_mean"].first()
    ranks = cross.groupby("config_from")["overall_rank"].first()
    assert sorted(ranks) == [1, 2] and overall[ranks.idxmin()] >= overall[ranks.idxmax()]
    for source in ("sim", "hln"):
        assert overall[source] == pytest.approx(cross[cross["config_from"] == source]["ari_mean"].mean())
    # a transferred configuration: the target's data type and K, weights mapped by position, defaults fill in
    source = json.loads(best[best["dataset"] == "hln"]["config_json"].iloc[0])
    moved = json.loads(seeds[(seeds["config_from"] == "hln") & (seeds["dataset"] == "sim")]["config_json"].iloc[0])
    assert moved["data_type"] == "Simulation" and len(moved["modality_weights"]) == 3
    assert moved["modality_weights"][:2] == source["modality_weights"] and moved["modality_weights"][2] == 3.0
    for name in ("knn_k", "lr", "optimizer", "dgi_weight", "epochs", "dropout", "use_cross_attn", "weight_decay"):
        assert moved[name] == source[name], name


def test_published_numbers_sit_beside_ours_and_say_the_data_differs(evaluated):
    published, best = evaluated["tables"]["published"], evaluated["tables"]["best_configs"]
    reference = tomllib.loads((ROOT / "configs" / "published.toml").read_text())
    assert sorted(published["dataset_key"]) == ["hln", "sim"]
    for _, row in published.iterrows():
        ref = reference[row["dataset_key"]]
        assert row["published_ari"] == ref["ari"] and row["published_spots"] == ref["spots"]
        assert not row["same_data"] and "simulated" in row["data_note"]
        ours = best[best["dataset"] == row["dataset"]].iloc[0]
        assert row["ari_mean"] == pytest.approx(ours["ari_mean"]) and row["our_spots"] == 300


def test_pictures_are_drawn(evaluated):
    for name in ("domains_sim.png", "domains_hln.png", "seed_spread.png"):
        assert (evaluated["out"] / name).stat().st_size > 5000, name


# ------------------------------------------------------------------------------------------------ resume, determinism


def test_a_rerun_trains_nothing_and_writes_the_same_tables(evaluated):
    out = evaluated["out"]
    cache = sorted((out / "seed_runs").glob("*.json"))
    stamps = {p.name: p.stat().st_mtime_ns for p in cache}
    done = cli("evaluate", "--best", "--runs", str(evaluated["runs"] / "sim_run"), "--runs",
               str(evaluated["runs"] / "hln_run"), "--top-k", "1", "--seeds", "2", "--out", str(out), "--num-cpus",
               "2", "--quiet", "--no-plots")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "0 seed run(s) trained, 8 reused" in done.stdout.replace("\n", " ")
    assert {p.name: p.stat().st_mtime_ns for p in (out / "seed_runs").glob("*.json")} == stamps
    for name in TABLE_NAMES:
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"{name}.parquet"), evaluated["tables"][name])


def test_a_configuration_and_seed_reproduce_their_row_exactly(evaluated):
    """Seed 2026 of sim's best configuration, trained again in this process, gives the Ray task's row bit for bit."""
    from evaluation.evaluate import load_entry
    from evaluation.runs import group_by_dataset, read_run
    from evaluation.seed_runs import SeedRunCache, run_seed
    from evaluation.tables import SCORES
    from spamo.config import SpamoConfig

    seeds = evaluated["tables"]["seed_runs"]
    row = seeds[(seeds["dataset"] == "sim") & (seeds["config_from"] == "sim") & (seeds["seed"] == 2026)].iloc[0]
    entry = load_entry(group_by_dataset([read_run(evaluated["runs"] / "sim_run")])[0], top_k=1)
    record, arrays = run_seed(entry.prepared, SpamoConfig.from_dict(json.loads(row["config_json"])))
    cached = SeedRunCache(evaluated["out"]).arrays(row["key"])
    assert np.array_equal(arrays["labels"], cached["labels"])
    assert np.array_equal(arrays["split_merge_labels"], cached["split_merge_labels"])
    assert np.array_equal(arrays["fused"], cached["fused"])
    for score in SCORES:
        assert record["scores"][score] == row[score], score
        assert record["split_merge_scores"][score] == row[f"sm_{score}"], score


# ------------------------------------------------------------------------------------------------ failures


def copied_run(evaluated, run: Path) -> tuple[Path, pd.DataFrame]:
    """The sim tune run copied to `run` (its trials table, without the trial folders and the study) and its trials."""
    shutil.copytree(evaluated["runs"] / "sim_run", run, ignore=shutil.ignore_patterns("trial_*", "*.db"))
    return run, trials(run)


def changed_config(frame: pd.DataFrame, **changes) -> str:
    """The first trial's config_json with `changes` applied."""
    return json.dumps({**json.loads(frame["config_json"].iloc[0]), **changes}, sort_keys=True)


def evaluate_one_seed(run: Path, out: Path, top_k: int) -> subprocess.CompletedProcess:
    return cli("evaluate", "--best", "--runs", str(run), "--top-k", str(top_k), "--seeds", "1", "--out", str(out),
               "--num-cpus", "2", "--quiet", "--no-cross")


def the_one_error(done: subprocess.CompletedProcess, exit_code: int) -> str:
    """The command's one `error:` line, after checking its exit code and that no traceback was printed."""
    assert done.returncode == exit_code, done.stdout[-2000:] + done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    return errors[0]


def test_a_failing_seed_run_keeps_the_finished_ones_and_writes_no_table(evaluated, tmp_path):
    """A trial whose learning rate makes the loss NaN ranks first: its seed run fails, the second one finishes."""
    run, frame = copied_run(evaluated, tmp_path / "sim_bad")
    bad = frame.iloc[[0]].copy()
    bad["config_json"], bad["ari"], bad["trial_id"] = changed_config(bad, lr=1.0e9), 0.999, "nan_trial"
    pd.concat([frame, bad], ignore_index=True).to_parquet(run / "trials.parquet", index=False)
    out = tmp_path / "eval"
    error = the_one_error(evaluate_one_seed(run, out, top_k=2), exit_code=1)
    assert error.startswith("error: seed run sim rank 1 on sim, seed 2025: failed: FloatingPointError")
    assert "1 of 2 seed runs failed" in error and "no table was written" in error
    assert sorted(p.name for p in out.iterdir()) == ["seed_runs"]  # no table, no picture, no temporary file
    assert len(list((out / "seed_runs").glob("*.json"))) == 1  # the rank-2 run finished and is kept


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_a_bfloat16_configuration_without_a_gpu_is_refused_before_any_seed_run(evaluated, tmp_path):
    """A configuration tuned on GPUs with attention_precision = bfloat16 cannot run on CPUs: one line, exit 2."""
    run, frame = copied_run(evaluated, tmp_path / "sim_bf16")
    frame.loc[:, "config_json"] = changed_config(frame, attention_precision="bfloat16")
    frame.to_parquet(run / "trials.parquet", index=False)
    out = tmp_path / "eval"
    error = the_one_error(evaluate_one_seed(run, out, top_k=1), exit_code=2)
    assert error.startswith("error: attention_precision: bfloat16 runs on a CUDA device only")
    assert "no GPU share (--gpus-per-run 0)" in error
    assert not list(out.glob("seed_runs/*.json")) and not list(out.glob("*.parquet"))


def test_analyze_writes_a_run_folder_of_the_best_configuration_and_analyses_it(evaluated, tmp_path):
    """What --analyze does, on the two-modality dataset: a `spamo run` folder from the cached seed run, analysed."""
    from evaluation.evaluate import EvaluateRequest, analyze_best, load_entry
    from evaluation.runs import group_by_dataset, read_run
    from evaluation.seed_runs import SeedRunCache

    out = evaluated["out"]
    entries = {"hln": load_entry(group_by_dataset([read_run(evaluated["runs"] / "hln_run")])[0], top_k=1)}
    request = EvaluateRequest(out=str(out), analyze=True)
    written = analyze_best(evaluated["tables"]["best_configs"], entries, SeedRunCache(out), request, out,
                           log=lambda *a: None)
    run_dir = out / "best_runs" / "hln"
    assert written == [run_dir / "analysis"]
    labels = np.loadtxt(run_dir / "labels.txt", dtype=np.int64)
    seeds = evaluated["tables"]["seed_runs"]
    key = seeds[(seeds["dataset"] == "hln") & (seeds["config_from"] == "hln") & (seeds["seed"] == 2025)]["key"]
    assert np.array_equal(labels, SeedRunCache(out).arrays(key.iloc[0])["labels"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["scores"]["ari"] == seeds.set_index("key").loc[key.iloc[0], "ari"]
    markers = pd.read_parquet(run_dir / "analysis" / "markers.parquet")
    assert set(markers["modality"]) == {"RNA", "ADT"}
    # analysed from the data in memory: the same tables as `spamo analyze` on the folder it wrote
    from spamo.analysis import analyze

    again = analyze(run_dir, out_dir=tmp_path / "again", seed=2025)
    pd.testing.assert_frame_equal(markers, pd.read_parquet(tmp_path / "again" / "markers.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(run_dir / "analysis" / "paga.parquet"), again.paga)


def test_bad_input_is_refused_in_one_line(tmp_path):
    done = cli("evaluate", "--best", "--runs", str(tmp_path / "absent"), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and done.stderr.strip() == f"error: {tmp_path / 'absent'}: tune run folder not found"
    assert not (tmp_path / "out").exists()


def test_modality_weights_map_by_position_with_defaults():
    from evaluation.transfer import map_modality_weights

    assert map_modality_weights((5.0, 7.0), 3) == (5.0, 7.0, 3.0)
    assert map_modality_weights((1.0, 3.0, 2.0), 2) == (1.0, 3.0)
    assert map_modality_weights(None, 2) == (5.0, 5.0)


def test_without_named_runs_every_run_under_the_root_is_read(tmp_path):
    from evaluation.runs import find_runs
    from spamo.errors import SpamoInputError

    for name in ("b_run", "a_run"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tune_run.toml").write_text(f'[tune]\nname = "{name}"\n')
    (tmp_path / "not_a_run").mkdir()
    assert find_runs(None, tmp_path) == [tmp_path / "a_run", tmp_path / "b_run"]
    assert find_runs([tmp_path / "b_run"], tmp_path) == [tmp_path / "b_run"]
    with pytest.raises(SpamoInputError, match="no tune runs under"):
        find_runs(None, tmp_path / "not_a_run")
