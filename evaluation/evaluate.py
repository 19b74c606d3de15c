"""`spamo evaluate --best`: the top-K configurations of tune runs, re-trained with several seeds on Ray.

1. Read the tune runs, pool them per dataset, take each dataset's top K distinct configurations by its run's metric.
2. Load and preprocess each dataset once (as its tune run did); put the prepared data into Ray's object store once.
3. Seed runs: every configuration x seed on its own dataset, and each dataset's best configuration on every other
   dataset (cross-dataset). Each is one Ray task (one CPU, one torch thread). Finished seed runs are kept in
   `<out>/seed_runs/`, so a re-run trains only what is missing.
4. Tables (evaluation.tables), pictures and a summary; with `analyze`, each dataset's best configuration is written
   as a run folder and `spamo.analysis.analyze_data` analyses it from the data in memory.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evaluation import report, selection
from evaluation.build import best_choice, build_tables
from evaluation.runs import (Candidate, DEFAULT_RUNS_ROOT, DatasetRuns, find_runs, group_by_dataset, read_run,
                             top_configs)
from evaluation.seed_runs import CACHE_DIR, SeedJob, SeedRunCache, config_json, seed_task
from evaluation.tables import write_tables
from evaluation.transfer import config_for
from search import ray_cluster
from search.backends import travelling_backends
from search.options import check_evaluate_options
from search.run_folder import load_data, load_prepared
from spamo import pipeline
from spamo.analysis import analyze_data
from spamo.config import SpamoConfig
from spamo.errors import SpamoInputError
from spamo.io import check_output_folder, replaced_outputs
from spamo.pipeline import RunResult, truth_sha256, write_outputs
from spamo.selection import DEFAULT_LABEL_FREE

DEFAULT_OUT = Path("results/evaluate")
FIRST_SEED = 2025
SYSTEM_RETRIES = 3
ERROR_CHARS = 300  # a failure is reported in one line; Ray's explanations can run to a page


@dataclass
class EvaluateRequest:
    """Everything `spamo evaluate --best` was asked for."""

    runs: list[str] | None = None
    runs_root: str = str(DEFAULT_RUNS_ROOT)
    top_k: int = 3
    seeds: int = 3
    first_seed: int = FIRST_SEED
    out: str = str(DEFAULT_OUT)
    address: str | None = None
    num_cpus: int | None = None  # a local cluster's CPUs (default: all)
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    cross: bool = True
    plots: bool = True
    analyze: bool = False
    gene_sets: list[str] = field(default_factory=list)

    @property
    def seed_list(self) -> list[int]:
        return [self.first_seed + i for i in range(self.seeds)]


@dataclass
class DatasetEntry:
    """One dataset under evaluation: its runs, chosen configurations, loaded and prepared data."""

    runs: DatasetRuns
    candidates: list[Candidate]
    data: object  # MultiOmicsData
    prepared: object  # PreparedData
    config: object  # the resolved SpamoConfig the tune run prepared the data with: the owner of its K

    @property
    def name(self) -> str:
        return self.runs.dataset


@dataclass
class EvaluationOutcome:
    out_dir: Path
    tables: dict  # name -> pandas DataFrame (as written)
    trained: int  # seed runs trained by this call
    reused: int  # seed runs found finished in the cache
    files: list[Path]


class EvaluationFailed(SpamoInputError):
    """A seed run failed (the runs that finished are kept in the cache; no table was written)."""

    exit_code = 1


def check_request(request: EvaluateRequest) -> None:
    """The options (`search.options`, which `spamo evaluate` also calls before importing this module), then
    what needs Ray: `--address auto` looked up and the cluster's token tried, and the clustering backends the user
    registered checked to travel to the workers, before any data is loaded."""
    check_evaluate_options(dataclasses.asdict(request))
    travelling_backends()
    if request.address:
        ray_cluster.resolve(request.address)


# ------------------------------------------------------------------------------------------------ data


def load_entry(group: DatasetRuns, top_k: int) -> DatasetEntry:
    """Choose the dataset's configurations, then load and preprocess its data as its tune run did."""

    candidates = top_configs(group, top_k)
    data = load_data(group.request)
    prepared, base = load_prepared(group.request, data)
    expected = group.runs[0].truth_sha256
    if expected and prepared.truth is not None and pipeline.truth_sha256(prepared.truth) != expected:
        raise SpamoInputError(group.runs[0].path, f"the data of '{group.dataset}' no longer has the ground truth "
                                                  "the tune run scored against")
    return DatasetEntry(group, candidates, data, prepared, base)


def truth_hash(prepared) -> str | None:
    return truth_sha256(prepared.truth) if prepared.truth is not None else None


