"""The tissue of one simulation (docs/data.md section 3): spot positions on a square or hexagonal grid and the
spatial domains over them (background, smooth blobs, wavy bands), shared by every modality.

The ground truth is the method's own rule on the spatial factors (`truth_from_spfac`), so files written here and the
authors' Simulation files read back the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from spamo.simulate.difficulty import DEFAULT_DIFFICULTY, Difficulty


@dataclass
class Tissue:
    """Spot positions and their domains: shared by every modality of one simulation."""

    coords: np.ndarray  # N x 2 float64 in [-2, 2]
    labels: np.ndarray  # N int8, 0 = background
    spfac: np.ndarray  # N x (n_domains - 1) float32 one-hot of the spatial factors (background rows zero)
    nsfac: np.ndarray  # N x 3 float32 non-spatial factors
    spot_names: list[str] = field(repr=False, default_factory=list)

    @property
    def n_spots(self) -> int:
        return int(self.labels.size)


def grid_coordinates(n_spots: int, grid: str = "square") -> np.ndarray:
    """Row-major positions on a square or hexagonal (odd rows shifted by half a spot) grid, scaled to [-2, 2]."""
    n_cols = math.ceil(math.sqrt(n_spots))
    index = np.arange(n_spots)
    row, col = index // n_cols, index % n_cols
    x = col.astype(np.float64)
    y = row.astype(np.float64)
    if grid == "hex":
        x = x + 0.5 * (row % 2)
        y = y * (math.sqrt(3.0) / 2.0)
    span = max(np.ptp(x), np.ptp(y), 1e-12)
    coords = np.column_stack([x - x.min(), y - y.min()]) / span * 4.0 - 2.0
    return coords


def domain_labels(coords: np.ndarray, n_domains: int, rng: np.random.Generator, irregularity: float = 0.0,
                  shape_rng: np.random.Generator | None = None) -> np.ndarray:
    """Background 0, then smooth wobbly blobs in the upper part and wavy bands (layers) in the lower part.

    With `irregularity` > 0 the positions are first warped by a smooth random field drawn from `shape_rng` (a
    sum of a few plane waves, amplitude proportional to `irregularity`), so boundaries grow lobes and fingers;
    `rng` is consumed exactly as without it, so the blob centres and phases do not move.
    """
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    unit = (coords - lo) / np.maximum(hi - lo, 1e-12)
    u, v = unit[:, 0], unit[:, 1]
    if irregularity > 0:
        shape_rng = shape_rng or np.random.default_rng(0)
        warp_u, warp_v = np.zeros_like(u), np.zeros_like(v)
        for _ in range(6):
            freq = shape_rng.uniform(2.0, 7.0, size=2) * shape_rng.choice([-1, 1], size=2)
            phase_u, phase_v = shape_rng.uniform(0, 2 * np.pi, size=2)
            wave = 2 * np.pi * (freq[0] * u + freq[1] * v)
            warp_u += np.sin(wave + phase_u)
            warp_v += np.sin(wave + phase_v)
        amplitude = 0.035 * irregularity / math.sqrt(6)
        u, v = u + amplitude * warp_u, v + amplitude * warp_v
    n_factors = n_domains - 1
    n_blobs = math.ceil(n_factors / 2)
    n_bands = n_factors - n_blobs
    labels = np.zeros(coords.shape[0], dtype=np.int8)
    radius = min(0.22, 0.46 / n_blobs)
    for i in range(n_blobs):
        cx = (i + 0.5) / n_blobs + rng.uniform(-0.02, 0.02)
        cy = 0.28 + rng.uniform(-0.02, 0.02)
        phase = rng.uniform(0, 2 * np.pi)
        theta = np.arctan2(v - cy, u - cx)
        r_edge = radius * (1.0 + 0.12 * np.sin(3.0 * theta + phase))
        inside = (np.hypot(u - cx, v - cy) <= r_edge) & (labels == 0)
        labels[inside] = i + 1
    height = 0.4 / max(n_bands, 1)
    wave_phase = rng.uniform(0, 2 * np.pi)
    v_wavy = v - 0.03 * np.sin(2 * np.pi * 1.5 * u + wave_phase)
    for j in range(n_bands):
        top = 0.56 + j * height + 0.06 * height
        bottom = 0.56 + (j + 1) * height - 0.06 * height
        inside = (v_wavy >= top) & (v_wavy < bottom) & (labels == 0)
        labels[inside] = n_blobs + j + 1
    return labels


def make_tissue(n_spots: int, seed: int, n_domains: int = 5, grid: str = "square",
                difficulty: Difficulty = DEFAULT_DIFFICULTY) -> Tissue:
    """Positions, domains, spatial-factor one-hots and non-spatial factors of one simulation."""
    rng = np.random.default_rng([seed, 0])
    coords = grid_coordinates(n_spots, grid)
    labels = domain_labels(coords, n_domains, rng, difficulty.irregularity, np.random.default_rng([seed, 0, 1]))
    spfac = np.zeros((n_spots, n_domains - 1), dtype=np.float32)
    has = labels > 0
    spfac[np.flatnonzero(has), labels[has] - 1] = 1.0
    nsfac = rng.standard_normal((n_spots, 3)).astype(np.float32)
    width = max(4, len(str(n_spots - 1)))
    names = [f"{i:0{width}d}_spot" for i in range(n_spots)]
    return Tissue(coords=coords, labels=labels, spfac=spfac, nsfac=nsfac, spot_names=names)


def truth_from_spfac(spfac: np.ndarray) -> np.ndarray:
    """The method's ground truth: label = sum_k (k+1) * spfac[:, k] (0 = background)."""
    weights = np.arange(1, spfac.shape[1] + 1, dtype=np.float64)
    return np.rint(np.asarray(spfac, dtype=np.float64) @ weights).astype(np.int64)
