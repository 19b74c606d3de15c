"""One segment of a search (search.segments), in a process of its own: its Ray Tune controller, searcher and
scheduler live and die here, so that the driver (search.tuning) holds nothing per trial from one segment to the
next (benchmarks/results/tune.md, "Driver memory").

The driver hands `fit_segment` a `SegmentJob` through `search.segment_process.run_in_child`. This process joins the
driver's Ray instance (its GCS address, or the `ray://` address the driver joined), passes the prepared data on to
its trials by reference (the driver put it into the object store once and holds it: nothing is loaded, preprocessed
or copied again; the reference travels pickled, which pins the object in the driver, its owner, as holding it
does anyway, so a trial retried after its node was lost still finds it), builds a new
Tuner (or restores the one a stopped driver left), fits its one segment, records the segment's end in the run folder
(the scheduler's state, then segments.json) and returns a `SegmentReply`: the trials Ray knew, whether the segment
ended, and the observers (the driver's extra Tune callbacks) as they are after the segment, whose state the driver
takes back.

What carries over from one segment to the next therefore goes through the run folder: the study (optuna.db), the
ledger, the trial numbers (segments.json) and ASHA's rungs (search.segments.SCHEDULER_FILE), so a driver stopped or
killed between two segments starts the next one where the last one left them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import ray
from ray import cloudpickle, tune
from ray.tune.logger import JsonLoggerCallback

from search.ledger import ForgetEnded, TrialLedger, TrialLog, exception_summary, load_ledger
from search.results import metric_mode
from search.run_folder import STUDY_FILE, TuneRequest, experiment_path, load_prepared
from search.schedulers import AshaScheduler, FifoScheduler
from search.searcher import ResumableOptunaSearch
from search.segments import NumberedTrials, Segment, read_plan, read_scheduler, write_plan, write_scheduler
from search.space import SearchSpace
from search.trainable import TrialContext, run_trial, trial_dirname
from spamo.config import SpamoConfig


@dataclass
class SegmentJob:
    """What a segment's process needs (pickled to it): the request and what the driver built from the data (the
    space, the resolved base config, the metric, the data's ObjectRef), the trials' shared context (graph cache,
    finished trials, the user's clustering backends), each trial's resources, the segment, and the Ray address to
    join."""

    request: TuneRequest
    run_dir: Path
    space: SearchSpace
    base: SpamoConfig
    metric: str
    data: object  # ObjectRef of the prepared data, owned by the driver (None: load it here, for a Ray client)
    context: TrialContext
    resources: dict
    segment: Segment
    ray_address: str
    restore: bool = False  # restore the segment's Ray experiment (a stopped driver's) instead of starting it
    observers: tuple = ()  # more Tune callbacks: see search.tuning.start_tune


@dataclass
class SegmentReply:
    """What a segment's process returns: (trial id, number, config) of every trial Ray knew (None: Ray's controller
    failed, `error` says how), whether the segment ended (all its trials, recorded in segments.json), the observers
    after the segment, and when its fit began and ended (time.time())."""

    known: list | None
    ended: bool
    observers: tuple
    error: str | None = None
    fit_started_at: float = 0.0
    fit_ended_at: float = 0.0


def fit_segment(call: tuple[str, bytes]) -> SegmentReply:
    """`call`: (the Ray address to join, the pickled `SegmentJob`: it holds an ObjectRef, which unpickles only once
    Ray is joined). Join the driver's Ray, fit the job's segment, record its end, leave Ray."""
    address, pickled = call
    ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        return _fit(cloudpickle.loads(pickled))
    finally:
        ray.shutdown()


def segment_call(job: SegmentJob) -> tuple[str, bytes]:
    """What the driver hands `fit_segment` for `job`."""
    return job.ray_address, cloudpickle.dumps(job)


def _fit(job: SegmentJob) -> SegmentReply:
    data = job.data if job.data is not None else load_prepared(job.request)[0]  # None: see search.tuning.share_data
    trainable = tune.with_resources(tune.with_parameters(run_trial, prepared=data, context=job.context),
                                    job.resources)
    if job.restore:
        tuner = tune.Tuner.restore(experiment_path(job.request, job.segment.number), trainable=trainable,
                                   resume_unfinished=True, resume_errored=False, restart_errored=False)
        scheduler = restored_scheduler(tuner)
    else:
        tuner, scheduler = build_tuner(job, trainable, read_scheduler(job.run_dir))
    started = time.time()
    try:
        grid = tuner.fit()
    except Exception as exc:  # noqa: BLE001 - Ray's controller itself failed (e.g. workers killed for memory)
        return SegmentReply(None, False, job.observers, exception_summary(str(exc)) or type(exc).__name__, started,
                            time.time())
    ended_at = time.time()
    known = ray_trials(grid)
    return SegmentReply(known, record_end(job, known, scheduler), job.observers, None, started, ended_at)


def record_end(job: SegmentJob, known: list, scheduler) -> bool:
    """Whether the segment ended (every one of its trials ended and is in the ledger; not when stopped with Ctrl+C);
    if so, record it: the scheduler's state for the next segment, then the segment in segments.json, with the
    ledger's records of it that Ray's snapshot lost (search.segments)."""
    segment, records = job.segment, load_ledger(job.run_dir)
    ids = {k[0] for k in known}
    if len(known) < segment.size or not ids <= set(records):
        return False
    plan = read_plan(job.run_dir, job.request.num_samples)
    plan.ended[segment.number] = sorted(tid for tid, record in records.items()
                                        if segment.holds(record.get("number")) and tid not in ids)
    if scheduler is not None:
        write_scheduler(job.run_dir, scheduler.for_next_segment())
    write_plan(job.run_dir, plan)
    return True


def ray_trials(grid) -> list[tuple[str, int | None, dict]]:
    """(trial id, number, config) of every trial Ray knows, read from its folder name ("trial_<number>_<id>")."""
    out = []
    for result in grid:
        parts = Path(str(result.path)).name.split("_")
        number = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
        out.append((parts[-1], number, dict(result.config or {})))
    return out


def restored_scheduler(tuner):
    """The scheduler a restored Tuner runs with (unpickled with it: the rungs of the segments before it), to save
    for the next segments; None where Ray's Tuner keeps it elsewhere (the next segment then reads the last one
    saved)."""
    config = getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None)
    scheduler = getattr(config, "scheduler", None)
    return scheduler if isinstance(scheduler, (AshaScheduler, FifoScheduler)) else None


def asha_grace(epochs: int, report_every: int) -> int:
    """ASHA's first rung: an eighth of the epochs rounded up to a report (a rung is judged at the first report at or
    after it, so a rung between reports would only hide where it is judged), at least one report in. With reduction
    factor 3 the later rungs are 3x, 9x, ... the first, below `max_t` (one past the last epoch, which lets the final
    report through: ASHA stops every trial that reaches max_t). 200 epochs, reports every 10: rungs at 30 and 90
    epochs, so in a long search two trials in three stop at 30 and one in nine trains all 200 (about 62 epochs a
    trial on average, against 200 without a scheduler)."""
    grace = -(-(epochs // 8) // report_every) * report_every
    return min(epochs, max(report_every, grace))


def build_scheduler(job: SegmentJob):
    request, mode = job.request, metric_mode(job.metric)
    epochs = job.space.max_epochs(job.base.epochs)
    if request.scheduler == "asha":
        return AshaScheduler(time_attr="epoch", metric=job.metric, mode=mode, max_t=epochs + 1,
                             grace_period=asha_grace(epochs, request.report_every), reduction_factor=3)
    return FifoScheduler()


def build_tuner(job: SegmentJob, trainable, scheduler=None):
    """The Tuner of the job's segment. `trainable`: with its parameters and resources. `scheduler`: the one the
    segments before it left (search.segments.read_scheduler: ASHA's rungs, saved without the ended segment's trials
    by `record_end`), which this segment carries on (None: a new one). The job's observers run after the search's own callbacks (so after an ended trial was trimmed, see
    search.ledger.ForgetEnded)."""
    request, mode, segment = job.request, metric_mode(job.metric), job.segment
    first = segment.number == 1
    storage = optuna.storages.RDBStorage(f"sqlite:///{job.run_dir / STUDY_FILE}")
    # a fresh sampler per segment: seeded apart, or it would repeat the first segment's random start-up proposals
    sampler = optuna.samplers.TPESampler(seed=request.seed + segment.number - 1, multivariate=True)
    searcher = ResumableOptunaSearch(space=job.space.distributions, metric=job.metric, mode=mode,
                                     points_to_evaluate=job.space.first_points(job.base) if first else None,
                                     sampler=sampler, study_name=request.name, storage=storage)
    scheduler = scheduler if scheduler is not None else build_scheduler(job)
    storage_path, name = experiment_path(request, segment.number).rsplit("/", 1)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=NumberedTrials(searcher, segment, request.max_concurrent),
                                    scheduler=scheduler, num_samples=segment.last, reuse_actors=request.reuse_workers,
                                    trial_dirname_creator=trial_dirname,
                                    trial_name_creator=trial_dirname),
        run_config=tune.RunConfig(name=name, storage_path=storage_path,
                                  # only system failures reach Ray (a trial's own error is reported as a result,
                                  # see search.trainable): a lost worker or node is retried from its checkpoint
                                  failure_config=tune.FailureConfig(max_failures=request.max_retries,
                                                                    fail_fast=False),
                                  # two kept: Ray deletes the older one when it registers a newer one, and its
                                  # experiment snapshot (rewritten every few seconds) may still name the older
                                  # one; a driver killed in between would leave a resumed trial no checkpoint
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                  callbacks=[TrialLedger(job.run_dir), TrialLog(job.metric, request.num_samples),
                                             JsonLoggerCallback(), ForgetEnded(job.metric), *job.observers],
                                  verbose=0),
    ), scheduler
