"""`spamo tune` on a real multi-process Ray cluster that loses a node, and the promises about which Ray a search uses.

- A head (`ray start --head`) and a worker node (`ray start --address ...`) run as separate process sessions this
  test starts; the worker node is SIGKILLed (every process of its session, by id) while it runs a trial that has
  saved a checkpoint. The search finishes with both trials `finished`; the interrupted one was retried once, on the
  head, continued from its checkpoint (start epoch > 0), and ends with exactly the scores of the other trial, which
  has the same configuration and seed and ran uninterrupted. No trial is repeated (two rows, two Optuna trials).
- Bad addresses are one line with exit 2 before the data is loaded (no `ray.init` retries: a socket check and one
  GCS request): nothing listening, and a driver without the cluster's token.
- A stale registration (RAY_ADDRESS and the `ray_current_cluster` file of a `ray start` whose head is gone) does not
  capture a search started without --address: it runs on its own local Ray.

Processes are ended by session id (`kill_session`), never by name: other Ray instances on the machine are left alone.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import shutil
import time
from pathlib import Path

import pytest

from test_tune import ROOT, free_port, kill_session, run, session_pids, trials, tune_args

pytestmark = pytest.mark.ray

# Both trials get the same configuration: the only searched setting has one value; the rest is fixed.
SAME_CONFIG_SPACE = """
[space]
optimizer = { type = "choice", values = ["adam"] }

