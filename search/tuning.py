"""`spamo tune`: the driver of a search. Ray Tune runs the trials, Optuna (multivariate TPE, seeded) samples them.

The driver loads and preprocesses the dataset once and hands it to every trial through Ray's object store; it
starts (or joins) a Ray cluster, runs the search, and writes the run folder. A run is described by `tune_run.toml`
in its folder, which is all `spamo tune --resume NAME` needs to continue it.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path

from search import ray_cluster
from search.backends import travelling_backends
from search.graph_cache import start_cache
from search.ledger import (ForgetEnded, TrialLedger, TrialLog, exception_summary, finished_results,
                           load_ledger, release_freed_memory)
from search.options import check_stored_request, check_tune_request
from search.results import (METRICS, TRUTH_SCORES, best_row, metric_mode, plot_history, plot_importances,
                            selection_note, top_table, trials_frame, write_best_config, write_parquet)
from search.run_folder import (RESULTS_ROOT, RUN_FILE, STUDY_FILE, TRIALS_FILE, TuneRequest, experiment_path,
                               is_uri, load_prepared, run_folder, write_request)
from search.schedulers import AshaScheduler, FifoScheduler
from search.searcher import ResumableOptunaSearch
from search.segments import (SEGMENT_TRIALS, NumberedTrials, Segment, SegmentPlan, read_plan,
                             write_plan)
from search.space import load_space, space_path
from search.trainable import TrialContext, run_trial, trial_dirname
from spamo.errors import SpamoInputError
from spamo.pipeline import package_versions, truth_sha256
from spamo.selection import DEFAULT_LABEL_FREE, DEFAULT_REASON

__all__ = ["TuneRequest", "TuneOutcome", "start_tune", "resume_tune", "run_folder", "is_uri", "choose_metric"]


@dataclass
class TuneOutcome:
    run_dir: Path
    complete: bool
    n_trials: int
    best: dict | None
    metric: str


# ------------------------------------------------------------------------------------------------ checks


def _check_request(request: TuneRequest) -> None:
    """A request handed to `start_tune` directly, by the rules (and in the words) of `spamo tune`'s own refusals
    (`search.options`, which the command line and `spamo.tune` apply before importing this module); then that the
    clustering backends registered in this process can travel to the trials (`search.backends`)."""
    check_tune_request(request)
    travelling_backends()


def choose_metric(metric: str | None, has_truth: bool) -> str:
    """`ari` when the data has a ground truth, else the measured label-free default
    (`spamo.selection.DEFAULT_LABEL_FREE`); a given metric is checked."""

    if metric is None:
        return "ari" if has_truth else DEFAULT_LABEL_FREE
    if metric not in METRICS:
        raise SpamoInputError("--metric", f"'{metric}' is not one of {', '.join(METRICS)}")
    if metric in TRUTH_SCORES and not has_truth:
        raise SpamoInputError("--metric", f"'{metric}' needs a ground truth, which this data has not")
    return metric


def metric_reason(metric: str, given: str | None) -> str:
    """One line: which criterion the search optimises and why (printed by `spamo tune`, kept in best_config)."""

    if given is not None:
        return f"{metric}: asked for with --metric"
    if metric in TRUTH_SCORES:
        return f"{metric}: the data has a ground truth (the choice will have seen the labels it is scored against)"
    return DEFAULT_REASON


# ------------------------------------------------------------------------------------------------ the search


@dataclass
class Search:
    """The loaded data and everything built from it that a (new or resumed) search needs."""

    request: TuneRequest
    run_dir: Path
    prepared: object
    base: object
    space: object
    metric: str
    graph_cache: object = None  # handle of the graph cache actor: the actor lives as long as the driver holds it
    study_storage: object = None  # the study's SQLite storage: one SQLAlchemy engine for all segments


def load_search(request: TuneRequest, run_dir: Path) -> Search:
    """Load and preprocess the data once, resolve the base config, read the search space."""

    space = load_space(space_path(request.dataset, request.space))
    prepared, base = load_prepared(request)
    metric = choose_metric(request.metric, prepared.truth is not None)
    space = space.for_data(prepared.n_modalities, request.epochs)
    return Search(request, run_dir, prepared, base, space, metric)


def build_trainable(search: Search, finished: dict):
    from ray import tune


    cache_name = f"spamo-graphs-{search.request.name}"
    search.graph_cache = start_cache(cache_name)
    context = TrialContext(base=search.base, fixed=search.space.fixed, report_every=search.request.report_every,
                           run_dir=str(search.run_dir), keep_embeddings=search.request.keep_embeddings,
                           cache_name=cache_name, cpus_per_trial=search.request.cpus_per_trial, finished=finished,
                           metric=search.metric, checkpoint_every=search.request.checkpoint_every)
    return tune.with_parameters(run_trial, prepared=search.prepared, context=context)


def study_storage(run_dir: Path):
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{run_dir / STUDY_FILE}")


def asha_grace(epochs: int, report_every: int) -> int:
    """ASHA's first rung: an eighth of the epochs rounded up to a report (a rung is judged at the first report at or
    after it, so a rung between reports would only hide where it is judged), at least one report in. With reduction
    factor 3 the later rungs are 3x, 9x, ... the first, below `max_t` (one past the last epoch, which lets the final
    report through: ASHA stops every trial that reaches max_t). 200 epochs, reports every 10: rungs at 30 and 90
    epochs, so in a long search two trials in three stop at 30 and one in nine trains all 200 (about 62 epochs a
    trial on average, against 200 without a scheduler)."""
    grace = -(-(epochs // 8) // report_every) * report_every
    return min(epochs, max(report_every, grace))


def build_scheduler(search: Search):
    request, mode = search.request, metric_mode(search.metric)
    epochs = search.space.max_epochs(search.base.epochs)
    if request.scheduler == "asha":
        return AshaScheduler(time_attr="epoch", metric=search.metric, mode=mode, max_t=epochs + 1,
                             grace_period=asha_grace(epochs, request.report_every), reduction_factor=3)
    return FifoScheduler()


def build_tuner(search: Search, trainable, observers: tuple = (), segment: Segment | None = None, scheduler=None):
    """The Tuner of one segment of a search (search.segments; None: the whole search as one). `trainable`: with its
    resources (`tune.with_resources`), wrapped once for all segments. `scheduler`: the
    previous segment's, whose state (ASHA's rungs) the new segment carries on (None: a new one). `observers`: more
    Tune callbacks, run after the search's own (so after an ended trial was trimmed, see search.ledger.ForgetEnded):
    what a test or a benchmark watches the driver with; the same objects watch every segment."""
    import optuna
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    request, mode = search.request, metric_mode(search.metric)
    segment = segment or Segment(1, 1, request.num_samples)
    first = segment.number == 1
    if search.study_storage is None:
        search.study_storage = study_storage(search.run_dir)
    # a fresh sampler per segment: seeded apart, or it would repeat the first segment's random start-up proposals
    sampler = optuna.samplers.TPESampler(seed=request.seed + segment.number - 1, multivariate=True)
    searcher = ResumableOptunaSearch(space=search.space.distributions, metric=search.metric, mode=mode,
                                     points_to_evaluate=search.space.first_points(search.base) if first else None,
                                     sampler=sampler, study_name=request.name, storage=search.study_storage)
    scheduler = scheduler.for_next_segment() if scheduler is not None else build_scheduler(search)
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
                                  callbacks=[TrialLedger(search.run_dir), TrialLog(search.metric, request.num_samples),
                                             JsonLoggerCallback(), ForgetEnded(search.metric), *observers],
                                  verbose=0),
    ), scheduler


# ------------------------------------------------------------------------------------------------ entry points


def start_tune(request: TuneRequest, log=print, observers: tuple = (),
               segment_trials: int = SEGMENT_TRIALS) -> TuneOutcome:
    """A new search named `request.name`; refuses a name that already has a run folder. `observers`: see
    `build_tuner`. `segment_trials`: trials per segment (search.segments; smaller only in tests)."""
    from ray import tune

    _check_request(request)
    request = request.resolved()
    if request.address:
        ray_cluster.resolve(request.address)  # an unreachable address is refused before the data is loaded
    run_dir = run_folder(request.name, request.storage, request.results_root)
    if (run_dir / RUN_FILE).exists():
        raise SpamoInputError("--name", f"a run named '{request.name}' exists in {run_dir}: "
                                        f"continue it with --resume {request.name} or pick another --name")
    search = load_search(request, run_dir)
    ray_cluster.connect(request.address, log)  # before anything is written: a refused connection leaves nothing
    write_request(run_dir, request)
    plan = SegmentPlan(request.num_samples, max(1, min(segment_trials, request.num_samples)))
    write_plan(run_dir, plan)
    resources = ray_cluster.trial_resources(request.cpus_per_trial, request.gpus_per_trial, log)
    segments = len(plan.segments)
    log(f"[bold]spamo tune[/] {request.name}: {search.prepared.name}, {search.prepared.n_spots} spots, "
        f"{request.num_samples} trials of {resources['cpu']:g} CPU + {resources['gpu']:g} GPU, metric "
        f"{search.metric}, scheduler {request.scheduler}"
        + (f", in {segments} segments of {plan.size}" if segments > 1 else "") + f" -> {run_dir}")
    log(f"optimising {metric_reason(search.metric, request.metric)}")
    trainable = tune.with_resources(build_trainable(search, finished={}), resources)
    return finish(search, plan, SegmentRun(plan.segments[0], None, None), trainable, log, observers)


def resume_tune(name: str, storage: str | None = None, address: str | None = None,
                results_root: str | Path = RESULTS_ROOT, log=print, observers: tuple = ()) -> TuneOutcome:
    """Continue an interrupted search (Ctrl+C or a killed driver): finished trials are kept, not rerun, and
    unfinished ones continue from their last checkpoint. The segment that was running is restored (Ray's own
    experiment state), then the segments after it run."""
    from ray import tune


    run_dir = run_folder(name, storage, results_root)
    if not (run_dir / RUN_FILE).is_file():
        raise SpamoInputError("--resume", f"no tune run named '{name}' in {run_dir.parent}")
    request = check_stored_request(run_dir)  # a hand-edited tune_run.toml is refused before the data loads
    if address is not None:
        request.address = address
    if request.address:
        ray_cluster.resolve(request.address)
    search = load_search(request, run_dir)
    plan = read_plan(run_dir, request.num_samples)
    segment = plan.next_segment()
    experiment = experiment_path(request, segment.number if segment else len(plan.segments))
    ray_cluster.connect(request.address, log)
    restorable = tune.Tuner.can_restore(experiment)
    if not restorable and (segment is None or segment.number == 1):
        ray_cluster.disconnect()
        raise SpamoInputError("--resume", f"no Ray experiment state at {experiment} to resume from")
    finished = finished_results(load_ledger(run_dir))
    log(f"[bold]resuming[/] {name}: {len(finished)} trial(s) already finished are kept -> {run_dir}")
    resources = ray_cluster.trial_resources(request.cpus_per_trial, request.gpus_per_trial, log)
    trainable = tune.with_resources(build_trainable(search, finished), resources)
    if segment is None:  # every segment ended (the driver stopped while writing the outputs)
        return finish(search, plan, None, trainable, log, observers)
    if not restorable:  # the driver stopped between two segments, before the next one saved anything
        return finish(search, plan, SegmentRun(segment, None, None), trainable, log, observers)
    tuner = tune.Tuner.restore(experiment, trainable=trainable,
                               resume_unfinished=True, resume_errored=False, restart_errored=False)
    return finish(search, plan, SegmentRun(segment, tuner, restored_scheduler(tuner)), trainable, log, observers)


def restored_scheduler(tuner):
    """The scheduler a restored Tuner runs with (unpickled with it: the rungs of the segments before it), to carry
    on into the next segments; None (a new one) where Ray's Tuner keeps it elsewhere."""
    config = getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None)
    scheduler = getattr(config, "scheduler", None)
    return scheduler if isinstance(scheduler, (AshaScheduler, FifoScheduler)) else None


