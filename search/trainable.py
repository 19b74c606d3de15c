"""One Ray Tune trial: build the trial's config, fetch shared data and graphs, train, report.

The trial knows nothing of the model: it calls `spamo.pipeline.fit_and_cluster` with a callback that, every
`report_every` epochs, clusters the current embedding cheaply (k-means on PCA) and reports the scores through
`ray.tune.report`, so a scheduler (ASHA) can stop poor trials early. The last report (``final = True``) carries the
scores of the real clustering.

Failures are sorted here. A trial that fails for its own reason (a NaN loss, any exception of its own) reports one
last result with `trial_error` and ends: it is recorded as an error and never retried (trying the same settings
again gives the same failure). A system failure (the worker process or its node died, Ray's memory monitor killed
it, or an object or actor the trial needs was lost: `ray.exceptions.RayError`) reaches Ray, which retries the
trial on any node (`FailureConfig(max_failures=--max-retries)`). A retried trial, or one a `--resume` restarts,
continues from its last checkpoint (`tune.get_checkpoint()`): model, optimiser, feature graphs, scheduler, RNGs and
the loss history (spamo.training), saved with the intermediate report that follows a due checkpoint.
"""

from __future__ import annotations

import io
import json
import math
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import torch
from ray import tune

from search.backends import travelling_backends
from search.graph_cache import cached_graphs
from search.space import trial_config
from spamo.clustering import cluster
from spamo.clustering.base import register_backends
from spamo.config import SpamoConfig
from spamo.graphs import build_graphs
from spamo.metrics import label_free_scores, machine_named, score_against_truth, spatial_coherence
from spamo.pipeline import fit_and_cluster
from spamo.selection import TrialFindings, stability

# At most this many spots enter the silhouette of an intermediate report (it is quadratic in the spots).
PROBE_ASW_SPOTS = 1500


@dataclass
class TrialContext:
    """What every trial of one search shares besides the data (small: it travels with each trial)."""

    base: SpamoConfig  # resolved against the data
    fixed: dict
    report_every: int
    cache_name: str
    cpus_per_trial: float
    finished: dict = field(default_factory=dict)  # trial id -> final report, for trials finished before a resume
    metric: str = "ari"  # the search's metric (every report must carry it, a failure report as NaN)
    checkpoint_every: int | None = None  # epochs between checkpoints (None: spamo.training's time rule)
    run_dir: str | None = None  # the run folder: trial folders (and their found.npz) live under it
    keep_embeddings: bool = True  # write found.npz (domains + float16 fused embedding) per finished trial
    # the clustering backends the user registered in the driver (name -> function), read when the context is built
    # there: each trial registers them in its worker before building its config (search.backends)
    backends: dict = field(default_factory=travelling_backends)


CHECKPOINT_FILE = "trainer.pt"


def trial_dirname(trial) -> str:
    """Trial folders are named "trial_<number>_<id>" (number = creation order, 1-based)."""
    number = str(trial.experiment_tag).split("_", 1)[0]
    return f"trial_{int(number) if number.isdigit() else 0:05d}_{trial.trial_id}"


def where_am_i() -> dict:
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname()}


# Scores of an intermediate report that cost more than the k-means they rest on, computed only when the search's
# metric is one of them (at 3,500 spots, measured: silhouette 0.08 s, consistency 0.28 s a report, against 0.08 s for
# the k-means and 0.13 s for an epoch without cross attention; 19 reports in a 200-epoch trial). The final report
# always carries every score.
SILHOUETTE_METRICS = ("asw", "asw_gt")
CONSISTENCY_METRICS = ("consistency", "composite")


def probe_scores(prepared, embedding: np.ndarray, labels: np.ndarray, seed: int, metric: str | None = None) -> dict:
    """Cheap scores of an intermediate clustering: truth scores, spatial coherence, and the silhouette (on a
    subsample) when `metric` is None or needs it."""

    scores = {}
    if prepared.truth is not None:
        scores.update(score_against_truth(prepared.truth, labels))
    if metric is None or metric in SILHOUETTE_METRICS:
        n = labels.size
        keep = np.sort(np.random.default_rng(seed).choice(n, PROBE_ASW_SPOTS, replace=False)) \
            if n > PROBE_ASW_SPOTS else slice(None)
        truth = prepared.truth[keep] if prepared.truth is not None else None
        scores.update(label_free_scores(embedding[keep], labels[keep], truth=truth, seed=seed))
    scores["Spatial coherence"] = spatial_coherence(labels, prepared.coords)
    return machine_named(scores)


