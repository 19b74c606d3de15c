"""`spamo tune`: the driver of a search. Ray Tune runs the trials, Optuna (multivariate TPE, seeded) samples them.

The driver loads and preprocesses the dataset once and hands it to every trial through Ray's object store; it
starts (or joins) a Ray cluster, runs the search, and writes the run folder. A run is described by `tune_run.toml`
in its folder, which is all `spamo tune --resume NAME` needs to continue it.
"""

from __future__ import annotations

import dataclasses
import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from spamo.errors import SpamoInputError

RESULTS_ROOT = Path("results/tune")
RUN_FILE = "tune_run.toml"
STUDY_FILE = "optuna.db"
# Ray's experiment snapshot period (seconds) unless the user set TUNE_GLOBAL_CHECKPOINT_S.
SNAPSHOT_SECONDS = "2"


@dataclass
class TuneRequest:
    """Everything `spamo tune` was asked for (saved in tune_run.toml, so a resume repeats it exactly)."""

    name: str
    num_samples: int
    dataset: str | None = None
    data_dir: str | None = None
    data_type: str | None = None
    data_root: str = "Data"
    n_clusters: int | None = None
    epochs: int | None = None
    space: str | None = None
    metric: str | None = None
    scheduler: str = "asha"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.25
    max_concurrent: int | None = None
    storage: str | None = None
    address: str | None = None
    report_every: int = 10
    seed: int = 2025
    results_root: str = str(RESULTS_ROOT)
    layer: str | None = None  # read layers[layer] instead of .X (spamo.datasets.load)
    keep_embeddings: bool = True  # each finished trial keeps found.npz (domains, float16 fused embedding) (h6)

    def to_toml(self) -> dict:
        return {"tune": {k: v for k, v in dataclasses.asdict(self).items() if v is not None}}


@dataclass
class TuneOutcome:
    run_dir: Path
    complete: bool
    n_trials: int
    best: dict | None
    metric: str


# ------------------------------------------------------------------------------------------------ places


def is_uri(storage: str | None) -> bool:
    return bool(storage) and "://" in str(storage)


def run_folder(name: str, storage: str | None, results_root: str | Path = RESULTS_ROOT) -> Path:
    """Local storage: the run folder is STORAGE/NAME (Ray's experiment folder too). URI storage: Ray writes there,
    the run's own files stay in results/tune/NAME on the driver."""
    if storage and not is_uri(storage):
        return Path(storage).resolve() / name
    return Path(results_root).resolve() / name


def ray_storage_path(storage: str | None, results_root: str | Path) -> str:
    if is_uri(storage):
        return str(storage)
    return str(Path(storage or results_root).resolve())


def _check_request(request: TuneRequest) -> None:
    if request.num_samples < 1:
        raise SpamoInputError("--num-samples", f"must be at least 1, got {request.num_samples}")
    if request.epochs is not None and request.epochs < 1:
        raise SpamoInputError("--epochs", f"must be at least 1, got {request.epochs}")
    if request.scheduler not in ("asha", "none"):
        raise SpamoInputError("--scheduler", f"'{request.scheduler}' is not one of asha, none")
    if request.cpus_per_trial <= 0:
        raise SpamoInputError("--cpus-per-trial", f"must be positive, got {request.cpus_per_trial}")
    if request.gpus_per_trial < 0:
        raise SpamoInputError("--gpus-per-trial", f"must be >= 0, got {request.gpus_per_trial}")
    if request.max_concurrent is not None and request.max_concurrent < 1:
        raise SpamoInputError("--max-concurrent", f"must be at least 1, got {request.max_concurrent}")
    if request.report_every < 1:
        raise SpamoInputError("--report-every", f"must be at least 1, got {request.report_every}")
    if not request.name or any(c in request.name for c in "/\\") or request.name.startswith("."):
        raise SpamoInputError("--name", f"'{request.name}' is not a usable folder name")


def choose_metric(metric: str | None, has_truth: bool) -> str:
    """`ari` when the data has a ground truth, else the measured label-free default
    (`spamo.selection.DEFAULT_LABEL_FREE`); a given metric is checked."""
    from search.results import METRICS, TRUTH_SCORES
    from spamo.selection import DEFAULT_LABEL_FREE

    if metric is None:
        return "ari" if has_truth else DEFAULT_LABEL_FREE
    if metric not in METRICS:
        raise SpamoInputError("--metric", f"'{metric}' is not one of {', '.join(METRICS)}")
    if metric in TRUTH_SCORES and not has_truth:
        raise SpamoInputError("--metric", f"'{metric}' needs a ground truth, which this data has not")
    return metric


def metric_reason(metric: str, given: str | None) -> str:
    """One line: which criterion the search optimises and why (printed by `spamo tune`, kept in best_config)."""
    from search.results import TRUTH_SCORES
    from spamo.selection import DEFAULT_REASON

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


