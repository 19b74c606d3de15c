"""The analysis figures: marker dot plots, the top marker of each domain over the tissue, the PAGA graph.

Our own figures are built with matplotlib's object API (`Figure`, rendered by `savefig` without any GUI backend), so
drawing them neither switches the session's backend (a notebook's stays) nor touches figures the caller has open;
scanpy's dot plot makes its own pyplot figure, and only that figure is closed. Written as 256-colour palette PNGs.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Callable

import matplotlib
import numpy as np
import pandas as pd
import scipy.sparse as sp
from matplotlib.figure import Figure
from PIL import Image

from spamo.analysis.paga import paga_layout
from spamo.run_folder import OBSM_SPATIAL


def _group_colors(n: int) -> list:
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _point_size(n: int) -> float:
    return float(np.clip(20000.0 / max(n, 1), 0.3, 30.0))


def _save_png(save: Callable, path: Path, dpi: int) -> None:
    """Render through `save(buffer, dpi=, format=)`, then store as a 256-colour palette PNG (about 3x smaller)."""
    buffer = io.BytesIO()
    save(buffer, dpi=dpi, format="png")
    buffer.seek(0)
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                                dither=Image.Dither.NONE)
        palette.save(path, format="PNG", optimize=True)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def plot_marker_dots(adata, groupby: str, path: Path, n_genes: int, title: str) -> None:
    """Dot plot of the top markers of every domain (scanpy), saved as PNG."""
    import matplotlib.pyplot as plt  # scanpy draws the dot plot on a pyplot figure: close that one only
    import scanpy as sc

    dotplot = sc.pl.rank_genes_groups_dotplot(adata, groupby=groupby, n_genes=n_genes, show=False,
                                              return_fig=True, title=title, dendrogram=False)
    try:
        _save_png(lambda buffer, **kw: dotplot.savefig(buffer, bbox_inches="tight", **kw), path, dpi=90)
    finally:
        if getattr(dotplot, "fig", None) is not None:
            plt.close(dotplot.fig)


def plot_top_markers_spatial(coords: np.ndarray, labels: pd.Categorical,
                             values: dict[str, dict[str, tuple[str, np.ndarray]]], path: Path) -> None:
    """One column per domain: where the domain is, then its top marker's normalised value in each modality.

    Reading down a column shows which modality tells that domain apart (a modality blind to it shows a marker
    shared with another domain).
    """
    domains = list(labels.categories)
    modalities = list(values)
    nrows, ncols = 1 + len(modalities), len(domains)
    fig = Figure(figsize=(1.9 * ncols, 1.95 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    size = _point_size(len(coords)) * 0.35
    colors = _group_colors(len(domains))
    codes = np.asarray(labels.codes)
    for col, domain in enumerate(domains):
        ax = axes[0, col]
        inside = codes == col
        ax.scatter(coords[~inside, 0], coords[~inside, 1], s=size, color="0.85", rasterized=True, linewidths=0)
        ax.scatter(coords[inside, 0], coords[inside, 1], s=size, color=colors[col], rasterized=True, linewidths=0)
        ax.set_title(f"domain {domain} ({inside.sum()})", fontsize=8)
        for row, modality in enumerate(modalities, start=1):
            ax = axes[row, col]
            if domain not in values[modality]:
                ax.axis("off")
                continue
            feature, value = values[modality][domain]
            high = float(np.quantile(value, 0.99)) if value.size else 1.0
            ax.scatter(coords[:, 0], coords[:, 1], c=value, s=size, cmap="viridis", vmin=0.0 if value.min() >= 0
                       else None, vmax=high if high > 0 else None, rasterized=True, linewidths=0)
            ax.set_title(f"{modality}: {feature}", fontsize=7)
    for ax in axes.flat:
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.4)
    _save_png(fig.savefig, path, dpi=72)


def plot_paga(embedding, groupby: str, path: Path, seed: int) -> None:
    """PAGA graph of the domains: abstract layout, and drawn at the domains' spatial centroids over the tissue."""
    import scanpy as sc

    labels = embedding.obs[groupby].cat
    colors = _group_colors(len(labels.categories))
    embedding.uns[f"{groupby}_colors"] = [matplotlib.colors.to_hex(c) for c in colors]
    coords = np.asarray(embedding.obsm[OBSM_SPATIAL], dtype=float)
    codes = np.asarray(labels.codes)
    centroids = np.stack([coords[codes == i].mean(axis=0) for i in range(len(labels.categories))])
    fig = Figure(figsize=(9, 4.2))
    left, right = fig.subplots(1, 2)
    sc.pl.paga(embedding, ax=left, show=False, pos=paga_layout(embedding, seed), threshold=0.02, fontsize=8,
               title="PAGA of the domains (fused embedding)", add_pos=False, frameon=False)
    right.scatter(coords[:, 0], coords[:, 1], s=_point_size(len(coords)), c=[colors[c] for c in codes],
                  alpha=0.25, rasterized=True, linewidths=0)
    sc.pl.paga(embedding, ax=right, show=False, pos=centroids, threshold=0.02, fontsize=8,
               title="the same graph at the domains' spatial centroids", add_pos=False, frameon=False)
    right.set_aspect("equal")
    fig.tight_layout()
    _save_png(fig.savefig, path, dpi=90)


def draw_figures(folder: Path, tested, groupby: str, modality_data: dict, top_markers: pd.DataFrame,
                 n_dot_genes: int, seed: int) -> dict[str, str]:
    """Every figure of the analysis into `folder`; figure name -> file name."""
    figures = {}
    for name, adata in modality_data.items():
        file = f"markers_{_safe_name(name)}.png"
        plot_marker_dots(adata, groupby, folder / file, n_dot_genes, f"{name} markers per {groupby}")
        figures[f"markers_{name}"] = file
    values: dict[str, dict] = {}
    for name, adata in modality_data.items():
        firsts = top_markers[(top_markers["modality"] == name) & (top_markers["rank"] == 1)]
        values[name] = {}
        for domain, feature in zip(firsts["domain"], firsts["feature"]):
            column = adata[:, feature].X
            values[name][domain] = (feature,
                                    np.asarray(column.toarray() if sp.issparse(column) else column).ravel())
    plot_top_markers_spatial(np.asarray(tested.obsm[OBSM_SPATIAL], dtype=float), tested.obs[groupby].values,
                             values, folder / "top_markers_spatial.png")
    figures["top_markers_spatial"] = "top_markers_spatial.png"
    plot_paga(tested, groupby, folder / "paga.png", seed)
    figures["paga"] = "paga.png"
    return figures
