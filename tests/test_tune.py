"""`spamo tune` end to end with a real local Ray: a small search with a failing trial, a driver killed mid-search and
resumed, and a two-node Ray cluster on this machine (token authentication on).

Every test runs the real command line in a subprocess on a tiny simulation with a few epochs. Processes a test starts
(the tune driver, `ray start` nodes) are started in their own session and ended by session id, never by name, so
other Ray instances on the machine are left alone.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import socket
import subprocess
import shutil
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray


# ------------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def tiny_sim(tmp_path_factory) -> Path:
    from spamo.simulate import write_simulation

    out = tmp_path_factory.mktemp("tune_data") / "sim"
    write_simulation(out, n_spots=300, seed=3)
    return out


def tune_args(data: Path, storage: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "tune", "--data-dir", str(data), "--data-type", "Simulation",
            "--n-clusters", "5", "--storage", str(storage), "--name", name, "--report-every", "2", *extra]


def run(args: list[str], env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def session_pids(sid: int) -> list[int]:
    """Every live process of one session (read from /proc; a session is what a test started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def kill_session(sid: int) -> None:
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.time() + 15
    while session_pids(sid) and time.time() < deadline:
        time.sleep(0.2)


def trials(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "trials.parquet")


def finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


# ------------------------------------------------------------------------------------------------ search + failure


NAN_SPACE = """
[space]
lr = { type = "loguniform", low = 1.0e-3, high = 2.0e-2 }
optimizer = { type = "choice", values = ["adam", "adamw"] }
dgi_weight = { type = "loguniform", low = 0.05, high = 0.5 }

# one graph setting for all trials: the third trial starts after one of the first two built the graphs
[fixed]
knn_k = 12

# the first trial's learning rate makes the loss NaN within a few epochs: a real failure, no switch
[published]
lr = 1.0e9
optimizer = "adam"
dgi_weight = 0.1
"""


def test_search_records_every_trial_and_a_failing_trial_leaves_the_others_intact(tiny_sim, tmp_path):
    space = tmp_path / "space.toml"
    space.write_text(NAN_SPACE)
    done = run(tune_args(tiny_sim, tmp_path, "small", "--num-samples", "3", "--epochs", "4", "--space", str(space),
                         "--scheduler", "none"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = tmp_path / "small"
    frame = trials(run_dir)
    assert list(frame["number"]) == [1, 2, 3] and frame["trial_id"].is_unique
    first = frame.iloc[0]
    assert first["lr"] == pytest.approx(1e9)  # the published point is evaluated first
    assert first["status"] == "error" and "FloatingPointError" in first["error"] and "nan" in first["error"]
    assert (frame["retries"] == 0).all()  # the NaN trial's own failure is not retried (nor lost on a system failure)
    nan_dir = next(run_dir.glob(f"trial_*_{first['trial_id']}"))
    attempts = {json.loads(line)["pid"] for line in (nan_dir / "result.json").read_text().splitlines()}
    assert len(attempts) == 1  # one worker process ran it: one attempt
    others = frame.iloc[1:]
    assert (others["status"] == "finished").all(), others[["status", "error"]]
    for _, row in others.iterrows():
        assert all(finite(row[s]) for s in ("ari", "nmi", "asw")), row
        assert row["epoch"] == 4 and row["seed"] == 2025 and row["node_id"] and row["knn_k"] == 12
    assert frame.loc[frame["number"] == 3, "graphs_cached"].item() == True  # noqa: E712 - built once, shared
    assert (frame["dataset"] == "sim").all() and frame["ground_truth_sha256"].str.len().eq(64).all()
    assert frame["version_ray"].notna().all() and frame["version_optuna"].notna().all()
    # the best config is a `spamo run --config` file, chosen among finished trials, and says how it was chosen
    best = tomllib.loads((run_dir / "best_config.toml").read_text())
    assert best["tune"]["selection"] == "selected against the annotation"
    assert best["spamo"]["lr"] < 1 and best["tune"]["value"] == pytest.approx(others["ari"].max())
    assert "selected against the annotation" in done.stdout
    for picture in ("optimization_history.png", "param_importances.png"):
        assert (run_dir / picture).stat().st_size > 1000
    import optuna

    study = optuna.load_study(study_name="small", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert len(states) == 3 and states.count("FAIL") == 1 and states.count("COMPLETE") == 2
    assert f"optuna-dashboard sqlite:///{run_dir / 'optuna.db'}" in done.stdout.replace("\n", "")
    # Ray's own record of each ended trial (its experiment snapshot) kept only its bookkeeping and the metric
    # (search.ledger.ForgetEnded): the scores live in the ledger and trials.parquet, as checked above
    state = json.loads(next(run_dir.glob("experiment_state-*.json")).read_text())
    records = [json.loads(metadata) for _, metadata in state["trial_data"]]
    assert len(records) == 3
    for record in records:
        assert "nmi" not in record["last_result"] and "config_json" not in record["last_result"]
        assert "nmi" not in record["metric_analysis"] and "ari" in record["last_result"]
    assert not list(run_dir.glob("trial_*/progress.csv")) and not list(run_dir.glob("trial_*/events.out.tfevents*"))


# ------------------------------------------------------------------------------------------------ killed driver
# tests/test_tune_segments.py: a driver killed by SIGKILL leaves no Ray process and resumes without losing or
# repeating a trial


# ------------------------------------------------------------------------------------------------ two-node cluster


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def two_node_cluster(tmp_path):
    """`ray start --head` (1 CPU) plus a second node (1 CPU, custom resource), token authentication on."""
    token = tmp_path / "ray_token"
    token.write_text(secrets.token_hex(32))
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="spamo-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    common = ["--num-cpus", "1", "--disable-usage-stats", "--object-store-memory", str(150 * 2**20), "--block"]
    nodes = []
    try:
        for args, logname in (
            (["--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", temp_dir],
             "head.log"),
            (["--address", f"127.0.0.1:{port}", "--resources", json.dumps({"spamo_worker": 1})], "worker.log"),
        ):
            log = open(tmp_path / logname, "w")
            nodes.append((subprocess.Popen(["ray", "start", *args, *common], env=env, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True), log))
            deadline = time.time() + 90
            while "Ray runtime started" not in (tmp_path / logname).read_text() and time.time() < deadline:
                assert nodes[-1][0].poll() is None, (tmp_path / logname).read_text()[-2000:]
                time.sleep(0.5)
            assert "Ray runtime started" in (tmp_path / logname).read_text()
        yield f"127.0.0.1:{port}", env
    finally:
        for process, log in reversed(nodes):  # `ray stop` would stop every Ray on the machine: end only ours
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            kill_session(process.pid)
            log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_trials_run_on_both_nodes_of_a_two_node_cluster(tiny_sim, tmp_path, two_node_cluster):
    address, env = two_node_cluster
    # fresh workers: with reuse, a first trial that ends before the second one's worker has started on the other
    # node hands its own worker to the second trial (seen at low load: both trials on one node)
    done = run(tune_args(tiny_sim, tmp_path / "runs", "cluster", "--num-samples", "2", "--epochs", "4",
                         "--address", address, "--fresh-workers"), env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    frame = trials(tmp_path / "runs" / "cluster")
    assert len(frame) == 2 and frame["status"].isin(["finished", "stopped_early"]).all()
    assert frame["node_id"].nunique() == 2  # the head and the worker node both ran trials
    assert frame["ari"].notna().all()