@dataclass
class SegmentRun:
    """A segment to run: its Tuner when restored (None: build one) and the scheduler to carry on (None: new)."""

    segment: Segment
    tuner: object
    scheduler: object


@dataclass
class SegmentEnd:
    """What the last segment run left: its trials as Ray knows them, None when Ray's controller failed."""

    segment: Segment
    known: list | None


def finish(search: Search, plan: SegmentPlan, start: SegmentRun | None, trainable, log,
           observers: tuple = ()) -> TuneOutcome:
    """Run the segments from `start` on (None: all ended), then write trials.parquet, best_config.toml and the
    pictures, and print the top trials."""
    started = time.time()
    last = None
    try:
        if start is not None:
            last = run_segments(search, plan, start, trainable, log, observers)
    finally:
        ray_cluster.disconnect()
    log(f"search ran {time.time() - started:.0f} s")
    return write_outputs(search, plan, last, log)


def run_segments(search: Search, plan: SegmentPlan, start: SegmentRun, trainable, log,
                 observers: tuple) -> SegmentEnd:
    """Fit segment after segment until one does not end (stopped, or Ray failed) or all have; each ended segment
    is recorded in segments.json before the next starts, and its Tuner, Trials and searcher are dropped."""
    tuner, scheduler = start.tuner, start.scheduler
    start.tuner = None  # held only here, so that it goes when its segment ends
    for segment in [s for s in plan.segments if s.number >= start.segment.number]:
        if tuner is None:
            tuner, scheduler = build_tuner(search, trainable, observers, segment, scheduler)
        if len(plan.segments) > 1:
            log(f"segment {segment.number}/{len(plan.segments)}: trials {segment.first}-{segment.last}")
        try:
            grid = tuner.fit()
        except Exception as exc:  # noqa: BLE001 - Ray's controller itself failed (e.g. workers killed for memory)
            log(f"[red]the search stopped[/]: {exception_summary(str(exc)) or type(exc).__name__}")
            return SegmentEnd(segment, None)
        known = _ray_trials(grid)
        tuner = grid = None  # the segment's Trials, searcher and results go with them
        records = load_ledger(search.run_dir)
        ids = {k[0] for k in known}
        if len(known) < segment.size or not ids <= set(records):  # stopped (Ctrl+C) before all its trials ended
            return SegmentEnd(segment, known)
        plan.ended[segment.number] = sorted(tid for tid, record in records.items()
                                            if segment.holds(record.get("number")) and tid not in ids)
        write_plan(search.run_dir, plan)
        gc.collect()
        release_freed_memory()
    return SegmentEnd(segment, known)