def build_jobs(entries: dict[str, DatasetEntry], seeds: list[int], cross: bool) -> list[SeedJob]:
    """Every top-K configuration x seed on its own dataset; each best configuration x seed on every other one."""

    jobs = []
    for name, entry in entries.items():
        for candidate in entry.candidates:
            for seed in seeds:
                config = config_for(candidate.config, entry.prepared, seed, same_dataset=True,
                                    n_clusters=entry.config.n_clusters)
                jobs.append(SeedJob(name, name, candidate.rank, seed, config_json(config),
                                    truth_hash(entry.prepared)))
    if cross:
        for source_name, source in entries.items():
            best = source.candidates[0]
            for name, entry in entries.items():
                if name == source_name:
                    continue
                for seed in seeds:
                    config = config_for(best.config, entry.prepared, seed, same_dataset=False,
                                        n_clusters=entry.config.n_clusters)
                    jobs.append(SeedJob(name, source_name, best.rank, seed, config_json(config),
                                        truth_hash(entry.prepared)))
    return jobs


# ------------------------------------------------------------------------------------------------ Ray


def run_pending(pending: list[SeedJob], entries: dict[str, DatasetEntry], cache: SeedRunCache,
                request: EvaluateRequest, log, progress: bool = True) -> int:
    """Run the seed runs not in the cache as Ray tasks, storing each as it finishes; returns how many ran.

    A failing run does not stop the others: they finish and are kept, then the failure is raised (no tables).
    """
    import ray


    unique = {job.key: job for job in pending}
    if not unique:
        return 0
    started_here = ray_cluster.connect(request.address, log, num_cpus=request.num_cpus)
    try:
        gpus = ray_cluster.trial_resources(request.cpus_per_run, request.gpus_per_run, log=lambda *a: None)["gpu"]
        # a configuration tuned on GPUs may use a precision CPUs cannot run: refused before any run
        ray_cluster.check_share_runs({json.loads(job.config_json)["attention_precision"] for job in unique.values()},
                                     gpus, "these seed runs", "--gpus-per-run", request.gpus_per_run)
        # a worker lost to the node's memory monitor or a crash is retried; an exception raised by the run is not
        task = ray.remote(seed_task).options(num_cpus=request.cpus_per_run, num_gpus=gpus, max_retries=SYSTEM_RETRIES,
                                             retry_exceptions=False)
        refs = {name: ray.put(entries[name].prepared) for name in {job.dataset for job in unique.values()}}
        backends = ray.put(travelling_backends())  # the user's registered clustering backends, for every run
        futures = {task.remote(refs[job.dataset], job, backends): job for job in unique.values()}
        failures = _collect(futures, cache, log, progress)
    finally:
        if started_here:
            ray_cluster.disconnect()
    if failures:
        job, error = failures[0]
        raise EvaluationFailed(f"seed run {job.config_from} rank {job.config_rank} on {job.dataset}, seed {job.seed}",
                               f"failed: {error} ({len(failures)} of {len(unique)} seed runs failed; the "
                               f"{len(unique) - len(failures)} other(s) are kept in {cache.folder} and reused next "
                               "time; no table was written)")
    return len(unique)


def _collect(futures: dict, cache: SeedRunCache, log, progress: bool) -> list[tuple[SeedJob, str]]:
    import ray
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    failures = []
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), disable=not progress)
    with bar:
        task = bar.add_task("seed runs", total=len(futures))
        while futures:
            done, _ = ray.wait(list(futures), num_returns=1)
            job = futures.pop(done[0])
            try:
                record, arrays = ray.get(done[0])
            except Exception as exc:  # noqa: BLE001 - a failed task is reported, the others go on
                failures.append((job, _last_line(exc)))
                log(f"[red]failed[/]: {job.config_from} rank {job.config_rank} on {job.dataset}, seed {job.seed}: "
                    f"{_last_line(exc)}")
            else:
                cache.store(job.key, record, arrays)
            bar.advance(task)
    return failures


