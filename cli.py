"""The `spamo` command line (Typer).

Commands only parse options and call into the package; refusals of bad input (`SpamoInputError`) become one line on
stderr and exit code 2, with no traceback. Each command imports the package modules it uses inside its own body, on
purpose: `spamo --help` and a refused setting then answer without loading torch, Ray or Optuna (about 5 s of
imports; benchmarks/results/cli_startup.md), and tests/test_imports.py checks it.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import typing
from pathlib import Path
from typing import List, Optional

import typer

from spamo.errors import SpamoInputError, quiet_readers

app = typer.Typer(help="SPAMO spatial multi-omics integration: train, tune, evaluate.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Simulate, download and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def refusals_as_one_line(func):
    """Turn a SpamoInputError into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except SpamoInputError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=exc.exit_code) from None

    return wrapper


def generated_data_removed_on_refusal(func):
    """A refused command writes nothing: the built-in simulation generated under the data root for `--dataset sim`
    on the way to a refusal (e.g. `--n-clusters 1`, known only once the data is loaded) is removed again."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from spamo.datasets import dataset_registry
        from spamo.io import removed_on_refusal

        dataset, data_root = kwargs.get("dataset"), kwargs.get("data_root")
        if dataset not in dataset_registry() or data_root is None or kwargs.get("resume"):
            return func(*args, **kwargs)
        with removed_on_refusal(dataset_registry()[dataset].path(data_root)):
            return func(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------------------------------------------------- data
def _rich_progress(transient: bool = False):
    """A rich progress bar on stderr (stdout stays clean for piping)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=transient)


@data_app.command("simulate")
@refusals_as_one_line
def data_simulate_command(
    out: Optional[Path] = typer.Option(None, "--out", help="Dataset folder to write (e.g. Data/Simulation; with "
                                                           "--preset default Data/NAME)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="A graded benchmark dataset of "
                                                                "configs/benchmarks/selection.toml."),
    n_spots: int = typer.Option(1296, "--n-spots", help="Number of spots (300 to 1,000,000)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same files."),
    layout: str = typer.Option("sim", "--layout", help="Folder layout: sim (RNA+ADT+ATAC), hln (RNA+ADT), mb "
                                                       "(RNA+ATAC)."),
    grid: str = typer.Option("square", "--grid", help="Spot grid: square or hex."),
    n_domains: int = typer.Option(5, "--n-domains", help="Domains including background (4 to 8)."),
    keep_existing: bool = typer.Option(False, "--keep-existing",
                                       help="Refuse an existing non-empty --out instead of replacing it whole."),
):
    """Write a simulated dataset (spatial domains, RNA/ADT/ATAC counts, ground truth) in a dataset layout."""
    from spamo import simulate
    from spamo.datasets import get_dataset_spec
    from spamo.io import check_output_folder

    if preset is not None:  # a named benchmark dataset: its table fixes size, seed, layout and difficulty
        chosen = simulate.get_preset(preset)
        out = out or Path("Data") / preset
        with _rich_progress() as bar:
            task = bar.add_task(f"simulating {preset}", total=simulate.total_steps(chosen.n_spots, chosen.layout))
            chosen.write(out, progress=lambda k: bar.advance(task, k))
        typer.echo(f"wrote {out}")
        return
    if out is None:
        raise SpamoInputError("--out", "say where to write the dataset folder (or give --preset NAME)")
    simulate.check_simulation_args(n_spots, n_domains, layout, grid)
    spec = get_dataset_spec(layout)
    check_output_folder(out, keep_existing=keep_existing, expect=[*spec.modality_files.values(), spec.truth_file])
    with _rich_progress() as bar:
        task = bar.add_task(f"simulating {n_spots} spots", total=simulate.total_steps(n_spots, layout))
        simulate.write_simulation(out, n_spots=n_spots, seed=seed, layout=layout, grid=grid, n_domains=n_domains,
                                  progress=lambda k: bar.advance(task, k))
    typer.echo(f"wrote {out}")


