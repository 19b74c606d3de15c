"""The clustering backends' registry and what every backend shares.

A backend is a function `(points, n_clusters, request) -> labels` registered under the name the user gives as
`--cluster-method`; `spamo.clustering.cluster` projects the embedding, checks the input and dispatches to it. This
module is the floor the backends stand on, so that they register themselves without importing the dispatcher.

A registration changes the calling process only. Ray's workers import spamo, and with it the built-in backends,
but not what a user registered in a notebook or script: a search or an evaluation therefore hands the user's
backends (`user_backends`) to its workers with the work, and each worker registers them (`register_backends`)
before it builds a config or clusters (search/trainable.py, evaluation/seed_runs.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
from threadpoolctl import threadpool_limits

from spamo.choices import CLUSTER_METHODS
from spamo.errors import SpamoInputError


@dataclass(frozen=True)
class ClusterRequest:
    """What a backend may need beyond the projected points and K."""

    seed: int = 2020
    coords: np.ndarray | None = None
    init_k: int | None = None


Backend = Callable[[np.ndarray, int, ClusterRequest], np.ndarray]
BACKENDS: dict[str, Backend] = {}


def register_backend(name: str) -> Callable[[Backend], Backend]:
    """Register a clustering backend under `name` (the value of --cluster-method); the name becomes a value the
    config accepts (`spamo.choices.CLUSTER_METHODS`, which the config reads without importing the backends)."""

    def add(func: Backend) -> Backend:
        BACKENDS[name] = func
        CLUSTER_METHODS.add(name)
        return func

    return add


def user_backends() -> dict[str, Backend]:
    """The backends registered by the user, by name: those whose function is defined outside spamo's own modules
    (in `__main__`, a notebook, a module of the user's), including one that replaces a built-in name. These are the
    ones another process (a Ray worker) lacks; the built-in ones it has from importing spamo."""
    return {name: func for name, func in BACKENDS.items() if not _defined_in_spamo(func)}


def register_backends(backends: Mapping[str, Backend]) -> None:
    """Register backends handed over by another process (a Ray worker given the driver's `user_backends()`), so its
    configs accept the names and `cluster` finds the functions; registering the same one again changes nothing."""
    for name, func in backends.items():
        register_backend(name)(func)


def _defined_in_spamo(func: Backend) -> bool:
    module = getattr(func, "__module__", None) or ""
    return module == "spamo" or module.startswith("spamo.")


def available_methods() -> tuple[str, ...]:
    """The names of the registered backends, in registration order."""
    return tuple(BACKENDS)


class ClusteringFailed(SpamoInputError):
    """A backend ran but found no clustering for this input and K (for example mclust returning no EEE fit)."""


def one_thread():
    """Limit BLAS and OpenMP to one thread while clustering.

    The work is many small operations (d x d matrices with d = 20, k-means passes), for which thread pools spend far
    more time waking and spinning than computing, most of all on a busy machine; with one thread the same fits run
    many times faster (`benchmarks/results/clustering.md`). Ray trials hold one CPU each anyway.
    """
    return threadpool_limits(limits=1)


def check_k(n_clusters, n_spots: int) -> None:
    """Refuse a K that is not an integer in [2, n_spots]."""
    if not isinstance(n_clusters, (int, np.integer)) or not (2 <= n_clusters <= n_spots):
        raise SpamoInputError("n_clusters", f"n_clusters={n_clusters} must be an integer between 2 and {n_spots}")


def relabel_by_appearance(labels) -> np.ndarray:
    """Renumber labels 0..K-1 in order of first appearance (a canonical numbering of a partition)."""
    _, first, inverse = np.unique(np.asarray(labels), return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse.ravel()]
