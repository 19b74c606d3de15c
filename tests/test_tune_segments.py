"""A long search runs as segments, one Ray Tune experiment each, over one Optuna study (search.segments): real Ray,
real SQLite study, a tiny simulation and segments of 2 trials (the real size is 100).

What must not notice the segments (numbering, the ledger, trials.parquet, the study, and ASHA's rungs carried into
the next segment) is checked on the 3-segment search of tests/test_tune_memory.py (`RungWatch` is here). The tests
here kill the driver (SIGKILL, its own session): in the first of two segments, resumed with `spamo tune --resume`;
and between two segments, resumed with ASHA's rungs (which cross from one segment's process to the next through
the run folder).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest
from ray import tune

from search.ledger import load_ledger
from search.run_folder import STUDY_FILE, TRIALS_FILE
from search.schedulers import AshaScheduler
from search.segments import SEGMENTS_FILE
from search.tuning import resume_tune
from test_tune import ROOT, kill_session, session_pids, tiny_sim  # noqa: F401 - tiny_sim is a fixture

pytestmark = pytest.mark.ray


class RungWatch(tune.Callback):
    """At each trial's start: the ASHA schedulers alive in the driver and how many trials each rung recorded."""

    def __init__(self):
        self.at_start = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        number = int(str(trial.experiment_tag).split("_", 1)[0])
        self.at_start[number] = [s.recorded() for s in gc.get_objects() if type(s) is AshaScheduler]


def study_states(run_dir, name: str) -> list[str]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{run_dir / STUDY_FILE}")
    return [t.state.name for t in study.trials]


def snapshot_has_checkpoint(run_dir, trial_id: str) -> bool:
    """Whether segment 1's experiment snapshot records a checkpoint of the trial (False while it is being written)."""
    for path in run_dir.glob("experiment_state-*.json"):
        try:
            state = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        for _, metadata in state["trial_data"]:
            last = json.loads(metadata)["last_result"]
            if last.get("trial_id") == trial_id and last.get("checkpoint_dir_name"):
                return True
    return False


def started_driver(data, tmp_path, segment_trials: int, **options) -> tuple[subprocess.Popen, object]:
    """A driver (`start_tune`: one trial at a time, 1 CPU, on the tiny simulation, storage `tmp_path`) in a session
    of its own, where what it starts can be found; its output goes to tmp_path/driver.log (the open file is
    returned with it)."""
    request = dict(data_dir=str(data), data_type="Simulation", n_clusters=5, cpus_per_trial=1, gpus_per_trial=0,
                   max_concurrent=1, storage=str(tmp_path), **options)
    script = ("from search.tuning import TuneRequest, start_tune; "
              f"start_tune(TuneRequest(**{request!r}), segment_trials={segment_trials})")
    log = open(tmp_path / "driver.log", "w")
    return subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True), log


def killed_alone(driver: subprocess.Popen) -> list[int]:
    """SIGKILL to the driver only (as a preempted machine or the OOM killer would); what it started must end with it
    (its segment's process, Ray's processes): the processes of its session still alive a minute later."""
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    deadline = time.time() + 60
    while session_pids(driver.pid) and time.time() < deadline:
        time.sleep(0.5)
    return session_pids(driver.pid)


# A search of 3 segments (numbering, ledger, trials.parquet, study, folders, ASHA's rungs carried on) is checked on
# the long search of tests/test_tune_memory.py, which runs one: a second segmented search cost a minute of CI.


