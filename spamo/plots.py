"""Pictures of a run: the spatial domain map beside a UMAP of the fused embedding.

The UMAP's fixed cost is kept out of every run (it was about 17 s at 2,500 spots, whatever the data):
* neighbours: below 4,096 points umap-learn finds them with scikit-learn's `pairwise_distances` and a Python-level
  callable metric, one Python call per pair (3 million at 2,500 spots: most of those seconds). The exact 15 nearest
  neighbours come from scikit-learn's vectorised `NearestNeighbors` instead and go in as `precomputed_knn`: the same
  neighbours, the same layout algorithm;
* compilation: umap-learn's numba functions are not cached on disk, so each process compiles them again;
  `_cache_umap_compilation` switches numba's on-disk cache on for them (compiled once per machine and umap version).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

# Figures are built with matplotlib's object API (`Figure`, no pyplot), which renders to files without any GUI
# backend: nothing here changes the process-wide backend (`matplotlib.use`) of the user's session.

UMAP_MAX_SPOTS = 50_000  # above this the UMAP is drawn on a seeded subsample: it is a picture, not a result
UMAP_NEIGHBOURS = 15


def domain_colors(labels: np.ndarray) -> tuple[np.ndarray, dict]:
    """One stable colour per label (sorted label order), tab20 then hsv for more than 20 domains."""
    uniq = np.unique(labels)
    if len(uniq) <= 20:
        palette = colormaps["tab20"](np.linspace(0, 1, 20))[: len(uniq)] if len(uniq) > 10 else \
            colormaps["tab10"](np.arange(len(uniq)))
    else:
        palette = colormaps["hsv"](np.linspace(0, 1, len(uniq), endpoint=False))
    lookup = {u: palette[i] for i, u in enumerate(uniq)}
    return np.array([lookup[v] for v in labels]), lookup


def _cache_umap_compilation() -> None:
    """Switch numba's on-disk cache on for every jitted function of umap-learn and pynndescent not yet cached.

    numba keeps the compiled code next to the package (or in its user-wide cache where that is read-only) and
    checks the source's time stamp, so a new umap version recompiles. Best effort: an old numba without
    `enable_caching` just compiles as before.
    """
    try:
        from numba.core.registry import CPUDispatcher
    except ImportError:
        return
    dispatchers = {}
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(("umap", "pynndescent")):
            continue
        for obj in list(vars(module).values()):
            if isinstance(obj, CPUDispatcher) and type(getattr(obj, "_cache", None)).__name__ == "NullCache":
                dispatchers.setdefault(id(obj.py_func), {})[id(obj)] = obj
    for twins in dispatchers.values():
        # numba's cache index does not key on options: of two dispatchers of one Python function (umap has a
        # serial and a parallel layout epoch) only the serial one is cached, the one n_jobs=1 runs
        if len(twins) > 1:
            twins = {k: d for k, d in twins.items() if not d.targetoptions.get("parallel")}
            if len(twins) != 1:
                continue
        for obj in twins.values():
            try:
                obj.enable_caching()
            except Exception:  # noqa: BLE001 - a function numba cannot cache compiles as before
                pass


def nearest_neighbours(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours (euclidean) of every point, itself first: (indices, distances), both N x k."""
    from sklearn.neighbors import NearestNeighbors

    distances, indices = NearestNeighbors(n_neighbors=k).fit(points).kneighbors(points)
    return indices.astype(np.int32), distances.astype(np.float32)


def umap_coordinates(embedding: np.ndarray, seed: int = 0) -> np.ndarray:
    import umap

    _cache_umap_compilation()
    points = np.asarray(embedding, dtype=np.float32)
    k = min(UMAP_NEIGHBOURS, len(points) - 1)
    indices, distances = nearest_neighbours(points, k)
    reducer = umap.UMAP(n_neighbors=k, min_dist=0.3, random_state=seed, n_jobs=1,
                        precomputed_knn=(indices, distances, None))
    with warnings.catch_warnings():  # no search index is passed: `transform` is not needed for a picture
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]")
        return reducer.fit_transform(points)


def plot_domains(coords: np.ndarray, embedding: np.ndarray, labels: np.ndarray, path: str | Path,
                 title: str = "", seed: int = 0, with_umap: bool = True) -> Path:
    """Spatial map coloured by domain and, beside it, a UMAP of the embedding coloured the same way."""
    labels = np.asarray(labels)
    colors, lookup = domain_colors(labels)
    n = len(labels)
    size = max(0.3, min(30.0, 20000.0 / n))
    ncols = 2 if with_umap else 1
    fig = Figure(figsize=(6.2 * ncols, 5.6))
    axes = fig.subplots(1, ncols, squeeze=False)
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
    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=str(u)) for u, c in lookup.items()]
    fig.legend(handles=handles, loc="center right", title="domain", frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
