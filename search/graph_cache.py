"""Graphs shared between trials: built once per distinct graph setting (KNN_k, ...) for the whole search.

A small named actor holds one ObjectRef per graph key. The first trial that needs a key builds the graphs (with its
own CPUs) and hands them to the actor, which puts them into the object store itself: the actor owns them, so they
outlive that trial's worker, and any trial on any node can fetch them. Two trials asking for a new key at the same
moment may both build it; the last one registered stays (the graphs are deterministic, so either is right). The
driver must keep the actor's handle: a named actor without handles is gone.

Each segment of a search runs its Tuner in a process of its own (search.segment_run), a Ray job of its own, whose
trials must find the actor the driver started: it lives in a fixed namespace (`CACHE_NAMESPACE`) under a name unique
to the driver's job (`cache_actor_name`).
"""

from __future__ import annotations

import ray

from spamo.config import SpamoConfig

# Settings the graphs depend on (everything else in a trial's config leaves them unchanged).
GRAPH_SETTINGS = ("knn_k", "feature_graph_weight", "spatial_k", "knn_ties")
CACHE_NAMESPACE = "spamo"


def graph_key(config: SpamoConfig) -> tuple:
    return tuple(getattr(config, name) for name in GRAPH_SETTINGS)


@ray.remote(num_cpus=0)
class GraphCache:
    """Graph key -> ObjectRef of the graphs (refs are kept wrapped in a list so Ray does not resolve them)."""

    def __init__(self):
        self._refs: dict = {}
        self.builds = 0

    def get(self, key: tuple):
        return self._refs.get(key)

    def put(self, key: tuple, graphs) -> None:
        self.builds += 1
        self._refs[key] = [ray.put(graphs)]  # owned by this actor

    def stats(self) -> dict:
        return {"keys": len(self._refs), "builds": self.builds}


def cache_actor_name(run_name: str) -> str:
    """The cache actor's name: the run's and the driver's job's (two drivers of runs of the same name on one
    cluster share nothing)."""
    return f"spamo-graphs-{run_name}-{ray.get_runtime_context().get_job_id()}"


def start_cache(name: str):
    """The search's cache actor (one per tune run, gone with the driver's job), on the driver's node: a worker node
    that is lost takes neither the cache nor the graphs it owns with it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)
    return GraphCache.options(name=name, namespace=CACHE_NAMESPACE, get_if_exists=True,
                              scheduling_strategy=here).remote()


def cached_graphs(cache_name: str, prepared, config: SpamoConfig, build) -> tuple[object, bool]:
    """The graphs for `config` and whether they came from the cache (some trial built them), else built here and
    registered."""
    key = graph_key(config)
    try:
        cache = ray.get_actor(cache_name, namespace=CACHE_NAMESPACE)
    except ValueError:  # no cache (a trainable run outside a tune run): build locally
        return build(prepared, config), False
    try:
        wrapped = ray.get(cache.get.remote(key))
    except ray.exceptions.RayActorError:  # the cache is gone (its node was lost): build here, share nothing
        return build(prepared, config), False
    if wrapped is not None:
        try:
            return ray.get(wrapped[0]), True
        except ray.exceptions.ObjectLostError:  # the node holding them went away: build again
            pass
    graphs = build(prepared, config)
    try:
        ray.get(cache.put.remote(key, graphs))
    except ray.exceptions.RayActorError:
        pass
    return graphs, False