def test_a_killed_driver_resumes_its_segment_without_losing_or_repeating_trials_then_runs_the_rest(tiny_sim,
                                                                                                tmp_path):
    """SIGKILL to the driver alone (as a preempted machine or the OOM killer would) while the second trial of segment
    1 trains: no Ray process of its session survives it; `spamo tune --resume` restores segment 1 (where a search of
    one segment, the usual case, keeps its experiment), the running trial continues from its checkpoint, the
    finished one is not trained again, then segment 2 runs. Segments of 2, 3 trials: the fewest that put a segment
    after the one killed. A report (and a checkpoint) every 8 epochs: a report clusters and scores the embedding,
    which at 2 epochs cost as much as the training itself; the kill needs only one checkpoint Ray's snapshot knows."""
    epochs = 240  # long enough that trial 2 still trains a snapshot interval (2 s) after its first checkpoint
    driver, log = started_driver(tiny_sim, tmp_path, segment_trials=2, name="cut", num_samples=3, epochs=epochs,
                                 report_every=8, scheduler="none", checkpoint_every=8)
    run_dir = tmp_path / "cut"

    def second_trial_checkpointed() -> bool:
        ended = len(list((run_dir / "ledger").glob("*.json")))
        return ended == 1 and bool(list(run_dir.glob("trial_00002_*/checkpoint_*")))

    try:
        deadline = time.time() + 300
        while not second_trial_checkpointed() and time.time() < deadline and driver.poll() is None:
            time.sleep(0.2)
        assert second_trial_checkpointed(), (tmp_path / "driver.log").read_text()[-3000:]
        running = next(run_dir.glob("trial_00002_*")).name.rsplit("_", 1)[-1]
        # killed once Ray's experiment snapshot (rewritten every 2 s) holds a checkpoint of the running trial: what
        # the resumed segment continues it from
        deadline = time.time() + 60
        while not snapshot_has_checkpoint(run_dir, running) and time.time() < deadline and driver.poll() is None:
            time.sleep(0.2)
        assert snapshot_has_checkpoint(run_dir, running), (tmp_path / "driver.log").read_text()[-3000:]
        assert driver.poll() is None, "the search ended before it could be killed"
        survivors = killed_alone(driver)
    finally:
        kill_session(driver.pid)
        log.close()
    assert not survivors, f"Ray processes outlived the killed driver: {survivors}"
    before = load_ledger(run_dir)
    assert sorted(r["number"] for r in before.values()) == [1] and running not in before
    assert all(r["status"] == "finished" for r in before.values())
    assert json.loads((run_dir / SEGMENTS_FILE).read_text())["ended"] == {}

    resumed = subprocess.run([sys.executable, str(ROOT / "cli.py"), "tune", "--resume", "cut", "--storage",
                              str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    frame = pd.read_parquet(run_dir / TRIALS_FILE).set_index("trial_id")
    assert sorted(frame["number"]) == [1, 2, 3] and (frame["status"] == "finished").all()
    after = load_ledger(run_dir)
    for trial_id, record in before.items():  # same id, same scores, same run: not trained again
        assert after[trial_id]["recorded_at"] == record["recorded_at"]
        row = frame.loc[trial_id]
        assert row["ari"] == pytest.approx(record["result"]["ari"])
        assert row["started_at"] == pytest.approx(record["result"]["started_at"])
        assert row["finished_at"] == pytest.approx(record["result"]["finished_at"])
    second = frame.loc[running]  # segment 1 was restored: its running trial continued, it was not replaced
    assert second["number"] == 2 and second["start_epoch"] > 0 and second["epoch"] == epochs
    assert next(run_dir.glob("segment_002/trial_00003_*")).is_dir()
    states = study_states(run_dir, "cut")
    assert states.count("COMPLETE") == 3 and "RUNNING" not in states
    assert json.loads((run_dir / SEGMENTS_FILE).read_text())["ended"] == {"1": [], "2": []}


def test_a_driver_killed_between_two_segments_resumes_with_the_rungs_the_first_one_left(tiny_sim, tmp_path,
                                                                                       monkeypatch):
    """The driver is SIGKILLed the moment segment 1 (one trial, ASHA) has recorded its end, while segment 2's process
    is still starting (its imports alone take seconds): nothing of segment 2 is saved, so the resumed search starts
    it anew. Its first trial is judged against the rung segment 1 left (saved in the run folder with the segment's
    end: search.segments.SCHEDULER_FILE), not against an empty one. The resume runs in this process, watched."""
    driver, log = started_driver(tiny_sim, tmp_path, segment_trials=1, name="gap", num_samples=2, epochs=2,
                                 report_every=2)
    run_dir = tmp_path / "gap"

    def first_segment_ended() -> bool:
        try:
            return json.loads((run_dir / SEGMENTS_FILE).read_text())["ended"] == {"1": []}
        except (OSError, json.JSONDecodeError, KeyError):
            return False

    try:
        deadline = time.time() + 300
        while not first_segment_ended() and time.time() < deadline and driver.poll() is None:
            time.sleep(0.05)
        assert first_segment_ended(), (tmp_path / "driver.log").read_text()[-3000:]
        survivors = killed_alone(driver)
    finally:
        kill_session(driver.pid)
        log.close()
    assert not survivors, f"processes outlived the killed driver: {survivors}"
    assert not list(run_dir.glob("segment_002/tuner.pkl")), "segment 2 had started: the kill came too late"
    assert sorted(r["number"] for r in load_ledger(run_dir).values()) == [1]

    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # what search.ray_cluster.connect sets; undone after
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "2")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    rungs = RungWatch()
    outcome = resume_tune("gap", storage=str(tmp_path), log=lambda *args, **kwargs: None, observers=(rungs,))
    assert outcome.complete and outcome.n_trials == 2
    assert rungs.at_start == {2: [[1]]}  # trial 1's report at ASHA's rung (a new scheduler: [[0]])
    assert json.loads((run_dir / SEGMENTS_FILE).read_text())["ended"] == {"1": [], "2": []}


def test_a_search_stopped_before_ray_saved_anything_starts_again_on_resume(tiny_sim, tmp_path):
    """The driver killed right after it wrote the run folder, while its first segment's process starts: Ray has
    saved nothing and no trial finished. `spamo tune --resume` starts the search again under its name, with its
    request, and what the first start left (here a study with a trial left running) is gone."""
    driver, log = started_driver(tiny_sim, tmp_path, segment_trials=2, name="unsaved", num_samples=2, epochs=10,
                                 report_every=5, scheduler="none")
    run_dir = tmp_path / "unsaved"
    try:
        deadline = time.time() + 120
        while not (run_dir / SEGMENTS_FILE).is_file() and time.time() < deadline and driver.poll() is None:
            time.sleep(0.05)
        assert (run_dir / SEGMENTS_FILE).is_file(), (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        kill_session(driver.pid)
        log.close()
    assert not list(run_dir.glob("experiment_state-*.json")) and not (run_dir / "ledger").exists()
    stale = optuna.create_study(study_name="unsaved", storage=f"sqlite:///{run_dir / STUDY_FILE}",
                                load_if_exists=True)
    stale.ask()  # a trial the first start's sampler handed out and never told
    resumed = subprocess.run([sys.executable, str(ROOT / "cli.py"), "tune", "--resume", "unsaved", "--storage",
                              str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "starting unsaved again" in resumed.stdout
    frame = pd.read_parquet(run_dir / TRIALS_FILE)
    assert sorted(frame["number"]) == [1, 2] and (frame["status"] == "finished").all()
    assert study_states(run_dir, "unsaved") == ["COMPLETE", "COMPLETE"]
