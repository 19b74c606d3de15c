"""What an evaluation shows: a rich summary on the terminal, domain maps of each dataset's best configuration and
the seed spread of every configuration."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from evaluation.build import best_choice
from spamo.io import atomic_path
from spamo.plots import domain_colors


def _pm(mean, sd) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.3f}" if sd is None or math.isnan(sd) else f"{mean:.3f} ± {sd:.3f}"


def summary_tables(frames: dict[str, pd.DataFrame]) -> list:
    """Rich tables: best configurations (mean ± sd over seeds), cross-dataset ranking, published numbers."""
    from rich.table import Table

    best = frames["best_configs"]
    notes = sorted({f"{m}: {sel}" for m, sel in zip(best["metric"], best["selection"])})
    table = Table(title="best configurations (mean ± sd over seeds; sm = split-and-merge at K)",
                  caption="; ".join(notes))
    for column in ("dataset", "rank", "metric: tune -> seeds", "ARI", "NMI", "sm ARI", "est. K", "seeds"):
        table.add_column(column, justify="left" if column in ("dataset", "metric: tune -> seeds") else "right")
    for _, row in best.sort_values(["dataset", "rank"]).iterrows():
        metric = row["metric"]
        table.add_row(row["dataset"], str(row["rank"]),
                      f"{metric}: {row['tune_value']:.3f} -> {_pm(row.get(f'{metric}_mean'), row.get(f'{metric}_sd'))}",
                      _pm(row["ari_mean"], row["ari_sd"]), _pm(row["nmi_mean"], row["nmi_sd"]),
                      _pm(row["sm_ari_mean"], row["sm_ari_sd"]), f"{row['sm_estimated_k_mean']:.1f}",
                      str(row["n_seeds"]))
    out = [table]
    cross = frames["cross_dataset"]
    if not cross.empty:
        metric = cross["rank_metric"].iloc[0]
        datasets = sorted(cross["dataset"].unique())
        grid = Table(title=f"cross-dataset: each dataset's best configuration everywhere ({metric}, mean ± sd)")
        for column in ("rank", "config from", *datasets, "mean"):
            grid.add_column(column, justify="left" if column == "config from" else "right")
        for source, rows in cross.groupby("config_from", sort=False):
            cells = {r["dataset"]: _pm(r[f"{metric}_mean"], r[f"{metric}_sd"]) for _, r in rows.iterrows()}
            first = rows.iloc[0]
            grid.add_row(str(first["overall_rank"]), source, *[cells.get(d, "-") for d in datasets],
                         _pm(first["overall_mean"], None))
        out.append(grid)
    published = frames["published"]
    if not published.empty:
        ref = Table(title="published (reference release) vs ours", caption="; ".join(
            f"{row['dataset']}: {row['data_note']}" for _, row in published.iterrows()))
        for column in ("dataset", "published ARI", "our ARI", "published NMI", "our NMI", "same data"):
            ref.add_column(column)
        for _, row in published.iterrows():
            ref.add_row(row["dataset"], f"{row['published_ari']:.3f}", _pm(row["ari_mean"], row["ari_sd"]),
                        f"{row['published_nmi']:.3f}", _pm(row["nmi_mean"], row["nmi_sd"]),
                        "yes" if row["same_data"] else "no")
        out.append(ref)
    return out


def print_summary(frames: dict[str, pd.DataFrame], log) -> None:
    for table in summary_tables(frames):
        log(table)


def _save(fig: Figure, path: Path) -> Path:
    """Render a `Figure` (matplotlib's object API: no pyplot, so the session's backend and open figures are left
    alone) into `path`, atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
        tmp.chmod(0o644)
    return path


def plot_best_domains(prepared, labels: np.ndarray, sm_labels: np.ndarray, title: str, path: Path) -> Path:
    """Ground truth (when there is one), the plain clustering and the split-and-merge one, side by side in space."""
    panels = ([("ground truth", prepared.truth)] if prepared.truth is not None else []) + [
        ("SPAMO domains", labels), ("split-and-merge at K", sm_labels)]
    fig = Figure(figsize=(4.2 * len(panels), 4.4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    size = max(0.3, min(40.0, 20000.0 / max(1, prepared.n_spots)))
    for ax, (name, values) in zip(axes[0], panels):
        colors, _ = domain_colors(np.asarray(values))
        ax.scatter(prepared.coords[:, 0], prepared.coords[:, 1], c=colors, s=size, linewidths=0, rasterized=True)
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_seed_spread(seed_runs: pd.DataFrame, best: pd.DataFrame, path: Path) -> Path:
    """Per dataset: every own configuration's scores over seeds (dots), mean ± sd (bar), plain and split-merge."""
    datasets = sorted(best["dataset"].unique())
    fig = Figure(figsize=(max(4.0, 2.2 + 1.3 * best["rank"].max()) * len(datasets), 3.8))
    axes = fig.subplots(1, len(datasets), squeeze=False)
    for ax, name in zip(axes[0], datasets):
        metric = best[best["dataset"] == name]["metric"].iloc[0]
        own = seed_runs[(seed_runs["dataset"] == name) & (seed_runs["config_from"] == name)]
        for offset, column, label in ((-0.12, metric, metric), (0.12, f"sm_{metric}", f"split-merge {metric}")):
            if column not in own or own[column].isna().all():
                continue
            for rank, runs in own.groupby("config_rank"):
                values = runs[column].dropna().to_numpy()
                x = rank + offset
                ax.scatter(np.full(values.size, x), values, s=14, alpha=0.7,
                           color="C0" if offset < 0 else "C1", label=label if rank == 1 else None)
                if values.size:
                    sd = values.std(ddof=1) if values.size > 1 else 0.0
                    ax.errorbar(x, values.mean(), yerr=sd, fmt="_", color="k", capsize=4)
        ranks = sorted(own["config_rank"].unique())
        ax.set_xticks(ranks)
        ax.set_xlim(0.5, max(ranks, default=1) + 0.5)
        ax.set_xlabel("configuration rank")
        ax.set_ylabel(metric)
        ax.set_title(f"{name}: spread over seeds", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def draw_pictures(frames: dict[str, pd.DataFrame], entries: dict, cache, out_dir: Path) -> list[Path]:
    """domains_<dataset>.png for each dataset's best configuration (first seed), and seed_spread.png."""

    best = frames["best_configs"]
    seed_runs = frames["seed_runs"]
    written = []
    for name, entry in entries.items():
        row = best_choice(best, name)
        runs = seed_runs[(seed_runs["dataset"] == name) & (seed_runs["config_from"] == name)
                         & (seed_runs["config_rank"] == row["rank"])].sort_values("seed")
        first = runs.iloc[0]
        arrays = cache.arrays(first["key"])
        metric = row["metric"]
        title = (f"{name}: configuration rank {row['rank']}, seed {first['seed']} "
                 f"({metric} {_pm(first.get(metric), None)}; over seeds "
                 f"{_pm(row.get(f'{metric}_mean'), row.get(f'{metric}_sd'))})")
        written.append(plot_best_domains(entry.prepared, arrays["labels"], arrays["split_merge_labels"], title,
                                         out_dir / f"domains_{name}.png"))
    written.append(plot_seed_spread(seed_runs, best, out_dir / "seed_spread.png"))
    return written