def _last_line(exc: BaseException) -> str:
    """The innermost exception's line (Ray wraps the task's exception in a long traceback)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        text = f"{type(cause).__name__}: {cause}".splitlines()[0]
    else:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS - 3] + "..."


# ------------------------------------------------------------------------------------------------ entry point


def evaluate_best(request: EvaluateRequest, log=print, progress: bool = True) -> EvaluationOutcome:
    """The whole evaluation; see the module docstring."""

    check_request(request)
    out_dir = check_output_folder(request.out, expect=(CACHE_DIR, "best_configs.parquet"))
    runs = [read_run(path) for path in find_runs(request.runs, request.runs_root)]
    groups = group_by_dataset(runs)
    entries = {group.dataset: load_entry(group, request.top_k) for group in groups}
    jobs = build_jobs(entries, request.seed_list, request.cross)
    # h6: the published default vs annotation-tuned vs label-free-tuned, over the same seeds (evaluation.selection)
    chosen = selection.build_jobs(entries, request.seed_list, DEFAULT_LABEL_FREE)
    selection_jobs = [job for group in chosen.values() for job in group]
    cache = SeedRunCache(out_dir)
    pending = [job for job in jobs if not cache.has(job.key)]
    reused = len({job.key for job in jobs}) - len({job.key for job in pending})
    log(f"[bold]spamo evaluate[/]: {len(entries)} dataset(s), top {request.top_k}, {request.seeds} seed(s): "
        f"{len({j.key for j in jobs})} seed runs, {reused} already finished -> {out_dir}")
    trained = run_pending(pending, entries, cache, request, log, progress)
    # second phase: the selection table's configurations not already trained above, over the same seeds
    known = {job.key for job in jobs}
    extra = [job for job in selection_jobs if job.key not in known]
    extra_pending = [job for job in extra if not cache.has(job.key)]
    trained += run_pending(extra_pending, entries, cache, request, log, progress)
    log(f"selection table: {len({j.key for j in extra})} extra seed run(s) for the published default and the "
        f"label-free choice ({len({j.key for j in extra}) - len({j.key for j in extra_pending})} already finished)")
    records = {job.key: cache.load(job.key) for job in jobs}
    tables = build_tables(entries, jobs, records, request.seed_list)
    frames = {name: table.to_pandas() for name, table in tables.items()}
    picked = selection.selection_table(entries, chosen, {job.key: cache.load(job.key) for job in selection_jobs},
                                       DEFAULT_LABEL_FREE)
    frames["selection"] = picked
    for row in picked.itertuples():
        mark = " (has seen the labels)" if row.selected_against_annotation else ""
        log(f"selection {row.dataset}: {row.choice}{mark}: ARI {row.ari_mean:.3f} +- {row.ari_sd:.3f} "
            f"over {row.n_seeds} seed(s)")
    # tables, pictures and best runs replace those of an earlier evaluation whole; the seed-run cache is kept
    with replaced_outputs(out_dir, keep=(CACHE_DIR,)) as new:
        files = write_tables(tables, new)
        files += selection.write_selection(picked, new)
        if request.plots and not picked.empty:
            files += selection.draw_selection(picked, new)
        if request.plots:
            files += report.draw_pictures(frames, entries, cache, new)
        if request.analyze:
            files += analyze_best(frames["best_configs"], entries, cache, request, new, log)
    files = [out_dir / Path(f).relative_to(new) for f in files]
    report.print_summary(frames, log)
    return EvaluationOutcome(out_dir, frames, trained, reused, files)


def best_run_result(entry: DatasetEntry, row, seed: int, cache: SeedRunCache):
    """The cached seed run of a best configuration as a `RunResult` (what `write_outputs` takes)."""

    config = SpamoConfig.from_dict(json.loads(row["config_json"])).replace(seed=int(seed))
    config = config.resolve(entry.prepared.n_modalities, entry.prepared.n_spots)
    job = SeedJob(entry.name, entry.name, int(row["rank"]), int(seed), config_json(config), truth_hash(entry.prepared))
    record, arrays = cache.load(job.key), cache.arrays(job.key)
    per_modality = [arrays[f"modality_{i}"] for i in range(entry.prepared.n_modalities) if f"modality_{i}" in arrays]
    scores = {k: (np.nan if v is None else v) for k, v in record["scores"].items()}
    return RunResult(prepared=entry.prepared, config=config, fused=arrays["fused"], per_modality=per_modality,
                     labels=arrays["labels"], scores=scores, history=[], timings=record["timings"],
                     device=record["device"])


def analyze_best(best_configs, entries: dict[str, DatasetEntry], cache: SeedRunCache, request: EvaluateRequest,
                 out_dir: Path, log) -> list[Path]:
    """Write each dataset's best configuration (first seed) as a `spamo run` folder and analyse its domains."""

    written = []
    for name, entry in entries.items():
        row = best_choice(best_configs, name)
        result = best_run_result(entry, row, request.first_seed, cache)
        run_dir = write_outputs(result, entry.data, out_dir / "best_runs" / name, draw=False)
        prepared = result.prepared
        outcome = analyze_data(entry.data, result.labels, np.asarray(result.fused, dtype=np.float32),
                               spot_names=prepared.spot_names, coords=prepared.coords,
                               modalities=prepared.modality_names, gene_sets=request.gene_sets,
                               seed=request.first_seed, out_dir=run_dir / "analysis")
        log(f"analysis of {name} (rank {int(row['rank'])}, seed {request.first_seed}) -> {outcome.out_dir}")
        written.append(Path(outcome.out_dir))
    return written
