"""The `spamo` command line (Typer).

Commands only parse options and call into the package; refusals of bad input (`SpamoInputError`) become one line on
stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import List, Optional

import typer

from spamo.errors import SpamoInputError

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


# ---------------------------------------------------------------------------------------------------------- data
# (commands are added below by the data layer)


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


@app.command("run")
@refusals_as_one_line
def run_command(
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Built-in dataset key: sim, hln or mb."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", "--file_fold",
                                            help="Your own folder of .h5ad files, or one .h5mu file."),
    data_type: Optional[str] = typer.Option(None, "--data-type", "--data_type",
                                            help="10x, SPOTS, Stereo-CITE-seq, Spatial-epigenome-transcriptome, "
                                                 "Simulation (with --data-dir)."),
    data_root: Path = typer.Option(Path("Data"), "--data-root", help="Where the dataset folders live."),
    modality_files: Optional[str] = typer.Option(None, "--modality-files",
                                                 help="Which file is which modality: RNA=a.h5ad,ADT=b.h5ad"),
    truth_file: Optional[Path] = typer.Option(None, "--truth-file", help="Ground-truth labels, one per line."),
    modalities: Optional[str] = typer.Option(None, "--modalities",
                                             help="Use only these modalities (comma-separated), e.g. RNA for an "
                                                  "ablation."),
    n_clusters: Optional[int] = typer.Option(None, "--n-clusters", "--n_clusters", help="Number of domains."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "--epochs_override",
                                         help="Training epochs (0 = the data type's default)."),
    knn_k: Optional[int] = typer.Option(None, "--knn-k", "--KNN_k", help="k of the feature kNN graph."),
    modality_weights: Optional[str] = typer.Option(None, "--modality-weights",
                                                   help="Reconstruction weight per modality, e.g. 5,5 or 1,3,3."),
    rna_weight: Optional[float] = typer.Option(None, "--rna-weight", "--RNA_weight", help="Weight of modality 1."),
    adt_weight: Optional[float] = typer.Option(None, "--adt-weight", "--ADT_weight",
                                               help="Weight of modality 2 (ADT or ATAC)."),
    dgi_weight: Optional[float] = typer.Option(None, "--dgi-weight", "--dgi_weight", help="DGI loss weight."),
    spatial_weight: Optional[float] = typer.Option(None, "--spatial-weight", "--spatial_weight",
                                                   help="Spatial smoothness weight."),
    latent_dim: Optional[int] = typer.Option(None, "--latent-dim", "--dim_output", help="Embedding size."),
    dropout: Optional[float] = typer.Option(None, "--dropout", help="Dropout rate."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", "--optimizer_type", help="adamw, adam or sgd."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", "--lr_scheduler_type",
                                            help="none, cosine or plateau."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default 0.01, 0.001 for 3 modalities)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="Weight decay (data-type default)."),
    cross_attn: Optional[bool] = typer.Option(None, "--cross-attn/--no-cross-attn",
                                              help="Cross-modal attention in the fusion (reference: use_cross_attn)."),
    feature_graph_weight: Optional[str] = typer.Option(None, "--feature-graph-weight",
                                                       help="connectivity (default) or distance (reference quirk)."),
    ema_update: Optional[str] = typer.Option(None, "--ema-update", help="after_step (default) or before_step."),
    ema_beta: Optional[float] = typer.Option(None, "--ema-beta", "--alpha", help="EMA factor of the graph target."),
    cluster_method: Optional[str] = typer.Option(None, "--cluster-method",
                                                 help="auto, mclust, gmm, kmeans, leiden, louvain, split-merge."),
    init_k: Optional[int] = typer.Option(None, "--init-k", "--init_k", help="Initial K for split-merge."),
    smooth: Optional[bool] = typer.Option(None, "--smooth/--no-smooth", help="Spatial majority-vote smoothing."),
    seed: Optional[int] = typer.Option(None, "--seed", "--random_seed", help="Random seed (default 2025)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="A TOML file of settings (flags win)."),
    out: Path = typer.Option(Path("results/run"), "--out", help="Output folder."),
    no_plot: bool = typer.Option(False, "--no-plot", help="Skip domains.png."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """Train SPAMO once: labels, metrics, embeddings (h5ad), a spatial/UMAP picture and run.toml."""
    from rich.console import Console

    from spamo import pipeline
    from spamo.config import build_config, parse_weights

    config = build_config(
        config_file, n_clusters=n_clusters, epochs=epochs, knn_k=knn_k, modality_weights=parse_weights(modality_weights),
        modality_weight_0=rna_weight, modality_weight_1=adt_weight, dgi_weight=dgi_weight,
        spatial_weight=spatial_weight, latent_dim=latent_dim, dropout=dropout, optimizer=optimizer,
        scheduler=scheduler, lr=lr, weight_decay=weight_decay, use_cross_attn=cross_attn,
        feature_graph_weight=feature_graph_weight, ema_update=ema_update, ema_beta=ema_beta,
        cluster_method=cluster_method, init_k=init_k, smooth=smooth, seed=seed, device=device)
    data = pipeline.load_data(dataset=dataset, data_dir=data_dir, data_type=data_type, data_root=data_root,
                              modality_files=parse_mapping(modality_files, "--modality-files"),
                              truth_file=truth_file, n_clusters=config.n_clusters)
    chosen = [m.strip() for m in modalities.split(",")] if modalities else None
    result = pipeline.run(data, config, modalities=chosen, progress=not quiet)
    pipeline.write_outputs(result, data, out, draw=not no_plot)
    console = Console()
    shown = {k: round(v, 4) for k, v in result.scores.items() if k in ("ari", "nmi", "ami", "avg", "asw")}
    console.print(f"[bold]{result.prepared.name}[/]: {result.prepared.n_spots} spots, "
                  f"{result.config.n_clusters} domains, {result.timings.get('total_s', 0):.1f} s -> {out}")
    console.print(shown)


# ---------------------------------------------------------------------------------------------------------- score
# (spamo score is added below by the clustering/metrics layer)


# ---------------------------------------------------------------------------------------------------------- tune
# (spamo tune is added below by the search layer)


# ---------------------------------------------------------------------------------------------------------- evaluate
# (spamo evaluate is added below by the evaluation layer)


# ---------------------------------------------------------------------------------------------------------- analyze
# (spamo analyze is added below by the downstream-analysis layer)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