@data_app.command("download")
@refusals_as_one_line
def data_download_command(
    dataset: str = typer.Argument(..., help="Dataset key: hln, mb, sim, or all (the three, from one archive)."),
    url: Optional[str] = typer.Option(None, "--url", help="Archive URL: a mirror of Data.zip or one dataset's "
                                                          "archive (default: configs/downloads.toml)."),
    data_root: Path = typer.Option(Path("Data"), "--data-root", help="Folder holding the dataset folders."),
    sha256: Optional[str] = typer.Option(None, "--sha256", help="Expected sha256 of the archive (64 hex digits)."),
    allow_other_host: bool = typer.Option(False, "--allow-other-host",
                                          help="Follow a redirect to another host (refused by default)."),
):
    """Download a dataset archive once (resumable), verify its checksum and unpack the dataset(s) into place."""
    from spamo import download

    keys = download.all_keys() if dataset == "all" else [dataset]
    with _rich_progress(transient=True) as bar:
        task = bar.add_task(f"downloading {dataset}", total=None)
        folders = download.download_datasets(keys, data_root=data_root, url=url, sha256=sha256,
                                             allow_other_host=allow_other_host,
                                             progress=lambda done, total: bar.update(task, completed=done,
                                                                                     total=total))
    for key, folder in folders.items():
        typer.echo(f"{key}: {folder}")


