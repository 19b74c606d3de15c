"""The tune driver holds no per-trial objects beyond a bound (issue 14: driver memory flat over long searches).

A real local Ray (started in this process) and a real Optuna study in its SQLite file run a search of many tiny
trials, driven from this process, with a watching Tune callback after the search's own. The search runs as segments
of a few trials, one experiment each (search.segments), each segment's controller in a child process of the driver
(search.segment_run): the callback travels there and its state comes back when the segment ends. At trial ends it
counts, where the controller runs, the objects that grew with every trial before (benchmarks/results/tune.md,
"Driver memory"): Ray's tracked workers and tasks left queued on cancelled workers (search.schedulers), Optuna
handles of told trials (search.searcher), what Ray Tune keeps of an ended trial's results
(search.ledger.ForgetEnded), and Ray Tune's `Trial`s themselves, which its controller keeps for as long as its
experiment runs: at most one segment's. And the driver itself holds none of them: each segment ran in a process of
its own, which has ended. Counts, not resident memory or time: they do not depend on the machine's load.

The same search (22 trials: segments of 8, 8 and 6) is the segmented search of tests/test_tune_segments.py: what must
not notice the segments (numbering, the ledger, trials.parquet, the study, every segment's folder) and ASHA's rungs
carried into the next segment, checked here rather than on a second search (each segment costs a process's start,
a Tuner's start and a fresh worker, about 20 s on CI's 2 cores).
"""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import optuna
import pandas as pd
import pytest
import ray
from ray import tune
from ray.air.execution._internal.tracked_actor import TrackedActor
from ray.air.execution._internal.tracked_actor_task import TrackedActorTask
from ray.tune.experiment import Trial

from search.ledger import KEPT_RESULT_KEYS, load_ledger
from search.run_folder import TRIALS_FILE
from search.schedulers import AshaScheduler
from search.segments import SEGMENTS_FILE, read_scheduler
from search.tuning import TuneRequest, start_tune
from test_tune_segments import RungWatch, study_states

pytestmark = pytest.mark.ray

TRIALS = 22
SEGMENT = 8  # trials per segment (one Tuner each): the search runs as 3, the last one of 6
SLOTS = 2  # trials at once: 2 CPUs, 1 per trial


def live(kind: type) -> int:
    return sum(type(obj) is kind for obj in gc.get_objects())


class Watch(tune.Callback):
    """At every trial end: is the ended trial trimmed; every `every` ends and at the last (`total`): live per-trial
    objects in the driver."""

    def __init__(self, metric: str, every: int, total: int):
        self.metric, self.every, self.total, self.ended, self.counts, self.untrimmed = metric, every, total, [], {}, []
        self.controllers = set()  # (process id, parent process id) of the processes it watched Ray Tune's controller in

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended.append(trial.trial_id)
        self.controllers.add((os.getpid(), os.getppid()))
        ended = set(self.ended)
        for seen in trials:  # every trial that ended so far, not only this one, stays trimmed
            if seen.trial_id in ended:
                metadata = seen.run_metadata
                extra = set(metadata.last_result) - KEPT_RESULT_KEYS - {self.metric}
                analysed = set(metadata.metric_analysis) - {self.metric, "training_iteration"}
                if extra or analysed or metadata.metric_n_steps:
                    self.untrimmed.append((seen.trial_id, sorted(extra), sorted(analysed)))
        if len(self.ended) % self.every == 0 or len(self.ended) == self.total:
            gc.collect()
            self.counts[len(self.ended)] = {"tracked workers": live(TrackedActor),
                                            "tracked tasks": live(TrackedActorTask),
                                            "optuna handles": live(optuna.trial.Trial),
                                            "ray trials": live(Trial),
                                            "study storages": live(optuna.storages.RDBStorage)}


@pytest.fixture(scope="module")
def tiny_sim(tmp_path_factory):
    from spamo.simulate import write_simulation

    out = tmp_path_factory.mktemp("memory_data") / "sim"
    write_simulation(out, n_spots=300, seed=3)
    return out


