"""`spamo tune`: the driver of a search. Ray Tune runs the trials, Optuna (multivariate TPE, seeded) samples them.

The driver loads and preprocesses the dataset once and hands it to every trial through Ray's object store; it
starts (or joins) a Ray cluster, writes the run folder, runs the search, and writes its outputs (trials.parquet,
best_config.toml, the pictures). The search runs as segments (search.segments), each one's Ray Tune controller in a
child process that ends with its segment (search.segment_run, search.segment_process): the driver itself never
holds a Tuner, a Trial or a searcher. A run is described by `tune_run.toml` in its folder, which is all
`spamo tune --resume NAME` needs to continue it.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from search import ray_cluster
from search.backends import travelling_backends
from search.graph_cache import cache_actor_name, start_cache
from search.ledger import LEDGER_DIR, finished_results, load_ledger
from search.options import check_stored_request, check_tune_request
from search.results import (METRICS, TRUTH_SCORES, best_row, plot_history, plot_importances, selection_note,
                            top_table, trials_frame, write_best_config, write_parquet)
from search.run_folder import (RESULTS_ROOT, RUN_FILE, STUDY_FILE, TRIALS_FILE, TuneRequest, experiment_path,
                               is_uri, load_prepared, run_folder, write_request)
from search.segment_process import run_in_child
from search.segment_run import SegmentJob, fit_segment, segment_call
from search.segments import SEGMENT_TRIALS, SEGMENTS_FILE, Segment, SegmentPlan, read_plan, write_plan
from search.space import load_space, space_path
from search.trainable import TrialContext
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
    # the prepared data in Ray's object store, owned and held by the driver for the whole search (search.segment_run)
    data: object = None


def load_search(request: TuneRequest, run_dir: Path) -> Search:
    """Load and preprocess the data once, resolve the base config, read the search space."""

    space = load_space(space_path(request.dataset, request.space))
    prepared, base = load_prepared(request)
    metric = choose_metric(request.metric, prepared.truth is not None)
    space = space.for_data(prepared.n_modalities, request.epochs)
    return Search(request, run_dir, prepared, base, space, metric)


def share_data(search: Search, finished: dict) -> TrialContext:
    """Put the prepared data into Ray's object store once (every segment's process passes it on to its trials by
    reference, search.segment_run) and start the graph cache; the context every trial shares. Through a Ray client
    (`ray://`) a reference is the client session's own, so each segment's process loads the data itself."""
    import ray

    search.data = None if ray_cluster.is_client(search.request.address) else ray.put(search.prepared)
    cache_name = cache_actor_name(search.request.name)
    search.graph_cache = start_cache(cache_name)
    return TrialContext(base=search.base, fixed=search.space.fixed, report_every=search.request.report_every,
                        run_dir=str(search.run_dir), keep_embeddings=search.request.keep_embeddings,
                        cache_name=cache_name, cpus_per_trial=search.request.cpus_per_trial, finished=finished,
                        metric=search.metric, checkpoint_every=search.request.checkpoint_every)


def check_trial_precision(search: Search, resources: dict) -> None:
    """Every attention precision a trial may get must run on its share: refused before anything is written."""
    ray_cluster.check_share_runs(search.space.discrete_values("attention_precision", search.base), resources["gpu"],
                                 "this search's trials", "--gpus-per-trial", search.request.gpus_per_trial)


# ------------------------------------------------------------------------------------------------ entry points


def start_tune(request: TuneRequest, log=print, observers: tuple = (),
               segment_trials: int = SEGMENT_TRIALS, replacing: bool = False) -> TuneOutcome:
    """A new search named `request.name`; refuses a name that already has a run folder. `observers`: more Ray Tune
    callbacks, run after the search's own (search.segment_run.build_tuner), what a test or a benchmark watches the
    search with. They run where the Tuner runs, in each segment's process: they travel there pickled, and when the
    segment ends their state (`__dict__`) comes back into these objects, so the next segment, and the caller, see
    what they gathered. `segment_trials`: trials per segment (search.segments; smaller only in tests).
    `replacing`: the run folder is that of a search stopped before anything was kept (`resume_tune` starts it
    again); it is removed whole once the data is loaded and Ray answers, just before the new one is written."""
    _check_request(request)
    request = request.resolved()
    if request.address:
        ray_cluster.resolve(request.address)  # an unreachable address is refused before the data is loaded
    run_dir = run_folder(request.name, request.storage, request.results_root)
    if (run_dir / RUN_FILE).exists() and not replacing:
        raise SpamoInputError("--name", f"a run named '{request.name}' exists in {run_dir}: "
                                        f"continue it with --resume {request.name} or pick another --name")
    search = load_search(request, run_dir)
    ray_cluster.connect(request.address, log)  # before anything is written: a refused connection leaves nothing
    resources = ray_cluster.trial_resources(request.cpus_per_trial, request.gpus_per_trial, log)
    check_trial_precision(search, resources)
    if replacing:
        shutil.rmtree(run_dir)
    write_request(run_dir, request)
    plan = SegmentPlan(request.num_samples, max(1, min(segment_trials, request.num_samples)))
    write_plan(run_dir, plan)
    segments = len(plan.segments)
    log(f"[bold]spamo tune[/] {request.name}: {search.prepared.name}, {search.prepared.n_spots} spots, "
        f"{request.num_samples} trials of {resources['cpu']:g} CPU + {resources['gpu']:g} GPU, metric "
        f"{search.metric}, scheduler {request.scheduler}"
        + (f", in {segments} segments of {plan.size}" if segments > 1 else "") + f" -> {run_dir}")
    log(f"optimising {metric_reason(search.metric, request.metric)}")
    jobs = SegmentJobs(search, share_data(search, finished={}), resources, observers)
    return finish(search, plan, SegmentRun(plan.segments[0]), jobs, log)


def resume_tune(name: str, storage: str | None = None, address: str | None = None,
                results_root: str | Path = RESULTS_ROOT, log=print, observers: tuple = ()) -> TuneOutcome:
    """Continue an interrupted search (Ctrl+C or a killed driver): finished trials are kept, not rerun, and
    unfinished ones continue from their last checkpoint. The segment that was running is restored (Ray's own
    experiment state), then the segments after it run. A search stopped before Ray saved anything and before any
    trial finished (Ctrl+C while its first segment's process started) has nothing to keep: it starts again.
    `observers`: see `start_tune` (a restored segment runs with the callbacks its Tuner saved: the observers watch
    the segments after it)."""
    from ray import tune

    run_dir = run_folder(name, storage, results_root)
    if not (run_dir / RUN_FILE).is_file():
        raise SpamoInputError("--resume", f"no tune run named '{name}' in {run_dir.parent}")
    request = check_stored_request(run_dir)  # a hand-edited tune_run.toml is refused before the data loads
    if address is not None:
        request.address = address
    if request.address:
        ray_cluster.resolve(request.address)
    plan = read_plan(run_dir, request.num_samples)
    segment = plan.next_segment()
    experiment = experiment_path(request, segment.number if segment else len(plan.segments))
    restorable = tune.Tuner.can_restore(experiment)
    finished = finished_results(load_ledger(run_dir))
    if not restorable and (segment is None or segment.number == 1):
        if finished or segment is None:  # refused before the data loads
            raise SpamoInputError("--resume", f"no Ray experiment state at {experiment} to resume from"
                                  + (f" ({len(finished)} finished trial(s) are recorded in {run_dir / LEDGER_DIR})"
                                     if finished else ""))
        # stopped before Ray saved anything (Ctrl+C while the first segment's process started) and before any trial
        # finished: nothing is kept, so the search starts again under its name, with its request and segment size
        log(f"[bold]starting {name} again[/]: it stopped before Ray saved its state and before any trial finished")
        size = plan.size if (run_dir / SEGMENTS_FILE).is_file() else SEGMENT_TRIALS
        return start_tune(request, log, observers, segment_trials=size, replacing=True)
    search = load_search(request, run_dir)
    ray_cluster.connect(request.address, log)
    log(f"[bold]resuming[/] {name}: {len(finished)} trial(s) already finished are kept -> {run_dir}")
    resources = ray_cluster.trial_resources(request.cpus_per_trial, request.gpus_per_trial, log)
    check_trial_precision(search, resources)
    jobs = SegmentJobs(search, share_data(search, finished), resources, observers)
    if segment is None:  # every segment ended (the driver stopped while writing the outputs)
        return finish(search, plan, None, jobs, log)
    # not restorable: the driver stopped between two segments, before the next one saved anything; it starts anew,
    # from the scheduler state the last ended segment saved
    return finish(search, plan, SegmentRun(segment, restore=restorable), jobs, log)


@dataclass
class SegmentRun:
    """A segment to run, and whether its Ray experiment is restored (a stopped driver's) rather than started."""

    segment: Segment
    restore: bool = False


@dataclass
class SegmentJobs:
    """What every segment's job shares (search.segment_run.SegmentJob): the search, the trials' context, their
    resources, and the caller's observers."""

    search: Search
    context: TrialContext
    resources: dict
    observers: tuple = ()

    def job(self, segment: Segment, restore: bool, ray_address: str) -> SegmentJob:
        search = self.search
        return SegmentJob(search.request, search.run_dir, search.space, search.base, search.metric, search.data,
                          self.context, self.resources, segment, ray_address, restore, self.observers)


@dataclass
class SegmentEnd:
    """What the last segment run left: its trials as Ray knows them, None when Ray's controller failed."""

    segment: Segment
    known: list | None


def finish(search: Search, plan: SegmentPlan, start: SegmentRun | None, jobs: SegmentJobs, log) -> TuneOutcome:
    """Run the segments from `start` on (None: all ended), then write trials.parquet, best_config.toml and the
    pictures, and print the top trials."""
    started = time.time()
    last = None
    try:
        if start is not None:
            last = run_segments(search, plan, start, jobs, log)
    finally:
        ray_cluster.disconnect()
    log(f"search ran {time.time() - started:.0f} s")
    return write_outputs(search, plan, last, log)


def run_segments(search: Search, plan: SegmentPlan, start: SegmentRun, jobs: SegmentJobs, log) -> SegmentEnd:
    """Run segment after segment, each in a child process (search.segment_run), until one does not end (stopped,
    or Ray failed) or all have. The child records an ended segment in segments.json (read back into `plan`) before
    the next one starts."""
    address = ray_cluster.address_for_children(search.request.address)
    restore, several = start.restore, len(plan.segments) > 1
    for segment in [s for s in plan.segments if s.number >= start.segment.number]:
        if several:
            log(f"segment {segment.number}/{len(plan.segments)}: trials {segment.first}-{segment.last}")
        run = run_in_child(fit_segment, segment_call(jobs.job(segment, restore, address)))
        restore, reply = False, run.value
        plan.ended.update(read_plan(search.run_dir, search.request.num_samples).ended)
        if reply is None or reply.known is None:  # the process or Ray's controller failed
            why = reply.error if reply is not None else f"its process ended with exit status {run.returncode}"
            log(f"[red]the search stopped[/]: {why}")
            return SegmentEnd(segment, None)
        adopt_state(jobs.observers, reply.observers)
        if several:
            # its start: imports, joining Ray, the searcher; its end: leaving Ray, the interpreter's exit
            log(f"segment {segment.number} done (process {run.pid}: {reply.fit_started_at - run.started_at:.1f} s to "
                f"start, {run.ended_at - reply.fit_ended_at:.1f} s to end)")
        if not reply.ended:  # stopped (Ctrl+C) before all its trials ended
            return SegmentEnd(segment, reply.known)
    return SegmentEnd(segment, reply.known)


def adopt_state(observers: tuple, returned: tuple) -> None:
    """Give the caller's observer objects the state their copies gathered in a segment's process."""
    for mine, theirs in zip(observers, returned):
        mine.__dict__.update(vars(theirs))


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
    try:
        study = optuna.load_study(study_name=request.name, storage=f"sqlite:///{run_dir / STUDY_FILE}")
    except KeyError:  # no segment's process got as far as its searcher (it failed, or was stopped, while starting)
        study = None
    complete = plan.next_segment() is None and len(frame) == request.num_samples and not pending
    if complete:
        _close_orphans(study)
    if study is not None:
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
