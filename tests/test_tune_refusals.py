"""A refused `spamo tune` or `spamo evaluate --best` option is one line and exit code 2 before Ray, Optuna or torch
is imported: it answers in the time it takes to read the options, not the seconds those imports take
(benchmarks/results/cli_startup.md).

The refusals run in fresh interpreters, so what they imported is what `sys.modules` holds afterwards; no clock is
read. The first case of each command runs the real entry point (`cli.main`, its stderr and exit code as a user sees
them); the others run one after another in a second fresh interpreter through typer's runner, each reporting the
heavy libraries loaded so far. Two refusals that can only be decided with the search's own modules show that the
check would see an import if there were one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "optuna", "sklearn", "scanpy", "anndata")

ONE_AFTER_ANOTHER = r"""
import json, sys
from typer.testing import CliRunner
from cli import app

for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(app, args)
    print(json.dumps({"args": args, "exit_code": result.exit_code, "stderr": result.stderr, "stdout": result.stdout,
                      "loaded": sorted(m for m in HEAVY if m in sys.modules)}))
"""

ENTRY_POINT = r"""
import sys
sys.argv = ["spamo", *sys.argv[1:]]
import cli
try:
    cli.main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("LOADED:", " ".join(sorted(m for m in HEAVY if m in sys.modules)))
