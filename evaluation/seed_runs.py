"""One seed run: train a configuration with one seed, cluster it plainly and by split-and-merge, score both.

`run_seed` is pure computation on `PreparedData` (the Ray task calls it; a test calls it in-process to check that a
configuration and seed reproduce their row exactly). `SeedRunCache` keeps each finished seed run as
`<out>/seed_runs/<key>.json` (the record) + `<key>.npz` (labels and embeddings), both written atomically, the
record last, so a re-run of `spamo evaluate` reuses every finished seed run and trains only what is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spamo.clustering import split_merge
from spamo.clustering.base import register_backends
from spamo.config import SpamoConfig
from spamo.io import atomic_path, atomic_write_text
from spamo.metrics import clustering_scores, score_against_truth
from spamo.pipeline import fit_and_cluster, package_versions

CACHE_DIR = "seed_runs"
# a seed run's default starting K for split-and-merge when the configuration has no init_k: over-cluster by this
SPLIT_MERGE_OVER = 2


@dataclass(frozen=True)
class SeedJob:
    """What one seed run is: a resolved configuration (seed included) on a dataset, and where the config came from."""

    dataset: str  # the data it trains on
    config_from: str  # the dataset whose tune run chose the configuration
    config_rank: int  # the configuration's rank on `config_from`
    seed: int
    config_json: str  # resolved for `dataset`, sorted keys
    truth_sha256: str | None

    @property
    def key(self) -> str:
        """Cache key: a hash of (dataset, configuration, seed, ground truth); the same four give the same run."""
        text = json.dumps([self.dataset, self.config_json, self.seed, self.truth_sha256])
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    @property
    def config(self) -> SpamoConfig:
        return SpamoConfig.from_dict(json.loads(self.config_json))

    @property
    def transferred(self) -> bool:
        return self.dataset != self.config_from


def config_json(config: SpamoConfig) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)


def split_merge_init_k(config: SpamoConfig, n_spots: int) -> int:
    """The configuration's init_k, else SPLIT_MERGE_OVER times the target K (at most a tenth of the spots)."""
    if config.init_k:
        return int(config.init_k)
    return int(max(config.n_clusters, min(SPLIT_MERGE_OVER * config.n_clusters, n_spots // 10)))


@contextlib.contextmanager
def limited_threads(n: int):
    """Run with `n` torch, BLAS and OpenMP threads.

    One per seed run keeps parallel runs from oversubscribing the cores, and makes a run's numbers the same in a Ray
    worker and in any other process (reductions split over a different number of threads round differently).
    """
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


def _scores(prepared, fused: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    return clustering_scores(labels, fused, coords=prepared.coords, truth=prepared.truth, seed=seed)


def split_merge_record(prepared, fused: np.ndarray, config: SpamoConfig) -> tuple[dict, np.ndarray]:
    """Every K split-and-merge visits (criterion, ARI/NMI there, the pair merged or split) and the labels at K."""

    init_k = split_merge_init_k(config, prepared.n_spots)
    result = split_merge(fused, config.n_clusters, init_k, coords=prepared.coords, n_pcs=config.n_pcs)
    settled = _settled_step(result.steps)
    target = result.labels_at(config.n_clusters)
    target_step = max((i for i, s in enumerate(result.steps) if s.k == config.n_clusters),
                      key=lambda i: result.steps[i].criterion)
    steps = []
    merges = 0
    for i, step in enumerate(result.steps):
        truth = score_against_truth(prepared.truth, step.labels) if prepared.truth is not None else {}
        is_merge = step.action.endswith("merge") and step.pair is not None
        merges += is_merge
        steps.append({"step": i, "action": step.action, "k": int(step.k), "criterion": float(step.criterion),
                      "pair_a": None if step.pair is None else int(step.pair[0]),
                      "pair_b": None if step.pair is None else int(step.pair[1]),
                      "merge_index": merges if is_merge else None, "settled": i == settled,
                      "at_target": i == target_step,
                      "ari": float(truth.get("ARI", np.nan)), "nmi": float(truth.get("NMI", np.nan))})
    return {"init_k": init_k, "estimated_k": int(result.estimated_k), "steps": steps}, target


def _settled_step(steps) -> int:
    """Index of the clustering the free search settled on (the last step before the forced path)."""
    free = [i for i, s in enumerate(steps) if not s.action.startswith("forced")]
    return free[-1] if free else 0


def run_seed(prepared, config: SpamoConfig, threads: int = 1) -> tuple[dict, dict]:
    """Train, cluster (plain and split-and-merge) and score one configuration and seed.

    Returns (record, arrays): the record is JSON-safe (scores, split-merge path, times, versions); the arrays are the
    labels of both clusterings and the embeddings. Deterministic on CPU for a fixed config, seed and `threads`.
    """

    started = time.perf_counter()
    with limited_threads(threads):
        result = fit_and_cluster(prepared, config, progress=False)
        tick = time.perf_counter()
        path, sm_labels = split_merge_record(prepared, result.fused, config)
        sm_seconds = time.perf_counter() - tick
        sm_scores = _scores(prepared, result.fused, sm_labels, config.seed)
    record = {
        "scores": {k: float(v) for k, v in result.scores.items()},
        "split_merge_scores": sm_scores,
        "split_merge": path,
        "epochs": len(result.history),
        "final_loss": float(result.history[-1]["total"]) if result.history else float("nan"),
        "timings": {**{k: float(v) for k, v in result.timings.items()}, "split_merge_s": sm_seconds,
                    "wall_s": time.perf_counter() - started},
        "device": str(result.device),
        "hostname": socket.gethostname(),
        "versions": package_versions(),
    }
    arrays = {"labels": np.asarray(result.labels, dtype=np.int64),
              "split_merge_labels": np.asarray(sm_labels, dtype=np.int64),
              "fused": np.asarray(result.fused, dtype=np.float32)}
    for i, emb in enumerate(result.per_modality):
        arrays[f"modality_{i}"] = np.asarray(emb, dtype=np.float32)
    return record, arrays


def seed_task(prepared, job: SeedJob, backends: dict | None = None) -> tuple[dict, dict]:
    """The Ray task body: one thread, the job's config; the record carries the job it answers. `backends` are the
    clustering backends the user registered in the driver (`search.backends.travelling_backends`), registered here
    first: the job's config may name one, and this worker process knows only the built-in ones."""
    register_backends(backends or {})
    record, arrays = run_seed(prepared, job.config, threads=1)
    record["job"] = job.__dict__ | {"key": job.key}
    return record, arrays


class SeedRunCache:
    """Finished seed runs on disk, by key: `<key>.npz` then `<key>.json` (the record marks the run complete)."""

    def __init__(self, out_dir: str | Path):
        self.folder = Path(out_dir) / CACHE_DIR

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.folder / f"{key}.json", self.folder / f"{key}.npz"

    def has(self, key: str) -> bool:
        record, arrays = self._paths(key)
        return record.is_file() and arrays.is_file()

    def load(self, key: str) -> dict:
        return json.loads(self._paths(key)[0].read_text())

    def arrays(self, key: str) -> dict[str, np.ndarray]:
        with np.load(self._paths(key)[1]) as data:
            return {name: data[name] for name in data.files}

    def store(self, key: str, record: dict, arrays: dict) -> None:
        record_path, arrays_path = self._paths(key)
        with atomic_path(arrays_path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        atomic_write_text(record_path, json.dumps(_json_safe(record), indent=1, sort_keys=True))


def _json_safe(value):
    """NaN/inf become None (JSON has neither); numpy scalars become Python ones."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, np.ndarray):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