def _ray_trials(grid) -> list[tuple[str, int | None, dict]]:
    """(trial id, number, config) of every trial Ray knows, read from its folder name ("trial_<number>_<id>")."""
    out = []
    for result in grid:
        parts = Path(str(result.path)).name.split("_")
        number = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
        out.append((parts[-1], number, dict(result.config or {})))
    return out


def write_outputs(search: Search, plan: SegmentPlan, last: SegmentEnd | None, log) -> TuneOutcome:
    import optuna
    from rich.console import Console


    run_dir, request, metric = search.run_dir, search.request, search.metric
    lost = plan.lost()  # recorded by an ended segment, unknown to Ray's snapshot of it: lost with that snapshot
    records = {tid: rec for tid, rec in load_ledger(run_dir).items() if tid not in lost}
    known = last.known if last is not None and last.known is not None else []
    if last is not None and last.known is not None:  # the same for the segment that ran last (ended or not)
        ids = {k[0] for k in known}
        records = {tid: rec for tid, rec in records.items()
                   if tid in ids or not (last.segment.holds(rec.get("number")) or rec.get("number") is None)}
    pending = [{"trial_id": tid, "number": number, "status": "unfinished", "params": config, "result": {}}
               for tid, number, config in known if tid not in records]
    truth = search.prepared.truth
    meta = {**search.space.fixed, "dataset": search.prepared.name, "data_type": search.prepared.data_type, "metric": metric,
            "ground_truth_sha256": truth_sha256(truth) if truth is not None else None,
            **{f"version_{k}": v for k, v in package_versions().items()}}
    frame = trials_frame(records, pending, meta)
    write_parquet(frame, run_dir / TRIALS_FILE)
    best = best_row(frame, metric)
    if best is not None:
        write_best_config(best, metric, run_dir / "best_config.toml", why=metric_reason(metric, request.metric))
    plot_history(frame, metric, run_dir / "optimization_history.png")
    study = optuna.load_study(study_name=request.name, storage=f"sqlite:///{run_dir / STUDY_FILE}")
    complete = plan.next_segment() is None and len(frame) == request.num_samples and not pending
    if complete:
        _close_orphans(study)
    plot_importances(study, run_dir / "param_importances.png")
    console = Console()
    params = [p for p in ("knn_k", "lr", "optimizer") if p in search.space.distributions]
    if not frame.empty:
        console.print(top_table(frame, metric, params))
    counts = frame["status"].value_counts().to_dict() if not frame.empty else {}
    log(f"{len(frame)} trial(s): {', '.join(f'{v} {k}' for k, v in counts.items())}; {selection_note(metric)}")
    if best is not None:
        log(f"best: trial {int(best['number'])} {metric} = {best[metric]:.4f} -> {run_dir / 'best_config.toml'}")
    log(f"dashboard: optuna-dashboard sqlite:///{run_dir / STUDY_FILE}")
    if not complete:
        log(f"[yellow]the search stopped before all {request.num_samples} trials ended[/]; "
            f"continue it with: spamo tune --resume {request.name}"
            + (f" --storage {request.storage}" if request.storage else ""))
    return TuneOutcome(run_dir, complete, len(frame), None if best is None else best.to_dict(), metric)


def _close_orphans(study) -> None:
    """Optuna trials asked for but never told (the driver was killed in between) are marked failed."""
    import optuna

    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