sys.exit(code)
"""


def fresh(script: str, *args: str, cwd: Path, **environment: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    env.update(environment)
    return subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{script}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def refused_one_after_another(cases: list[list[str]], cwd: Path, **environment: str) -> list[dict]:
    done = fresh(ONE_AFTER_ANOTHER, json.dumps(cases), cwd=cwd, **environment)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def assert_refused_light(outcome: dict, where: str, problem: str) -> None:
    lines = outcome["stderr"].strip().splitlines()
    assert outcome["exit_code"] == 2, outcome
    assert len(lines) == 1 and lines[0].startswith("error: ") and where in lines[0] and problem in lines[0], outcome
    assert outcome["stdout"] == "" and outcome["loaded"] == [], outcome


SPACES = {
    "unknown_setting.toml": "[space]\nlearning_speed = { type = \"uniform\", low = 0.0, high = 1.0 }\n",
    "upside_down.toml": "[space]\nlr = { type = \"loguniform\", low = 0.1, high = 0.01 }\n",
    "no_type.toml": "[space]\nknn_k = { low = 5, high = 30 }\n",
    "published_outside.toml": "[space]\noptimizer = { type = \"choice\", values = [\"adam\"] }\n"
                              "[published]\noptimizer = \"sgd\"\n",
    "not_toml.toml": "[space\n",
}


def tune_cases(tmp_path: Path) -> list[tuple[list[str], str, str]]:
    """(options after `tune`, what the line names, what it says)."""
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    for name, text in SPACES.items():
        (spaces / name).write_text(text)
    (tmp_path / "a_file").write_text("mine\n")
    runs = str(tmp_path / "runs")
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "runs" / "taken" / "tune_run.toml").write_text("[tune]\n")
    for run, value in (("edited", "num_samples = 0"), ("other", 'num_samples = 4\nscheduler = "hyperband"')):
        # a run folder whose tune_run.toml was edited by hand (or written by another spamo): refused on --resume
        (tmp_path / "runs" / run).mkdir()
        (tmp_path / "runs" / run / "tune_run.toml").write_text(
            f'[tune]\nname = "{run}"\ndataset = "sim"\ndata_root = "{tmp_path}"\n{value}\n')
    sim = ["--dataset", "sim", "--storage", runs]
    return [
        (["--dataset", "atlantis", "--storage", runs], "--dataset", "unknown dataset 'atlantis'"),
        (["--storage", runs], "--dataset", "give --dataset"),
        (["--dataset", "sim", "--data-dir", str(tmp_path), "--storage", runs], "--dataset", "not both"),
        (["--data-dir", str(tmp_path / "absent"), "--storage", runs], "absent", "folder not found"),
        ([*sim, "--data-type", "Visium-HD"], "data_type", "must be one of"),
        ([*sim, "--n-clusters", "1"], "n_clusters", ">= 2"),
        ([*sim, "--seed", "-1"], "seed", "[0, 2147483647]"),
        ([*sim, "--num-samples", "0"], "--num-samples", "integer >= 1"),
        ([*sim, "--epochs", "0"], "--epochs", "integer >= 1"),
        ([*sim, "--scheduler", "hyperband"], "--scheduler", "not one of asha, none"),
        ([*sim, "--metric", "accuracy"], "--metric", "'accuracy' is not one of"),
        ([*sim, "--max-retries", "-1"], "--max-retries", "integer >= 0"),
        ([*sim, "--checkpoint-every", "0"], "--checkpoint-every", "integer >= 1"),
        ([*sim, "--report-every", "0"], "--report-every", "integer >= 1"),
        ([*sim, "--max-concurrent", "0"], "--max-concurrent", "integer >= 1"),
        ([*sim, "--cpus-per-trial", "0"], "--cpus-per-trial", "number > 0"),
        ([*sim, "--gpus-per-trial", "-0.5"], "--gpus-per-trial", "number >= 0"),
        ([*sim, "--address", "nowhere"], "--address", "expected auto, HOST:PORT or ray://HOST:PORT"),
        ([*sim, "--address", "127.0.0.1:1"], "--address", "nothing answers at 127.0.0.1:1"),
        ([*sim, "--name", "../escape"], "--name", "not a usable folder name"),
        ([*sim, "--name", "taken"], "--name", "a run named 'taken' exists"),
        (["--resume", "nothing-here", "--storage", runs], "--resume", "no tune run named 'nothing-here'"),
        (["--rescore", "nothing-here", "--storage", runs], "--rescore", "no tune run named 'nothing-here'"),
        (["--resume", "edited", "--storage", runs], "edited/tune_run.toml", "num_samples must be an integer >= 1"),
        (["--resume", "other", "--storage", runs], "other/tune_run.toml", "scheduler 'hyperband' is not one of"),
        (["--dataset", "sim", "--storage", str(tmp_path / "a_file")], "--storage", "is not a folder"),
        (["--dataset", "sim", "--storage", str(tmp_path / "a_file" / "runs")], "--storage", "which is a file"),
        ([*sim, "--space", str(spaces / "absent.toml")], "absent.toml", ""),
        ([*sim, "--space", str(spaces / "unknown_setting.toml")], "unknown_setting.toml", "'learning_speed'"),
        ([*sim, "--space", str(spaces / "upside_down.toml")], "[space] lr", "low < high"),
        ([*sim, "--space", str(spaces / "no_type.toml")], "[space] knn_k", "needs type = one of"),
        ([*sim, "--space", str(spaces / "published_outside.toml")], "published_outside.toml", "'sgd'"),
        ([*sim, "--space", str(spaces / "not_toml.toml")], "not_toml.toml", ""),
        (["--resume", "earlier", "--address", "nowhere", "--storage", runs], "--address", "expected auto"),
        (["--rescore", "earlier", "--metric", "accuracy", "--storage", runs], "--metric", "not one of"),
    ]


def test_a_refused_tune_option_is_one_line_before_ray_optuna_or_torch_is_imported(tmp_path):
    cases = tune_cases(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    (first, where, problem), others = cases[0], cases[1:]
    done = fresh(ENTRY_POINT, "tune", *first, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {where}: {problem}"), done.stderr
    assert done.stdout.strip() == "LOADED:"
    outcomes = refused_one_after_another([["tune", *args] for args, _, _ in others], cwd=tmp_path)
    assert len(outcomes) == len(others)
    for outcome, (_, where, problem) in zip(outcomes, others):
        assert_refused_light(outcome, where, problem)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written: no runs/, no Data/


def test_a_refused_evaluate_option_is_one_line_before_ray_or_torch_is_imported(tmp_path):
    (tmp_path / "a_file").write_text("mine\n")
    out = ["--out", str(tmp_path / "out")]
    cases = [
        (["--runs", str(tmp_path / "absent"), *out], str(tmp_path / "absent"), "tune run folder not found"),
        (["--top-k", "0", *out], "--top-k", "integer >= 1"),
        (["--seeds", "0", *out], "--seeds", "integer >= 1"),
        (["--num-cpus", "0", *out], "--num-cpus", "integer >= 1"),
        (["--cpus-per-run", "0", *out], "--cpus-per-run", "number > 0"),
        (["--gpus-per-run", "-1", *out], "--gpus-per-run", "number >= 0"),
        (["--analyze", "--gene-sets", str(tmp_path / "absent.gmt"), *out], "absent.gmt", "gene-set file not found"),
        (["--address", "127.0.0.1:1", *out], "--address", "nothing answers"),
        (["--out", str(tmp_path / "a_file")], "--out", "is not a folder"),
        (["--out", str(tmp_path / "a_file" / "evaluate")], "--out", "which is a file"),
    ]
    (first, where, problem), others = cases[0], cases[1:]
    done = fresh(ENTRY_POINT, "evaluate", "--best", *first, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == f"error: {where}: {problem}", done.stderr
    assert done.stdout.strip() == "LOADED:"
    outcomes = refused_one_after_another([["evaluate", "--best", *args] for args, _, _ in others], cwd=tmp_path)
    for outcome, (_, where, problem) in zip(outcomes, others):
        assert_refused_light(outcome, where, problem)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_what_only_the_search_can_refuse_shows_the_check_sees_the_imports(tmp_path):
    """`--address auto` (looked up as Ray does: here RAY_ADDRESS, at a port nothing listens on) and a --runs folder
    that is no tune run (its trials table is read with the evaluation's modules) are refused after the search's
    modules are imported: the same report then lists Ray, Optuna and torch."""
    (tmp_path / "empty").mkdir()
    # a search stopped before Ray saved anything, yet with a trial recorded as finished: it cannot be restored, and
    # starting it again (what --resume does when nothing had finished: test_tune_segments) would lose that trial, so
    # it is refused before its data would be read (data_root holds none)
    unsaved = tmp_path / "runs" / "unsaved"
    (unsaved / "ledger").mkdir(parents=True)
    (unsaved / "tune_run.toml").write_text(f'[tune]\nname = "unsaved"\ndataset = "sim"\n'
                                           f'data_root = "{tmp_path}"\nnum_samples = 4\n')
    (unsaved / "ledger" / "t1.json").write_text('{"trial_id": "t1", "status": "finished", "result": {"ari": 0.5}}')
    outcomes = refused_one_after_another([["tune", "--dataset", "sim", "--address", "auto", "--storage",
                                           str(tmp_path / "runs")],
                                          ["evaluate", "--best", "--runs", str(tmp_path / "empty"), "--out",
                                           str(tmp_path / "out")],
                                          ["tune", "--resume", "unsaved", "--storage", str(tmp_path / "runs")]],
                                         cwd=tmp_path, RAY_ADDRESS="127.0.0.1:1")
    auto, evaluated, unsaved_resume = outcomes
    assert auto["exit_code"] == 2 and "--address: nothing answers at 127.0.0.1:1" in auto["stderr"], auto
    assert {"ray", "optuna", "torch"} <= set(auto["loaded"])
    assert evaluated["exit_code"] == 2 and "not a tune run folder" in evaluated["stderr"]
    assert {"torch"} <= set(evaluated["loaded"])
    line = unsaved_resume["stderr"].strip()
    assert unsaved_resume["exit_code"] == 2 and line.startswith("error: --resume: no Ray experiment state at "), line
    assert "(1 finished trial(s) are recorded in " in line and len(line.splitlines()) == 1
    assert sorted(p.name for p in unsaved.iterdir()) == ["ledger", "tune_run.toml"]  # nothing written or loaded


LIGHT_OPTIONS = r"""
import sys
import search.options
print("LOADED:", " ".join(sorted(m for m in HEAVY if m in sys.modules)))
"""


def test_the_options_and_the_run_folder_format_import_none_of_the_heavy_libraries(tmp_path):
    """`search.options` takes the run-folder names from `search.run_folder` itself (no copies), so both must stay
    light: imported in a fresh interpreter, neither brings torch, Ray, Optuna or the single-cell stack."""
    done = fresh(LIGHT_OPTIONS, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "LOADED:", done.stdout


def test_a_request_handed_to_the_search_is_refused_in_the_words_of_the_command_line():
    """`search.tuning` checks a request given to `start_tune` directly by the same rules as `spamo tune`: the same
    line for a bad number, scheduler or name; and the scheduler and metric names the light check knows are those
    of the search (`search.results.METRICS`)."""
    from search.options import check_tune_options
    from search.results import METRICS
    from search.tuning import TuneRequest, _check_request
    from spamo.choices import TUNE_METRICS, TUNE_SCHEDULERS
    from spamo.errors import SpamoInputError

    assert TUNE_METRICS == METRICS
    for scheduler in TUNE_SCHEDULERS:
        _check_request(TuneRequest(name="x", num_samples=1, scheduler=scheduler))
    for bad in ({"num_samples": 0}, {"cpus_per_trial": 0}, {"checkpoint_every": 0}, {"max_retries": -1},
                {"scheduler": "hyperband"}, {"metric": "accuracy"}, {"name": "../escape"}):
        request = {"name": "x", "num_samples": 1, "dataset": "sim", **bad}
        with pytest.raises(SpamoInputError) as direct:
            _check_request(TuneRequest(**request))
        with pytest.raises(SpamoInputError) as light:
            check_tune_options(request)
        assert str(direct.value) == str(light.value), bad


FROM_PYTHON = r"""
import json, sys
import spamo
from spamo.errors import SpamoInputError

for call in (lambda: spamo.tune("atlantis"), lambda: spamo.tune("sim", num_samples=2, scheduler="hyperband"),
             lambda: spamo.evaluate(top_k=0)):
    try:
        call()
    except SpamoInputError as exc:
        print(json.dumps({"line": str(exc), "loaded": sorted(m for m in HEAVY if m in sys.modules)}))
"""


def test_spamo_tune_and_evaluate_refuse_their_options_before_the_heavy_imports_too(tmp_path):
    done = fresh(FROM_PYTHON, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    refusals = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["line"].split(":")[0] for r in refusals] == ["--dataset", "--scheduler", "--top-k"], refusals
    assert all(r["loaded"] == [] for r in refusals), refusals
    assert list(tmp_path.iterdir()) == []