[fixed]
knn_k = 10
lr = 0.002
dgi_weight = 0.1
"""


@pytest.fixture(scope="module")
def tiny_sim(simulated_folder) -> Path:
    return simulated_folder("cluster_data", n_spots=300)


def start_node(args: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "w")
    process = subprocess.Popen(["ray", "start", *args, "--num-cpus", "1", "--disable-usage-stats",
                                "--object-store-memory", str(150 * 2**20), "--block"], env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while "Ray runtime started" not in log_path.read_text() and time.time() < deadline:
        assert process.poll() is None, log_path.read_text()[-2000:]
        time.sleep(0.5)
    assert "Ray runtime started" in log_path.read_text(), log_path.read_text()[-2000:]
    return process


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and a worker node, 1 CPU each, token authentication on with a token of their own; fast node-death
    detection so the lost node's trial is rescheduled within seconds. One cluster for the module (starting one costs
    two `ray start`s): the test that loses the worker node kills it, and the refusals after it need only the head."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    token = tmp_path / "ray_token"
    token.write_text(secrets.token_hex(32))
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
               RAY_health_check_period_ms="1000", RAY_health_check_timeout_ms="1000",
               RAY_health_check_failure_threshold="3")
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="spamo-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    nodes = []
    try:
        nodes.append(start_node(["--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir",
                                 temp_dir], env, tmp_path / "head.log"))
        nodes.append(start_node(["--address", f"127.0.0.1:{port}"], env, tmp_path / "worker.log"))
        yield {"address": f"127.0.0.1:{port}", "env": env, "head": nodes[0], "worker": nodes[1], "token": token}
    finally:
        for process in reversed(nodes):  # `ray stop` would stop every Ray on the machine: end only ours
            kill_session(process.pid)
            process.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def started(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen, timeout: int = 240) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def results_of(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return out


def test_a_lost_worker_node_s_trial_is_retried_on_the_head_from_its_checkpoint(tiny_sim, tmp_path, cluster):
    space = tmp_path / "space.toml"
    space.write_text(SAME_CONFIG_SPACE)
    storage = tmp_path / "runs"
    args = tune_args(tiny_sim, storage, "lost", "--num-samples", "2", "--epochs", "80", "--scheduler", "none",
                     "--space", str(space), "--checkpoint-every", "2", "--address", cluster["address"],
                     "--cpus-per-trial", "1", "--gpus-per-trial", "0")
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(args, cwd=ROOT, env=cluster["env"], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        # wait until the trial running on the worker node has a checkpoint the driver knows of, then kill the node
        # (the results that named the victim are kept: Ray's sync may be replacing its result.json a moment later)
        deadline, victim, seen = time.time() + 240, None, []
        while victim is None and time.time() < deadline and driver.poll() is None:
            worker_pids = set(session_pids(cluster["worker"].pid))
            for trial_dir in storage.glob("lost/trial_*"):
                results = results_of(trial_dir)
                if any(r.get("pid") in worker_pids and r.get("checkpoint_dir_name") for r in results):
                    victim, seen = trial_dir.name, results
            time.sleep(0.3)
        assert victim is not None, (tmp_path / "driver.log").read_text()[-3000:]
        killed_at_epoch = max(r["epoch"] for r in seen)
        assert killed_at_epoch < 80, "the trial finished before its node could be killed"
        kill_session(cluster["worker"].pid)
        assert not session_pids(cluster["worker"].pid)
        driver.wait(timeout=400)
    finally:
        kill_session(driver.pid)
        log.close()
    output = (tmp_path / "driver.log").read_text()
    assert driver.returncode == 0, output[-3000:]
    assert "lost (" in output and "retry 1 of at most 3" in output

    frame = trials(storage / "lost").set_index("trial_id")
    assert len(frame) == 2 and (frame["status"] == "finished").all(), frame[["status", "error"]]
    victim_id = victim.rsplit("_", 1)[-1]
    retried, other = frame.loc[victim_id], frame.drop(index=victim_id).iloc[0]
    assert retried["retries"] == 1 and other["retries"] == 0
    assert retried["start_epoch"] > 0 and other["start_epoch"] == 0  # continued, not started again
    # from a checkpoint the lost attempt reported (read after the run: between the check above and the kill the
    # trial may report another one, which is then the one continued from)
    lost_attempt = [r for r in results_of(storage / "lost" / victim) if r.get("pid") in worker_pids]
    assert retried["start_epoch"] in {r["epoch"] for r in lost_attempt if r.get("checkpoint_dir_name")}
    assert retried["node_id"] == other["node_id"]  # the head: the only node left
    assert retried["epoch"] == other["epoch"] == 80
    # same configuration, same seed: the interrupted and continued trial ends exactly as the uninterrupted one
    assert json.loads(retried["config_json"]) == json.loads(other["config_json"])
    for score in ("ari", "nmi", "ami", "asw", "spatial_coherence", "loss"):
        assert retried[score] == other[score], score
    import optuna

    study = optuna.load_study(study_name="lost", storage=f"sqlite:///{storage / 'lost' / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]  # none repeated


def test_an_address_without_a_cluster_or_without_its_token_is_one_line_before_any_work(tiny_sim, tmp_path, cluster):
    """The three drivers run side by side (each is mostly Python's start-up: its imports, one core)."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    nobody = started(tune_args(tiny_sim, tmp_path, "x", "--address", f"127.0.0.1:{free_port()}"), env=env)
    wrong = tmp_path / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    refused = []
    for token_env in ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong)},
                      {"RAY_AUTH_MODE": "disabled"}):
        env = {k: v for k, v in cluster["env"].items() if not k.startswith("RAY_AUTH")} | token_env
        refused.append(started(tune_args(tiny_sim, tmp_path, "y", "--address", cluster["address"]), env=env))

    done = finished(nobody)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "nothing answers at 127.0.0.1" in done.stderr
    assert "is the head node running" in done.stderr
    for driver in refused:
        done = finished(driver)
        assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --address: the Ray cluster at"), done.stderr
        assert "refused this driver" in lines[0] and "RAY_AUTH_TOKEN_PATH" in lines[0]
        assert not (tmp_path / "y").exists()  # nothing written


def test_a_stale_cluster_registration_does_not_capture_a_local_search(tiny_sim, tmp_path):
    """RAY_ADDRESS and Ray's registration file both name a head that no longer runs: the search starts its own Ray."""
    temp_root = Path(tempfile.mkdtemp(prefix="spamo-stale-", dir="/tmp"))  # short: Ray's socket paths
    try:
        stale = f"127.0.0.1:{free_port()}"
        (temp_root / "ray").mkdir()
        (temp_root / "ray" / "ray_current_cluster").write_text(stale)
        env = dict(os.environ, RAY_ADDRESS=stale, RAY_TMPDIR=str(temp_root), TMPDIR=str(temp_root))
        done = run(tune_args(tiny_sim, tmp_path, "local", "--num-samples", "1", "--epochs", "2", "--scheduler",
                             "none"), env=env, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "Failed to connect" not in done.stdout + done.stderr
        assert (trials(tmp_path / "local")["status"] == "finished").all()
        assert list((temp_root / "ray").glob("session_*"))  # a new local instance, in this temp root
    finally:
        shutil.rmtree(temp_root, ignore_errors=True)