@data_app.command("info")
@refusals_as_one_line
def data_info_command(
    folder: Optional[Path] = typer.Argument(None, help="A dataset folder (or a .h5mu file)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset key: hln, mb or sim."),
    data_root: Path = typer.Option(Path("Data"), "--data-root", help="Folder holding the dataset folders."),
    data_type: Optional[str] = typer.Option(None, "--data-type", help="Data type of a folder of your own."),
    modalities: Optional[str] = typer.Option(None, "--modalities", help="NAME=FILE,... for a folder of your own."),
    truth: Optional[Path] = typer.Option(None, "--truth", help="Ground-truth file (one label per line)."),
    n_clusters: Optional[int] = typer.Option(None, "--n-clusters", help="Number of clusters to check."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Read layers[NAME] instead of .X (the reference "
                                                              "reads .X)."),
):
    """Check a dataset and print its spots, modalities, features, coordinate ranges and label counts."""
    from rich.console import Console
    from rich.table import Table

    from spamo import datasets

    if (folder is None) == (dataset is None):
        raise SpamoInputError("--dataset", "give either a FOLDER or --dataset KEY")
    if dataset is not None:
        datasets.get_dataset_spec(dataset)
    with quiet_readers():
        data = datasets.load(dataset if dataset is not None else Path(folder), data_type=data_type,
                             modality_files=modalities, truth=truth, layer=layer, n_clusters=n_clusters,
                             data_root=data_root)
    summary = datasets.dataset_summary(data)
    table = Table(title=f"{summary['name']} ({summary['data_type']}): {summary['n_spots']} spots")
    for column in ("modality", "features", "counts layer", "file"):
        table.add_column(column)
    for name, info in summary["modalities"].items():
        table.add_row(name, str(info["features"]), "yes" if info["counts_layer"] else "no (.X)", info["file"])
    console = Console()
    console.print(table)
    lo, hi = summary["coords_min"], summary["coords_max"]
    console.print(f"coordinates: x {lo[0]:g} .. {hi[0]:g}, y {lo[1]:g} .. {hi[1]:g}")
    console.print(f"n_clusters: {summary['n_clusters']}")
    console.print(f"input matrix: {summary['matrix']}; truth and labels order: {summary['label_order']}")
    labels = summary["labels"]
    console.print("labels: " + (", ".join(f"{k}: {v}" for k, v in labels.items()) if labels else "none"))



# ---------------------------------------------------------------------------------------------------------- run
def parse_mapping(text: Optional[str], where: str) -> Optional[dict]:
    """'RNA=a.h5ad,ADT=b.h5ad' -> {'RNA': 'a.h5ad', 'ADT': 'b.h5ad'}."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise SpamoInputError(where, f"expected NAME=FILE pairs separated by commas, got {text!r}")
        out[key.strip()] = value.strip()
    return out


def with_setting_options(func):
    """Give a command one option per `SpamoConfig` setting, generated from the declarations in spamo.config.

    The command receives them as keyword arguments named after the settings (`None` = not given), the per-modality
    weights as `modality_weight_<i>`. A setting added to `SpamoConfig` appears here without an edit.
    """
    from spamo.config import PER_MODALITY_WEIGHTS, flag, kind, settings

    types = {"int": int, "float": float, "str": str, "bool": bool, "weights": str}
    extra = []
    for f in settings():
        names = [flag(f)]
        alias = f.metadata.get("alias")
        if kind(f) == "bool":
            names = [f"{names[0]}/--no-{names[0][2:]}"]
        elif alias and f"--{alias}" != names[0]:
            names.append(f"--{alias}")
        extra.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[types[kind(f)]],
                                       default=typer.Option(None, *names, help=f.metadata["help"])))
    for i, name, alias in PER_MODALITY_WEIGHTS:
        extra.append(inspect.Parameter(f"modality_weight_{i}", inspect.Parameter.KEYWORD_ONLY,
                                       annotation=Optional[float],
                                       default=typer.Option(None, name, f"--{alias}",
                                                            help=f"Reconstruction weight of modality {i + 1}.")))
    signature = inspect.signature(func)
    own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    hints = typing.get_type_hints(func)

    @functools.wraps(func)
    def wrapper(**kwargs):
        return func(**kwargs)

    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in own] + extra
    wrapper.__signature__ = signature.replace(parameters=params)
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


@app.command("run")
@refusals_as_one_line
@generated_data_removed_on_refusal
@with_setting_options
def run_command(
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Built-in dataset key: sim, hln or mb."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", "--file_fold",
                                            help="Your own folder of .h5ad files, or one .h5mu file."),
    data_root: Path = typer.Option(Path("Data"), "--data-root", help="Where the dataset folders live."),
    modality_files: Optional[str] = typer.Option(None, "--modality-files",
                                                 help="Which file is which modality: RNA=a.h5ad,ADT=b.h5ad"),
    truth_file: Optional[Path] = typer.Option(None, "--truth-file", help="Ground-truth labels, one per line."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Read layers[NAME] of every modality instead of .X "
                                                              "(the reference reads .X)."),
    modalities: Optional[str] = typer.Option(None, "--modalities",
                                             help="Use only these modalities (comma-separated), e.g. RNA for an "
                                                  "ablation."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="A TOML file of settings (flags win)."),
    reproduce: Optional[str] = typer.Option(None, "--reproduce",
                                            help="published: the settings the reference's run.sh really trained "
                                                 "this dataset with (configs/search/<key>.toml [published]; flags "
                                                 "given as well still win)."),
    out: Path = typer.Option(Path("results/run"), "--out", help="Output folder."),
    no_plot: bool = typer.Option(False, "--no-plot", help="Skip domains.png."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    keep_existing: bool = typer.Option(False, "--keep-existing",
                                       help="Refuse an existing non-empty --out instead of replacing it whole."),
    **settings,
):
    """Train SPAMO once: labels, metrics, embeddings (h5ad), a picture (spatial domains beside a 2-D layout of the embedding) and run.toml.

    Every setting of `SpamoConfig` is an option (generated from the declarations in spamo/config/; the README table lists them).
    """
    from rich.console import Console

    from spamo.config import build_config, parse_weights
    from spamo.io import RUN_FOLDER_FILES, check_output_folder

    settings["modality_weights"] = parse_weights(settings.get("modality_weights"))
    base = None
    if reproduce is not None:
        from spamo.reproduce import profile_key, published_config

        base = published_config(profile_key(dataset, data_dir, settings.get("data_type")), reproduce)
    config = build_config(config_file, base=base, **settings)
    check_output_folder(out, keep_existing=keep_existing, expect=RUN_FOLDER_FILES)
    # the settings and the output folder are checked before torch and scikit-learn are imported (seconds), so a
    # refused setting answers at once
    from spamo.api_run import fit, load
    from spamo.training import check_device

    check_device(config)  # a missing CUDA device or a precision it needs, before the data is read
    data = load(dataset=dataset, data_dir=data_dir, data_type=config.data_type, data_root=data_root,
                    modality_files=parse_mapping(modality_files, "--modality-files"), truth_file=truth_file,
                    layer=layer)  # n_clusters lives in the config; the loader only suggests one
    chosen = [m.strip() for m in modalities.split(",")] if modalities else None
    result = fit(data, config=config, modalities=chosen, progress=not quiet)
    result.write(out, draw=not no_plot)
    console = Console()
    shown = {k: round(v, 4) for k, v in result.scores.items() if k in ("ari", "nmi", "ami", "avg", "asw")}
    console.print(f"[bold]{result.prepared.name}[/]: {result.prepared.n_spots} spots, "
                  f"{result.config.n_clusters} domains, {result.timings.get('total_s', 0):.1f} s -> {out}")
    console.print(shown)


# ---------------------------------------------------------------------------------------------------------- score
@app.command("score")
@refusals_as_one_line
def score_command(
    truth: Path = typer.Option(..., "--truth", help="Ground-truth labels: one integer per line."),
    pred: Path = typer.Option(..., "--pred", help="Predicted labels (e.g. a run's labels.txt): one integer per line."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the metrics text here (atomically)."),
) -> None:
    """Score predicted domains against a ground truth; print the reference's metrics text (six decimals)."""
    from spamo.io import atomic_write_text
    from spamo.metrics import format_metrics_text, score_label_files
    from spamo.run_folder import check_output_file

    if out is not None:
        check_output_file(out, where="--out")
    text = format_metrics_text(score_label_files(truth, pred))
    if out is not None:
        atomic_write_text(out, text)
    typer.echo(text, nl=False)


# ---------------------------------------------------------------------------------------------------------- tune
@app.command("tune")
@refusals_as_one_line
@generated_data_removed_on_refusal
def tune_command(
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Built-in dataset key: sim, hln or mb."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Your own folder of .h5ad files (or .h5mu)."),
    data_type: Optional[str] = typer.Option(None, "--data-type", help="Data type of --data-dir."),
    data_root: Path = typer.Option(Path("Data"), "--data-root", help="Where the dataset folders live."),
    n_clusters: Optional[int] = typer.Option(None, "--n-clusters", help="Number of domains."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Read layers[NAME] of every modality instead of .X."),
    num_samples: int = typer.Option(20, "--num-samples", help="Number of trials."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Fix every trial's epoch budget (short runs)."),
    space: Optional[Path] = typer.Option(None, "--space", help="Search-space TOML (default: the dataset's)."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Objective (default ari with ground truth, else "
                                                                 "the label-free default of spamo.selection)."),
    scheduler: str = typer.Option("asha", "--scheduler", help="asha (stop poor trials early) or none."),
    cpus_per_trial: float = typer.Option(1.0, "--cpus-per-trial", help="CPUs each trial holds."),
    gpus_per_trial: float = typer.Option(0.25, "--gpus-per-trial",
                                         help="GPUs each trial holds; 0.25 packs 4 trials on a GPU (0 without GPUs)."),
    max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", help="At most this many trials at once."),
    report_every: int = typer.Option(10, "--report-every", help="Epochs between intermediate reports (for ASHA)."),
    seed: int = typer.Option(2025, "--seed", help="Seed of the sampler and of every trial."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name (folder results/tune/NAME)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Local folder or URI (s3://, gs://, ...) for "
                                                                   "Ray's experiment state (shared on a cluster)."),
    address: Optional[str] = typer.Option(None, "--address", help="Join a Ray cluster: auto or ray://host:port."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue the interrupted run NAME."),
    max_retries: int = typer.Option(3, "--max-retries", help="Retries of a trial lost to a system failure (worker "
                                                             "or node died); a trial's own error is not retried."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every",
                                                   help="Epochs between trial checkpoints (saved with the next "
                                                        "report; default about every 60 s, at most 50 epochs)."),
    reuse_workers: bool = typer.Option(True, "--reuse-workers/--fresh-workers",
                                       help="Run trials one after another in the same Ray worker processes."),
    keep_embeddings: bool = typer.Option(True, "--keep-embeddings/--no-keep-embeddings",
                                         help="Each finished trial keeps found.npz (domains, float16 embedding)."),
    rescore: Optional[str] = typer.Option(None, "--rescore", help="Recompute the label-free criteria of the "
                                                                  "finished run NAME (no training); --metric picks."),
):
    """Search SPAMO's settings with Ray Tune + Optuna: trials.parquet, best_config.toml, pictures."""
    import time as _time

    from rich.console import Console

    from search.options import check_named_run, check_tune_options

    if rescore:
        check_named_run("--rescore", {"name": rescore, "metric": metric, "storage": storage})
    elif resume:
        check_named_run("--resume", {"name": resume, "address": address, "storage": storage})
    else:
        default_name = f"{dataset or (data_dir.name if data_dir else 'tune')}-{_time.strftime('%Y%m%d-%H%M%S')}"
        options = dict(
            name=name or default_name, num_samples=num_samples, dataset=dataset,
            data_dir=str(data_dir) if data_dir else None, data_type=data_type, data_root=str(data_root),
            n_clusters=n_clusters, epochs=epochs, space=str(space) if space else None, metric=metric,
            scheduler=scheduler, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
            max_concurrent=max_concurrent, storage=storage, address=address, report_every=report_every, seed=seed,
            layer=layer, max_retries=max_retries, checkpoint_every=checkpoint_every, reuse_workers=reuse_workers,
            keep_embeddings=keep_embeddings)
        check_tune_options(options)
    # the options are checked before Ray, Optuna and torch are imported (seconds), so a refused one answers at once
    from search.tuning import TuneRequest, resume_tune, start_tune

    console = Console()
    log = console.print
    if rescore:  # a finished search, scored again from what its trials kept
        from search.rescore import rescore_run

        rescore_run(rescore, metric=metric, storage=storage, log=log)
        return
    try:
        if resume:
            outcome = resume_tune(resume, storage=storage, address=address, log=log)
        else:
            outcome = start_tune(TuneRequest(**options), log=log)
    except KeyboardInterrupt:
        typer.echo("interrupted before the search started; nothing to resume", err=True)
        raise typer.Exit(code=130) from None
    if not outcome.complete:
        raise typer.Exit(code=130)


# ---------------------------------------------------------------------------------------------------------- evaluate
@app.command("evaluate")
@refusals_as_one_line
def evaluate_command(
    best: bool = typer.Option(False, "--best", help="Re-evaluate the best configurations of tune runs."),
    runs: Optional[List[Path]] = typer.Option(None, "--runs", help="Tune run folder (repeatable; default: every "
                                                                   "run under --runs-root)."),
    runs_root: Path = typer.Option(Path("results/tune"), "--runs-root", help="Where tune runs live."),
    top_k: int = typer.Option(3, "--top-k", help="Configurations per dataset, best first."),
    seeds: int = typer.Option(3, "--seeds", help="Seeds per configuration (first-seed, first-seed + 1, ...)."),
    first_seed: int = typer.Option(2025, "--first-seed", help="The first seed."),
    out: Path = typer.Option(Path("results/evaluate"), "--out", help="Output folder (tables, pictures, cache)."),
    address: Optional[str] = typer.Option(None, "--address", help="Join a Ray cluster: auto or ray://host:port."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="CPUs of a local Ray (default: all)."),
    cpus_per_run: float = typer.Option(1.0, "--cpus-per-run", help="CPUs each seed run holds."),
    gpus_per_run: float = typer.Option(0.0, "--gpus-per-run", help="GPUs each seed run holds (0 = CPU)."),
    cross: bool = typer.Option(True, "--cross/--no-cross", help="Train each best configuration on every dataset."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Draw domains_<dataset>.png and seed_spread.png."),
    analyze: bool = typer.Option(False, "--analyze", help="Run `spamo analyze` on each dataset's best "
                                                          "configuration."),
    gene_sets: Optional[List[Path]] = typer.Option(None, "--gene-sets", help="GMT file for --analyze "
                                                                             "(repeatable)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """Best configurations across datasets and seeds, with split-and-merge: Arrow tables, pictures, a summary."""
    from rich.console import Console

    from search.options import check_evaluate_options

    if not best:
        raise SpamoInputError("--best", "say what to evaluate: spamo evaluate --best [--runs DIR ...]")
    options = dict(runs=[str(r) for r in runs] if runs else None, runs_root=str(runs_root), top_k=top_k, seeds=seeds,
                   first_seed=first_seed, out=str(out), address=address, num_cpus=num_cpus, cpus_per_run=cpus_per_run,
                   gpus_per_run=gpus_per_run, cross=cross, plots=plots, analyze=analyze,
                   gene_sets=[str(g) for g in gene_sets or []])
    check_evaluate_options(options)
    # the options are checked before Ray and torch are imported (seconds), so a refused one answers at once
    from evaluation.evaluate import EvaluateRequest, evaluate_best

    console = Console()
    outcome = evaluate_best(EvaluateRequest(**options), log=console.print, progress=not quiet)
    console.print(f"{outcome.trained} seed run(s) trained, {outcome.reused} reused -> {outcome.out_dir}")


# ---------------------------------------------------------------------------------------------------------- analyze
@app.command("analyze")
@refusals_as_one_line
def analyze_command(
    run_dir: Path = typer.Argument(..., help="Output folder of `spamo run` (holds embedding.h5ad)."),
    groupby: str = typer.Option("domain", "--groupby", help="Label key of embedding.h5ad obs (domain, truth)."),
    gene_sets: Optional[List[Path]] = typer.Option(None, "--gene-sets", help="GMT gene-set file (repeatable)."),
    method: str = typer.Option("wilcoxon", "--method", help="Marker test: wilcoxon or t-test."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default RUN_DIR/analysis)."),
    online_gene_sets: Optional[List[str]] = typer.Option(
        None, "--online-gene-sets", help="Enrichr library to fetch by name (needs network; repeatable)."),
    n_top: int = typer.Option(100, "--n-top", help="Markers kept per domain and modality (and the ORA foreground)."),
    permutations: int = typer.Option(100, "--permutations", help="Prerank GSEA permutations (0 = skip prerank)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (neighbour graph, PAGA layout, GSEA)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress indication."),
):
    """Downstream biology of the domains: markers per modality, PAGA, gene-set enrichment, pictures."""
    from contextlib import nullcontext

    from rich.console import Console

    from spamo.analysis import analyze
    from spamo.io import check_output_folder

    check_output_folder(out if out is not None else run_dir / "analysis",
                        expect=("markers.parquet", "enrichment.parquet", "paga.parquet"))
    console = Console(stderr=True)
    status = nullcontext() if quiet else console.status("analysis: starting")
    with status as shown:
        result = analyze(run_dir, groupby=groupby, gene_sets=gene_sets or [], out_dir=out, method=method,
                         n_top=n_top, online_gene_sets=online_gene_sets or [], seed=seed, permutations=permutations,
                         progress=(lambda message: shown.update(f"analysis: {message}")) if shown else None)
    for note in result.notes:
        console.print(f"note: {note}")
    Console().print(f"{result.markers['domain'].nunique()} domains, {len(result.markers)} marker rows, "
                    f"{len(result.enrichment)} enrichment rows, {len(result.paga)} PAGA edges -> {result.out_dir}")



# ---------------------------------------------------------------------------------------------------------- reproduce
@app.command("reproduce")
@refusals_as_one_line
def reproduce_command(
    which: str = typer.Argument("all", help="hln, mb, sim or all."),
    data_root: Path = typer.Option(Path("Data"), "--data-root", help="Folder holding HLN/, Mouse_Brain/, "
                                                                     "Simulation/."),
    out: Path = typer.Option(Path("results/reproduce"), "--out", help="One run folder per dataset goes here."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Depart from the profile's epochs (quick checks)."),
    cluster_method: Optional[str] = typer.Option(None, "--cluster-method",
                                                 help="Depart from the published mclust (e.g. gmm without R)."),
    no_plot: bool = typer.Option(False, "--no-plot", help="Skip domains.png."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """Replay the reference's run.sh (its published profiles) and print our scores beside the published ones."""
    from rich.console import Console

    from spamo import reproduce as rep

    console = Console(stderr=True)
    done = rep.reproduce(rep.selected_keys(which), data_root=data_root, out=out, epochs=epochs,
                         cluster_method=cluster_method, draw=not no_plot, progress=not quiet,
                         log=None if quiet else console.print)
    typer.echo(rep.comparison_text(done), nl=False)


# Rich wraps and truncates at the terminal width, or at 80 columns when stdout is not a terminal (a pipe, a log
# file): tables lose columns to ellipses and paths split over lines. Off a terminal, print as wide as it takes -
# except help text, whose boxes would stretch to that width (help is read, not parsed: 120 columns).
UNTERMINATED_WIDTH = 1000
HELP_WIDTH = 120


def main() -> None:
    if not sys.stdout.isatty() and "COLUMNS" not in os.environ:
        wants_help = len(sys.argv) <= 1 or "--help" in sys.argv[1:]
        os.environ["COLUMNS"] = str(HELP_WIDTH if wants_help else UNTERMINATED_WIDTH)
    app()


if __name__ == "__main__":
    main()