class Probe:
    """The training callback: report cheap scores every few epochs (never stops training itself), with the latest
    due checkpoint attached."""

    def __init__(self, prepared, config: SpamoConfig, started: float, node: dict, start_epoch: int = 0,
                 metric: str | None = None):
        self.prepared, self.config, self.started, self.node = prepared, config, started, node
        self.start_epoch, self.metric = start_epoch, metric
        self.pending: bytes | None = None  # the last due checkpoint, serialised, not yet reported
        self.findings = TrialFindings(config.n_clusters, config.seed)  # label-free criteria between reports
        # seconds spent in reports (scoring, checkpoint serialisation and copy, Ray's report) and since training
        # began (reports included): what benchmarks/bench_tune.py splits a trial's time with
        self.report_s, self.training_from = 0.0, time.perf_counter()

    def keep(self, checkpoint: dict) -> None:
        """`on_checkpoint` of spamo.training: serialise now (the dict holds live tensors), report with the next
        intermediate result."""
        tick = time.perf_counter()
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        self.pending = buffer.getvalue()
        self.report_s += time.perf_counter() - tick

    def __call__(self, epoch: int, embedding_fn, losses: dict) -> bool:
        if epoch >= self.config.epochs:  # the final report follows at once
            return False
        tick = time.perf_counter()
        try:
            self.report(epoch, embedding_fn, losses, tick)
        finally:
            self.report_s += time.perf_counter() - tick
        return False

    def report(self, epoch: int, embedding_fn, losses: dict, tick: float) -> None:
        embedding = embedding_fn()
        labels = np.asarray(cluster(embedding, self.config.n_clusters, method="kmeans", n_pcs=self.config.n_pcs,
                                    seed=self.config.seed))
        report = probe_scores(self.prepared, embedding, labels, self.config.seed, self.metric)
        if self.metric is None or self.metric in CONSISTENCY_METRICS:
            report.update(self.findings.probe(self.prepared.features, embedding, labels, report["spatial_coherence"]))
        else:  # stability alone is cheap; the findings keep these domains for the final stability criterion
            report["stability"] = stability(self.findings.previous, labels)
            self.findings.previous = self.findings.last_probe = labels
        now = time.perf_counter()
        report.update(epoch=int(epoch), loss=float(losses["total"]), final=False, start_epoch=self.start_epoch,
                      started_at=self.started, wall_s=time.time() - self.started, train_s=now - self.training_from,
                      report_s=self.report_s + now - tick, **self.node)
        if self.pending is None:
            tune.report(report)
            return
        with tempfile.TemporaryDirectory(prefix="spamo-ckpt-") as folder:
            Path(folder, CHECKPOINT_FILE).write_bytes(self.pending)
            self.pending = None
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))  # copied to the run's storage


def load_checkpoint() -> dict | None:
    """The trial's last checkpoint (a retried or resumed trial), or None for a fresh start."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        path = Path(folder, CHECKPOINT_FILE)
        if not path.is_file():
            return None
        return torch.load(path, map_location="cpu", weights_only=False)


def run_trial(sampled: dict, prepared=None, context: TrialContext | None = None) -> None:
    """The Ray Tune function trainable (wrapped with `tune.with_parameters(prepared=..., context=...)`)."""
    trial_id = tune.get_context().get_trial_id()
    if trial_id in context.finished:  # finished before an interruption: report the recorded result, train nothing
        tune.report(dict(context.finished[trial_id], replayed=True))
        return
    started = time.time()
    node = where_am_i()
    try:
        final = train_trial(sampled, prepared, context, started, node)
    except ray.exceptions.RayError:
        raise  # a system failure (lost worker, node, object or actor): Ray retries the trial
    except Exception as exc:  # noqa: BLE001 - the trial's own failure: recorded, not retried
        message = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        tune.report({context.metric: math.nan, "trial_error": message, "final": True,
                     "wall_s": time.time() - started, "started_at": started, "finished_at": time.time(), **node})
        return
    tune.report(final)


def train_trial(sampled: dict, prepared, context: TrialContext, started: float, node: dict) -> dict:
    """Train and cluster one trial (from its checkpoint when it has one); the final report."""

    register_backends(context.backends)  # a user's cluster_method is unknown to this worker until then
    torch.set_num_threads(max(1, int(round(context.cpus_per_trial))))
    config = trial_config(context.base, context.fixed, sampled, prepared.n_modalities, prepared.n_spots)
    tick = time.perf_counter()
    graphs, graphs_cached = cached_graphs(context.cache_name, prepared, config, build_graphs)
    graphs_s = time.perf_counter() - tick
    resumed = load_checkpoint()
    start_epoch = int(resumed["trainer"]["epoch"]) if resumed is not None else 0
    probe = Probe(prepared, config, started, node, start_epoch, context.metric)
    probe.training_from = time.perf_counter()
    options = {"start_from": resumed, "on_checkpoint": probe.keep, "checkpoint_every": context.checkpoint_every}
    result = fit_and_cluster(prepared, config, graphs=graphs, callback=probe, callback_every=context.report_every,
                             progress=False, train_options=options)
    final = dict(result.scores)
    final.update(probe.findings.final(prepared.features, result.fused, final["spatial_coherence"]))
    if context.keep_embeddings and context.run_dir:  # what the trial found, for --rescore and pictures
        probe.findings.save(f"{context.run_dir}/{tune.get_context().get_trial_name()}", result.labels, result.fused,
                            prepared.kept_index)
    final.update(
        epoch=len(result.history), loss=float(result.history[-1]["total"]) if result.history else float("nan"),
        final=True, start_epoch=start_epoch, graphs_s=graphs_s, graphs_cached=graphs_cached,
        train_s=result.timings.get("train_s"), epoch_s=result.timings.get("epoch_s"),
        cluster_s=result.timings.get("cluster_s"), report_s=probe.report_s, wall_s=time.time() - started, started_at=started,
        finished_at=time.time(), device=result.device, seed=config.seed,
        config_json=json.dumps(config.to_dict(), sort_keys=True), **node,
    )
    return final
