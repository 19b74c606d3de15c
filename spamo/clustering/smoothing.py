"""Optional post-processing: a spatial majority vote over each spot's nearest spots (docs/method.md section 6)."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

SMOOTH_K = 6


def spatial_neighbours(coords: np.ndarray, k: int = SMOOTH_K) -> np.ndarray:
    """N x k indices of each spot's k nearest other spots (KD-tree; the spot itself is left out even at duplicates)."""
    coords = np.asarray(coords, dtype=np.float64)
    k = min(k, coords.shape[0] - 1)
    _, found = cKDTree(coords).query(coords, k=k + 1)
    is_self = found == np.arange(coords.shape[0])[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")  # self (True) moves to the end
    return np.take_along_axis(found, order, axis=1)[:, :k]


def spatial_majority_vote(labels, coords, k: int = SMOOTH_K) -> np.ndarray:
    """One simultaneous pass: a spot takes the label held by more than half of its k nearest spots, if any.

    Memory O(N k^2) booleans at most (each neighbour's label compared with the other neighbours'); no N x N.
    """
    labels = np.asarray(labels)
    neighbours = spatial_neighbours(coords, k)
    k = neighbours.shape[1]
    around = labels[neighbours]
    votes = (around[:, :, None] == around[:, None, :]).sum(axis=2)
    winner = np.argmax(votes, axis=1)
    rows = np.arange(labels.size)
    majority = votes[rows, winner] * 2 > k
    return np.where(majority, around[rows, winner], labels)
