"""The score split-and-merge climbs: the classification BIC of the EEE Gaussian mixture, from sufficient statistics.

Computed from counts and scatter matrices, so that scoring a candidate split or merge costs O(K d^2), not a pass
over the points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PartitionStats:
    """Sufficient statistics of a partition: counts, means, within-cluster scatter matrices (K x d x d)."""

    counts: np.ndarray
    means: np.ndarray
    scatters: np.ndarray

    @classmethod
    def of(cls, points: np.ndarray, labels: np.ndarray) -> "PartitionStats":
        k = int(labels.max()) + 1
        counts = np.bincount(labels, minlength=k).astype(np.float64)
        means = np.zeros((k, points.shape[1]))
        np.add.at(means, labels, points)
        means /= counts[:, None]
        centred = points - means[labels]
        scatters = np.stack([centred[labels == c].T @ centred[labels == c] for c in range(k)])
        return cls(counts, means, scatters)


class EEECriterion:
    """Classification BIC of the EEE Gaussian mixture (one shared covariance), from sufficient statistics.

    For a hard partition into K clusters with counts n_c and pooled within-cluster scatter W, the maximised
    classification log-likelihood with proportions n_c / N, means and shared covariance Sigma = W / N is
        L = sum_c n_c log(n_c / N) - N/2 (d log(2 pi) + log det(W / N + r I) + d),
    with a fixed ridge r (1e-6 of the mean variance of the data) against singular W, and
        criterion = 2 L - p log N,  p = (K - 1) + K d + d (d + 1) / 2     (mclust's BIC sign: higher is better).
    """

    def __init__(self, points: np.ndarray):
        self.n, self.d = points.shape
        self.ridge = 1e-6 * float(np.mean(np.var(points, axis=0))) + 1e-12

    def __call__(self, counts: np.ndarray, scatter: np.ndarray) -> float:
        counts = counts[counts > 0]
        k, n, d = counts.size, self.n, self.d
        _, logdet = np.linalg.slogdet(scatter / n + self.ridge * np.eye(d))
        loglik = float(np.sum(counts * np.log(counts / n))) - n / 2 * (d * np.log(2 * np.pi) + logdet + d)
        params = (k - 1) + k * d + d * (d + 1) / 2
        return 2 * loglik - params * np.log(n)
