"""Pictures of a run: the spatial domain map beside a 2-D layout of the fused embedding, coloured the same way.

The layout shows what the embedding separates: which domains lie apart in it and which touch. Two layouts draw it:

* ``graph`` (the default): spamo's own, in NumPy. It lays out the same fuzzy 15-nearest-neighbour graph with the
  same attraction and repulsion curves as UMAP (min_dist 0.3), but moves every point at once per epoch (200 epochs,
  five negative samples per edge) instead of edge by edge in compiled code. On a 2,500-spot run it costs about
  0.3 s, where umap-learn cost about 3.6 s (half of it `import umap`) plus some 20 s of numba compilation on the
  first run on a machine, and it keeps the picture's content: the domain of a spot's 10 nearest layout neighbours
  agreed with its own for 99.4 % of spots (UMAP 99.5 %), trustworthiness 0.92 (UMAP 0.93)
  (`benchmarks/results/run.md`).
* ``umap``: umap-learn's UMAP, for those who want that exact picture (`layout="umap"`). Its fixed cost is kept
  down: the exact neighbours come from scikit-learn's vectorised `NearestNeighbors` and go in as `precomputed_knn`
  (umap-learn's own search below 4,096 points calls a Python metric once per pair), and numba's on-disk cache is
  switched on for its functions (`_cache_umap_compilation`), so only the first run on a machine compiles them.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import sparse

from spamo.errors import SpamoInputError

# Figures are built with matplotlib's object API (`Figure`, no pyplot), which renders to files without any GUI
# backend: nothing here changes the process-wide backend (`matplotlib.use`) of the user's session.

LAYOUT_MAX_SPOTS = 50_000  # above this the layout is drawn on a seeded subsample: it is a picture, not a result
UMAP_NEIGHBOURS = 15
# UMAP's curve 1 / (1 + a d^(2b)) fitted (least squares, as umap-learn's find_ab_params) to its target for
# min_dist = 0.3, spread = 1; tests/test_plots.py refits it
CURVE_A, CURVE_B = 0.9921756195894755, 1.112253384404663
LAYOUT_EPOCHS = 200
NEGATIVE_SAMPLES = 5  # repulsive samples per attractive edge sample, as UMAP


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


def fuzzy_graph(indices: np.ndarray, distances: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """UMAP's fuzzy neighbour graph from exact k nearest neighbours (itself first): undirected edges (i < j) and
    their membership strengths.

    Spot i's edge to neighbour j weighs exp(-(d_ij - rho_i) / sigma_i), rho_i the distance to its nearest
    neighbour and sigma_i found by bisection so that its weights sum to log2(k); the two directions of an edge
    combine as a + b - ab (the probability that either holds).
    """
    dist, nbr = np.asarray(distances, dtype=np.float64)[:, 1:], np.asarray(indices)[:, 1:]
    n, k = nbr.shape
    excess = np.maximum(dist - dist[:, :1], 0.0)
    target = np.log2(k + 1)
    low, high, sigma = np.zeros(n), np.full(n, np.inf), np.ones(n)
    for _ in range(64):
        too_big = np.exp(-excess / sigma[:, None]).sum(axis=1) > target
        high = np.where(too_big, sigma, high)
        low = np.where(too_big, low, sigma)
        sigma = np.where(np.isinf(high), sigma * 2.0, (low + high) / 2.0)
    weights = np.exp(-excess / sigma[:, None])
    directed = sparse.csr_matrix((weights.ravel(), (np.repeat(np.arange(n), k), nbr.ravel())), shape=(n, n))
    both = sparse.triu(directed + directed.T - directed.multiply(directed.T), k=1).tocoo()
    return both.row, both.col, both.data.astype(np.float32)


def graph_layout(embedding: np.ndarray, seed: int = 0, epochs: int = LAYOUT_EPOCHS) -> np.ndarray:
    """The default 2-D layout (module docstring): UMAP's cost on UMAP's graph, every point moved at once per epoch.

    Starts from the first two principal components (scaled to 0..10); per epoch, with a step falling linearly from
    1 to 0: each edge pulls its two ends together with UMAP's attractive gradient weighted by its strength (both
    directions, as UMAP samples each), each point is pushed from five random points per unit of its degree
    (UMAP's repulsive gradient), every term clipped to +-4 as in UMAP, and each point moves by its sum divided by
    its degree. Deterministic for a seed.
    """
    points = np.asarray(embedding, dtype=np.float64)
    n = points.shape[0]
    centred = points - points.mean(axis=0)
    if n < 3:
        return np.zeros((n, 2), dtype=np.float32)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T if vt.shape[0] >= 2 else np.column_stack([centred @ vt[0], np.zeros(n)])
    span = np.ptp(xy, axis=0)
    xy = (10.0 * (xy - xy.min(axis=0)) / np.where(span > 0, span, 1.0)).astype(np.float32)
    rng = np.random.default_rng(seed)
    xy += rng.normal(scale=1e-4, size=xy.shape).astype(np.float32)  # no two points start on the same spot
    rows, cols, strength = fuzzy_graph(*nearest_neighbours(points.astype(np.float32), min(UMAP_NEIGHBOURS, n - 1)))
    degree = np.bincount(rows, strength, n) + np.bincount(cols, strength, n)
    heads = np.repeat(np.arange(n), NEGATIVE_SAMPLES)
    push = np.repeat(degree, NEGATIVE_SAMPLES).astype(np.float32)  # NEGATIVE_SAMPLES pushes per unit of degree
    pull = 2.0 * strength
    inverse_degree = (1.0 / np.maximum(degree, 1e-12)).astype(np.float32)
    a, b = np.float32(CURVE_A), np.float32(CURVE_B)
    x, y = xy[:, 0].copy(), xy[:, 1].copy()
    for epoch in range(epochs):
        dx, dy = x[rows] - x[cols], y[rows] - y[cols]
        d2 = dx * dx + dy * dy
        power = d2 ** b
        coef = (-2.0 * a * b) * power / ((d2 + np.float32(1e-12)) * (1.0 + a * power))  # d^(2b-2) as d^2b / d^2
        fx, fy = np.clip(coef * dx, -4.0, 4.0) * pull, np.clip(coef * dy, -4.0, 4.0) * pull
        tails = rng.integers(0, n, heads.size)
        ax, ay = x[heads] - x[tails], y[heads] - y[tails]  # a point drawn as its own tail is not pushed (0)
        d2 = ax * ax + ay * ay
        coef = (2.0 * b) / ((np.float32(0.001) + d2) * (1.0 + a * d2 ** b))
        sx = np.clip(coef * ax, -4.0, 4.0) * push / NEGATIVE_SAMPLES
        sy = np.clip(coef * ay, -4.0, 4.0) * push / NEGATIVE_SAMPLES
        rate = np.float32(1.0 - epoch / epochs) * inverse_degree
        x += rate * (np.bincount(rows, fx, n) - np.bincount(cols, fx, n) + np.bincount(heads, sx, n)).astype(np.float32)
        y += rate * (np.bincount(rows, fy, n) - np.bincount(cols, fy, n) + np.bincount(heads, sy, n)).astype(np.float32)
    return np.column_stack([x, y])


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


# the layouts of the picture's second panel: name -> (function of (embedding, seed), panel title); the first is the
# default (module docstring)
LAYOUT_REGISTRY = {
    "graph": (graph_layout, "layout of the fused embedding (15-NN graph)"),
    "umap": (umap_coordinates, "UMAP of the fused embedding"),
}
LAYOUTS = tuple(LAYOUT_REGISTRY)


def check_layout(layout: str) -> None:
    """Refuse a layout name that is not in `LAYOUT_REGISTRY`, in one line."""
    if layout not in LAYOUT_REGISTRY:
        raise SpamoInputError("layout", f"'{layout}' is not one of {', '.join(LAYOUTS)}")


@dataclass(frozen=True)
class Placement:
    """The picture's second panel without its colours: which spots it shows (`index`) and where (`xy`), from
    `place_embedding`. It needs the embedding only, not the labels, so `spamo.pipeline` computes it while R
    clusters, on the core R leaves idle."""

    layout: str
    seed: int
    index: np.ndarray
    xy: np.ndarray


def place_embedding(embedding: np.ndarray, layout: str = "graph", seed: int = 0) -> Placement:
    """The 2-D layout `layout` of the embedding (a seeded subsample above `LAYOUT_MAX_SPOTS` spots)."""
    check_layout(layout)
    n = len(embedding)
    rng = np.random.default_rng(seed)
    idx = np.arange(n) if n <= LAYOUT_MAX_SPOTS else np.sort(rng.choice(n, LAYOUT_MAX_SPOTS, replace=False))
    place, _ = LAYOUT_REGISTRY[layout]
    return Placement(layout, seed, idx, place(embedding[idx], seed=seed))


def plot_domains(coords: np.ndarray, embedding: np.ndarray, labels: np.ndarray, path: str | Path,
                 title: str = "", seed: int = 0, layout: str | None = "graph",
                 placement: Placement | None = None) -> Path:
    """Spatial map coloured by domain and, beside it (unless `layout` is None), a 2-D layout of the embedding
    coloured the same way: `layout` "graph" (spamo's own, the default) or "umap" (umap-learn); module docstring.
    `placement`: `place_embedding(embedding, layout, seed)` computed beforehand (used when its layout and seed are
    these)."""
    if layout is not None:
        check_layout(layout)
    labels = np.asarray(labels)
    colors, lookup = domain_colors(labels)
    n = len(labels)
    size = max(0.3, min(30.0, 20000.0 / n))
    ncols = 2 if layout else 1
    fig = Figure(figsize=(6.2 * ncols, 5.6))
    axes = fig.subplots(1, ncols, squeeze=False)
    ax = axes[0, 0]
    ax.scatter(coords[:, 0], coords[:, 1], c=colors, s=size, linewidths=0, rasterized=True)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_title("spatial domains")
    ax.set_xticks([])
    ax.set_yticks([])
    if layout:
        if placement is None or (placement.layout, placement.seed) != (layout, seed):
            placement = place_embedding(embedding, layout, seed)
        idx, xy = placement.index, placement.xy
        panel_title = LAYOUT_REGISTRY[layout][1]
        ax = axes[0, 1]
        ax.scatter(xy[:, 0], xy[:, 1], c=colors[idx], s=max(0.3, min(30.0, 20000.0 / len(idx))), linewidths=0,
                   rasterized=True)
        ax.set_title(panel_title + ("" if len(idx) == n else f" ({len(idx):,} spots)"))
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