def test_a_long_search_in_segments_loses_no_trial_carries_the_rungs_and_keeps_no_per_trial_objects(tiny_sim, tmp_path,
                                                                                                  monkeypatch):
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # what search.ray_cluster.connect sets; undone after
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "2")
    request = TuneRequest(name="memory", num_samples=TRIALS, data_dir=str(tiny_sim), data_type="Simulation",
                          n_clusters=5, epochs=2, report_every=2, cpus_per_trial=1, gpus_per_trial=0,
                          storage=str(tmp_path / "runs"))
    watch, rungs = Watch("ari", every=SEGMENT, total=TRIALS), RungWatch()
    ray.init(address="local", num_cpus=SLOTS, include_dashboard=False, log_to_driver=False)
    try:
        outcome = start_tune(request, log=lambda *args, **kwargs: None, observers=(watch, rungs),
                             segment_trials=SEGMENT)
    finally:
        ray.shutdown()

    # nothing the trimming or the segments touched is lost: every trial is in trials.parquet, numbered in order, in
    # the ledger and told to the one study
    run_dir = outcome.run_dir
    assert outcome.complete and outcome.n_trials == TRIALS and len(watch.ended) == TRIALS
    frame = pd.read_parquet(run_dir / TRIALS_FILE)
    assert list(frame["number"]) == list(range(1, TRIALS + 1)) and frame["trial_id"].is_unique
    assert frame["status"].isin(["finished", "stopped_early"]).all()
    assert frame["ari"].notna().all() and frame["lr"].notna().all()  # the settings, from the ledger
    ledger = load_ledger(run_dir)
    assert sorted(r["number"] for r in ledger.values()) == list(range(1, TRIALS + 1))
    assert set(ledger) == set(frame["trial_id"])
    states = study_states(run_dir, "memory")
    assert len(states) == TRIALS and states.count("COMPLETE") == TRIALS  # every segment's trials told to it
    # segment 1 is where a one-segment search keeps its Ray experiment (the run folder); the others are inside it
    folders = {int(p.name.split("_")[1]): p.parent for p in run_dir.glob("**/trial_*") if (p / "result.json").is_file()}
    assert folders == {n: run_dir if n <= 8 else run_dir / ("segment_002" if n <= 16 else "segment_003")
                       for n in range(1, TRIALS + 1)}
    assert json.loads((run_dir / SEGMENTS_FILE).read_text()) == {"trials_per_segment": SEGMENT,
                                                                   "ended": {"1": [], "2": [], "3": []}}
    # the first trial of each later segment is judged against the rung of every trial before it (each reports at
    # epoch 2, ASHA's one rung): one scheduler serves all segments
    assert rungs.at_start[1] == [[0]]
    assert rungs.at_start[9] == [[8]] and rungs.at_start[17] == [[16]]

    # every ended trial keeps only Ray's bookkeeping and the metric, for the rest of the search
    assert watch.untrimmed == []
    # per-trial objects stay bounded by the trials running at once, not by the trials run; without the schedulers'
    # clean-up, 9 tracked workers were alive after 8 trials (about one per worker handed over), and without the
    # searcher's, 10 Optuna handles (one per trial suggested)
    assert sorted(watch.counts) == [8, 16, 22]
    for ended, counts in watch.counts.items():
        assert counts["tracked workers"] <= 2 * SLOTS + 1, (ended, counts)
        assert counts["tracked tasks"] <= 2 * SLOTS + 1, (ended, counts)
        assert counts["optuna handles"] <= SLOTS + 1, (ended, counts)
    # counted at each segment's last trial end: that segment's Trials, none of the segments before it (in one
    # experiment, 8, 16 and 22)
    assert [counts["ray trials"] for counts in watch.counts.values()] == [8, 8, 6], watch.counts
    # one storage (one SQLAlchemy engine) serves the study in every segment
    assert all(counts["study storages"] == 1 for counts in watch.counts.values()), watch.counts

    # the driver (this process) holds nothing per trial across segments: each segment's controller ran in a child
    # process of its own, which has ended; the driver never held a Trial, a Tuner or a scheduler
    assert len(watch.controllers) == 3, watch.controllers
    assert all(parent == os.getpid() and pid != os.getpid() for pid, parent in watch.controllers)
    assert not any(Path(f"/proc/{pid}").exists() for pid, _ in watch.controllers)
    gc.collect()
    assert live(Trial) == live(tune.Tuner) == live(AshaScheduler) == 0
    # ASHA's rungs crossed from one segment's process to the next through the run folder
    assert read_scheduler(run_dir).recorded() == [TRIALS]
