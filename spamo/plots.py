"""Pictures of a run: the spatial domain map beside a UMAP of the fused embedding."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

UMAP_MAX_SPOTS = 50_000  # above this the UMAP is drawn on a seeded subsample: it is a picture, not a result


def domain_colors(labels: np.ndarray) -> tuple[np.ndarray, dict]:
    """One stable colour per label (sorted label order), tab20 then hsv for more than 20 domains."""
    uniq = np.unique(labels)
    if len(uniq) <= 20:
        palette = plt.get_cmap("tab20")(np.linspace(0, 1, 20))[: len(uniq)] if len(uniq) > 10 else \
            plt.get_cmap("tab10")(np.arange(len(uniq)))
    else:
        palette = plt.get_cmap("hsv")(np.linspace(0, 1, len(uniq), endpoint=False))
    lookup = {u: palette[i] for i, u in enumerate(uniq)}
    return np.array([lookup[v] for v in labels]), lookup


def umap_coordinates(embedding: np.ndarray, seed: int = 0) -> np.ndarray:
    import umap

    reducer = umap.UMAP(n_neighbors=15, min_dist=0.3, random_state=seed, n_jobs=1)
    return reducer.fit_transform(np.asarray(embedding, dtype=np.float32))


def plot_domains(coords: np.ndarray, embedding: np.ndarray, labels: np.ndarray, path: str | Path,
                 title: str = "", seed: int = 0, with_umap: bool = True) -> Path:
    """Spatial map coloured by domain and, beside it, a UMAP of the embedding coloured the same way."""
    labels = np.asarray(labels)
    colors, lookup = domain_colors(labels)
    n = len(labels)
    size = max(0.3, min(30.0, 20000.0 / n))
    ncols = 2 if with_umap else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.2 * ncols, 5.6), squeeze=False)
    ax = axes[0, 0]
    ax.scatter(coords[:, 0], coords[:, 1], c=colors, s=size, linewidths=0, rasterized=True)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_title("spatial domains")
    ax.set_xticks([])
    ax.set_yticks([])
    if with_umap:
        rng = np.random.default_rng(seed)
        idx = np.arange(n) if n <= UMAP_MAX_SPOTS else np.sort(rng.choice(n, UMAP_MAX_SPOTS, replace=False))
        xy = umap_coordinates(embedding[idx], seed=seed)
        ax = axes[0, 1]
        ax.scatter(xy[:, 0], xy[:, 1], c=colors[idx], s=max(0.3, min(30.0, 20000.0 / len(idx))), linewidths=0,
                   rasterized=True)
        ax.set_title("UMAP of the fused embedding" + ("" if len(idx) == n else f" ({len(idx):,} spots)"))
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=c, label=str(u)) for u, c in lookup.items()]
    fig.legend(handles=handles, loc="center right", title="domain", frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
