"""Search spaces, run settings and cluster files of `spamo tune`, without starting Ray (fast)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna.distributions as od
import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from refusals import assert_one_line_refusal
from search.results import TRUTH_SCORES, metric_mode, selection_note
from search.space import SPACE_DIR, load_space, space_path, trial_config
from search.tuning import TuneRequest, choose_metric, run_folder, start_tune
from spamo.config import SpamoConfig
from spamo.errors import SpamoInputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dataset, n_weights", [("sim", 3), ("hln", 2), ("mb", 2)])
def test_default_spaces_search_everything_the_issue_names_and_start_from_the_published_point(dataset, n_weights):
    space = load_space(space_path(dataset, None))
    wanted = {"dgi_weight", "spatial_weight", "knn_k", "optimizer", "lr", "weight_decay", "scheduler", "epochs",
              "dropout", "use_cross_attn", "ema_update"} | {f"modality_weight_{i}" for i in range(n_weights)}
    if n_weights == 2:  # the 2-modality reference's distance-valued feature edges are searched against connectivity
        wanted.add("feature_graph_weight")
    assert set(space.distributions) == wanted
    assert space.distributions["lr"].log and space.distributions["modality_weight_0"].log
    assert isinstance(space.distributions["knn_k"], od.IntDistribution)
    assert set(space.distributions["optimizer"].choices) == {"adam", "adamw", "sgd"}
    base = SpamoConfig(n_clusters=5, data_type="Simulation").resolve(n_weights, 1000)
    (point,) = space.first_points(base)
    assert point["knn_k"] == 20 and point["spatial_weight"] == 0.01
    assert point == {name: space.published[name] for name in space.distributions}


def test_published_configurations_follow_the_results_table():
    hln, mb, sim = (load_space(SPACE_DIR / f"{n}.toml").published for n in ("hln", "mb", "sim"))
    assert (hln["dgi_weight"], hln["optimizer"], hln["scheduler"], hln["epochs"]) == (0.3, "adam", "cosine", 200)
    assert (mb["modality_weight_0"], mb["modality_weight_1"], mb["optimizer"], mb["epochs"]) == (1.0, 10.0, "adamw", 400)
    assert (sim["dgi_weight"], sim["optimizer"], sim["epochs"]) == (0.1, "adam", 200)


def test_an_epoch_budget_fixes_epochs_and_missing_modalities_drop_their_weights():
    space = load_space(SPACE_DIR / "default.toml").for_data(n_modalities=2, epochs=15)
    assert "epochs" not in space.distributions and space.fixed["epochs"] == 15
    assert "modality_weight_2" not in space.distributions and "modality_weight_1" in space.distributions
    assert space.max_epochs(default=200) == 15
    base = SpamoConfig(n_clusters=4, data_type="10x").resolve(2, 500)
    (point,) = space.first_points(base)  # no [published]: the data type's defaults
    assert point["lr"] == base.lr and point["modality_weight_1"] == 5.0 and point["optimizer"] == "adamw"
    config = trial_config(base, space.fixed, {"modality_weight_1": 7.5, "KNN_k": 9, "lr": 0.003}, 2, 500)
    assert config.modality_weights == (5.0, 7.5) and config.knn_k == 9 and config.epochs == 15
    assert config.lr == 0.003 and config.n_clusters == 4


@pytest.mark.parametrize("text, problem", [
    ("[space]\nfoo = { type = 'uniform', low = 0, high = 1 }\n", "unknown setting 'foo'"),
    ("[space]\nlr = { type = 'normal', low = 0, high = 1 }\n", "needs type"),
    ("[space]\nlr = { type = 'loguniform', low = 0, high = 1 }\n", "log scale"),
    ("[space]\nknn_k = { type = 'int', low = 30, high = 10 }\n", "low <= high"),
    ("[space]\noptimizer = { type = 'choice', values = ['adam'] }\n[published]\noptimizer = 'rmsprop'\n",
     "not one of the choices"),
    ("[spaces]\n", "unknown table"),
    ("[space]\n", "nothing to search"),
    ("[space\n", "not valid TOML"),
])
def test_bad_space_files_are_refused_naming_the_file(tmp_path, text, problem):
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(SpamoInputError, match=problem) as info:
        load_space(path)
    assert str(path) in str(info.value)


def test_metric_defaults_and_refusals():
    assert choose_metric(None, has_truth=True) == "ari"
    from spamo.selection import DEFAULT_LABEL_FREE

    assert choose_metric(None, has_truth=False) == DEFAULT_LABEL_FREE
    assert choose_metric("loss", has_truth=False) == "loss" and metric_mode("loss") == "min"
    with pytest.raises(SpamoInputError, match="needs a ground truth"):
        choose_metric("nmi", has_truth=False)
    with pytest.raises(SpamoInputError, match="not one of"):
        choose_metric("accuracy", has_truth=True)
    assert all(selection_note(m) == "selected against the annotation" for m in TRUTH_SCORES)
    assert selection_note("asw") != "selected against the annotation"


def test_run_folders_local_and_uri_storage(tmp_path):
    assert run_folder("a", str(tmp_path)) == tmp_path.resolve() / "a"
    assert run_folder("a", "s3://bucket/tune", results_root=tmp_path) == tmp_path.resolve() / "a"
    assert run_folder("a", None, results_root=tmp_path) == tmp_path.resolve() / "a"


def test_cli_refuses_bad_options_in_one_line_and_writes_nothing(tmp_path, monkeypatch):
    """The first case runs in a fresh interpreter (nothing else reaches stderr: no library's import-time warning);
    the others in this process, which has paid for importing Ray and Optuna already (5 s a fresh `spamo tune`)."""
    cases = [
        (["--dataset", "sim", "--num-samples", "0"], "--num-samples"),
        (["--dataset", "sim", "--num-samples", "2", "--scheduler", "hyperband"], "--scheduler"),
        (["--resume", "nothing-here"], "--resume"),
        (["--dataset", "sim", "--num-samples", "2", "--address", "127.0.0.1:1"], "--address"),
        (["--dataset", "sim", "--num-samples", "2", "--space", str(tmp_path / "missing.toml")], "missing.toml"),
    ]
    (args, where), others = cases[0], cases[1:]
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "tune", "--storage", str(tmp_path / "runs"),
                           *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, (args, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and where in lines[0], done.stderr
    monkeypatch.chdir(tmp_path)
    for args, where in others:
        result = CliRunner().invoke(app, ["tune", "--storage", str(tmp_path / "runs"), *args])
        assert_one_line_refusal(result, "error: ", where)
        assert result.stderr.startswith("error: ")
    assert not (tmp_path / "runs").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_an_existing_run_name_is_refused(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "tune_run.toml").write_text("[tune]\n")
    with pytest.raises(SpamoInputError, match="--resume taken"):
        start_tune(TuneRequest(name="taken", num_samples=1, dataset="sim", storage=str(tmp_path)))


def test_cluster_files_are_valid_and_keep_token_authentication():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cluster = yaml.safe_load((ROOT / "configs/cluster/ray-cluster.yaml").read_text())
    validate_config(prepare_config(cluster))  # Ray's own checks of a `ray up` file
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if c.strip().startswith(("RAY_", "ray start")))
    job = yaml.safe_load((ROOT / "configs/cluster/rayjob-gpu.yaml").read_text())
    assert job["kind"] == "RayJob" and job["spec"]["rayClusterSpec"]["authOptions"]["mode"] == "token"
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "spamo tune" in job["spec"]["entrypoint"] and "--address auto" in job["spec"]["entrypoint"]