def load_search(request: TuneRequest, run_dir: Path) -> Search:
    """Load and preprocess the data once, resolve the base config, read the search space."""
    from search.space import load_space, space_path
    from spamo import pipeline
    from spamo.config import SpamoConfig

    space = load_space(space_path(request.dataset, request.space))
    data = pipeline.load_data(dataset=request.dataset, data_dir=request.data_dir, data_type=request.data_type,
                              data_root=request.data_root, n_clusters=request.n_clusters, layer=request.layer)
    base = SpamoConfig(seed=request.seed, n_clusters=request.n_clusters, epochs=request.epochs)
    prepared, base = pipeline.prepare(data, base)
    metric = choose_metric(request.metric, prepared.truth is not None)
    space = space.for_data(prepared.n_modalities, request.epochs)
    return Search(request, run_dir, prepared, base, space, metric)


def connect_ray(address: str | None, log) -> None:
    """Join a cluster at `address` (auto, host:port or ray://host:port) or start a local one."""
    import ray

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", SNAPSHOT_SECONDS)
    if ray.is_initialized():
        return
    if address is None:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        return
    reachable(address)
    if not token_available():
        log("[yellow]note[/]: no Ray token in this shell (RAY_AUTH_MODE=token with RAY_AUTH_TOKEN, "
            "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); a cluster with token authentication (as spamo's cluster "
            "files start it) will refuse the connection. See the README, 'Cluster runs'.")
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as exc:  # noqa: BLE001 - any connection problem is one line for the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpamoInputError("--address", f"cannot join the Ray cluster at {address!r}: {first}") from None


def reachable(address: str, timeout_s: float = 5.0) -> None:
    """Refuse at once an address nothing listens on (Ray itself retries for minutes before giving up)."""
    import socket

    if address == "auto":
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise SpamoInputError("--address", f"expected auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise SpamoInputError("--address", f"nothing answers at {host}:{port} ({exc.strerror or exc})") from None


def token_available() -> bool:
    """Whether this driver would present a Ray token (the token itself is never read here)."""
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    if mode == "disabled":
        return False
    has_token = bool(os.environ.get("RAY_AUTH_TOKEN")) or bool(os.environ.get("RAY_AUTH_TOKEN_PATH")) \
        or (Path.home() / ".ray" / "auth_token").is_file()
    return has_token and mode in ("token", "")


def trial_resources(request: TuneRequest, log) -> dict:
    """CPUs and GPUs per trial; the GPU share is 0 on a cluster without GPUs."""
    import ray

    gpus_in_cluster = ray.cluster_resources().get("GPU", 0)
    gpu = request.gpus_per_trial if gpus_in_cluster > 0 else 0.0
    if request.gpus_per_trial > 0 and gpus_in_cluster == 0:
        log("no GPU in the cluster: trials run on CPU (GPU share 0)")
    return {"cpu": request.cpus_per_trial, "gpu": gpu}


def build_trainable(search: Search, finished: dict):
    from ray import tune

    from search.graph_cache import start_cache
    from search.trainable import TrialContext, run_trial

    cache_name = f"spamo-graphs-{search.request.name}"
    search.graph_cache = start_cache(cache_name)
    context = TrialContext(base=search.base, fixed=search.space.fixed, report_every=search.request.report_every,
                           run_dir=str(search.run_dir), keep_embeddings=search.request.keep_embeddings,
                           cache_name=cache_name, cpus_per_trial=search.request.cpus_per_trial, finished=finished)
    return tune.with_parameters(run_trial, prepared=search.prepared, context=context)


def study_storage(run_dir: Path):
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{run_dir / STUDY_FILE}")


def build_tuner(search: Search, trainable, resources: dict):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from search.ledger import TrialLedger, TrialLog
    from search.searcher import ResumableOptunaSearch
    from search.results import metric_mode
    from search.trainable import trial_dirname

    request, mode = search.request, metric_mode(search.metric)
    sampler = optuna.samplers.TPESampler(seed=request.seed, multivariate=True)
    searcher = ResumableOptunaSearch(space=search.space.distributions, metric=search.metric, mode=mode,
                            points_to_evaluate=search.space.first_points(search.base), sampler=sampler,
                            study_name=request.name, storage=study_storage(search.run_dir))
    epochs = search.space.max_epochs(search.base.epochs)
    if request.scheduler == "asha":
        # ASHA stops every trial that reaches max_t: one past the last epoch lets the final report through
        scheduler = ASHAScheduler(time_attr="epoch", metric=search.metric, mode=mode, max_t=epochs + 1,
                                  grace_period=min(epochs, max(request.report_every, epochs // 8)), reduction_factor=3)
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        tune.with_resources(trainable, resources),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=request.num_samples,
                                    max_concurrent_trials=request.max_concurrent, trial_dirname_creator=trial_dirname,
                                    trial_name_creator=trial_dirname),
        run_config=tune.RunConfig(name=request.name, storage_path=ray_storage_path(request.storage,
                                                                                   request.results_root),
                                  failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                                  callbacks=[TrialLedger(search.run_dir), TrialLog(search.metric, request.num_samples)],
                                  verbose=0),
    )


# ------------------------------------------------------------------------------------------------ entry points


def start_tune(request: TuneRequest, log=print) -> TuneOutcome:
    """A new search named `request.name`; refuses a name that already has a run folder."""
    from spamo.io import atomic_write_text, dump_toml

    _check_request(request)
    if request.address:
        reachable(request.address)
    run_dir = run_folder(request.name, request.storage, request.results_root)
    if (run_dir / RUN_FILE).exists():
        raise SpamoInputError("--name", f"a run named '{request.name}' exists in {run_dir}: "
                                        f"continue it with --resume {request.name} or pick another --name")
    search = load_search(request, run_dir)
    connect_ray(request.address, log)  # before anything is written: a refused connection leaves nothing behind
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / RUN_FILE, dump_toml(request.to_toml()))
    resources = trial_resources(request, log)
    log(f"[bold]spamo tune[/] {request.name}: {search.prepared.name}, {search.prepared.n_spots} spots, "
        f"{request.num_samples} trials of {resources['cpu']:g} CPU + {resources['gpu']:g} GPU, metric "
        f"{search.metric}, scheduler {request.scheduler} -> {run_dir}")
    log(f"optimising {metric_reason(search.metric, request.metric)}")
    tuner = build_tuner(search, build_trainable(search, finished={}), resources)
    return finish(search, tuner, log)


def resume_tune(name: str, storage: str | None = None, address: str | None = None,
                results_root: str | Path = RESULTS_ROOT, log=print) -> TuneOutcome:
    """Continue an interrupted search (Ctrl+C or a killed driver): finished trials are kept, not rerun."""
    from ray import tune

    from search.ledger import finished_results, load_ledger

    run_dir = run_folder(name, storage, results_root)
    if not (run_dir / RUN_FILE).is_file():
        raise SpamoInputError("--resume", f"no tune run named '{name}' in {run_dir.parent}")
    with open(run_dir / RUN_FILE, "rb") as fh:
        request = TuneRequest(**tomllib.load(fh)["tune"])
    if address is not None:
        request.address = address
    search = load_search(request, run_dir)
    connect_ray(request.address, log)
    experiment = f"{ray_storage_path(request.storage, request.results_root).rstrip('/')}/{request.name}"
    if not tune.Tuner.can_restore(experiment):
        raise SpamoInputError("--resume", f"no Ray experiment state at {experiment} to resume from")
    finished = finished_results(load_ledger(run_dir))
    log(f"[bold]resuming[/] {name}: {len(finished)} trial(s) already finished are kept -> {run_dir}")
    trainable = tune.with_resources(build_trainable(search, finished), trial_resources(request, log))
    tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=False,
                               restart_errored=False)
    return finish(search, tuner, log)


def finish(search: Search, tuner, log) -> TuneOutcome:
    """Run the search, then write trials.parquet, best_config.toml and the pictures, and print the top trials."""
    import ray

    started = time.time()
    try:
        grid = tuner.fit()
    except Exception as exc:  # noqa: BLE001 - Ray's controller itself failed (e.g. workers killed for memory)
        grid = None
        from search.ledger import exception_summary

        log(f"[red]the search stopped[/]: {exception_summary(str(exc)) or type(exc).__name__}")
    finally:
        if ray.is_initialized():
            ray.shutdown()
    log(f"search ran {time.time() - started:.0f} s")
    return write_outputs(search, grid, log)


def _ray_trials(grid) -> list[tuple[str, int | None, dict]]:
    """(trial id, number, config) of every trial Ray knows, read from its folder name ("trial_<number>_<id>")."""
    out = []
    for result in grid:
        parts = Path(str(result.path)).name.split("_")
        number = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
        out.append((parts[-1], number, dict(result.config or {})))
    return out


def write_outputs(search: Search, grid, log) -> TuneOutcome:
    import optuna
    from rich.console import Console

    from search.ledger import load_ledger
    from search.results import (best_row, plot_history, plot_importances, selection_note, top_table,
                                trials_frame, write_best_config, write_parquet)
    from spamo.pipeline import package_versions, truth_sha256

    run_dir, request, metric = search.run_dir, search.request, search.metric
    known = _ray_trials(grid) if grid is not None else []
    records = load_ledger(run_dir)
    if grid is not None:  # trials recorded but unknown to Ray's snapshot were lost with it: leave them out
        records = {tid: rec for tid, rec in records.items() if tid in {k[0] for k in known}}
    pending = [{"trial_id": tid, "number": number, "status": "unfinished", "params": config, "result": {}}
               for tid, number, config in known if tid not in records]
    truth = search.prepared.truth
    meta = {**search.space.fixed, "dataset": search.prepared.name, "data_type": search.prepared.data_type, "metric": metric,
            "ground_truth_sha256": truth_sha256(truth) if truth is not None else None,
            **{f"version_{k}": v for k, v in package_versions().items()}}
    frame = trials_frame(records, pending, meta)
    write_parquet(frame, run_dir / "trials.parquet")
    best = best_row(frame, metric)
    if best is not None:
        write_best_config(best, metric, run_dir / "best_config.toml", why=metric_reason(metric, request.metric))
    plot_history(frame, metric, run_dir / "optimization_history.png")
    study = optuna.load_study(study_name=request.name, storage=f"sqlite:///{run_dir / STUDY_FILE}")
    complete = grid is not None and len(frame) == request.num_samples and not pending
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
