"""The names every pluggable setting accepts, in one light module (standard library only).

The configuration (`spamo.config`) checks values against these names and the command line lists them in its help,
neither of which should have to import torch or scikit-learn to do so: `spamo --help` and a refused setting answer
at once. The implementations take their names
from here: `spamo.graphs` (feature-graph weights, kNN tie orders), `spamo.model.feature_graph` (EMA timings) and
`spamo.model.losses` (DGI initialisations) import them; `spamo.training` keys its optimiser and scheduler factories
and `spamo.clustering` registers its backends by the same names, in the same order (tests/test_config.py checks the
tables against these names). A new choice is added here and next to its implementation (the graphs of docs/method.md section 2, the network and
losses of sections 3-5, the clustering of section 6).

A registry that users extend at run time keeps its names in an `OpenChoices`: its registration function adds the
name here too (`spamo.clustering.register_backend` does), so a registered backend is a value the config accepts
without the config importing the registry.
"""

from __future__ import annotations

from typing import Iterator


class OpenChoices:
    """The names a pluggable setting accepts: the built-in ones, then those registered at run time, in order.

    Calling it gives the names as a tuple (`spamo.config.fields.choices` calls it whenever a value is checked, so a
    name registered after the config module was imported is accepted).
    """

    def __init__(self, *built_in: str):
        self._names = dict.fromkeys(built_in)

    def add(self, name: str) -> None:
        """Accept `name` from now on (a name already accepted keeps its place)."""
        self._names.setdefault(name)

    def discard(self, name: str) -> None:
        """Stop accepting `name` (a registration taken back, e.g. by a test that registered a toy backend)."""
        self._names.pop(name, None)

    def __call__(self) -> tuple[str, ...]:
        return tuple(self._names)

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._names))

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"OpenChoices{tuple(self._names)!r}"


FEATURE_GRAPH_WEIGHTS = ("connectivity", "distance")  # spamo.graphs: edge weights of the feature kNN graph
KNN_TIES = ("sklearn", "index")
"""Spatial kNN tie order (spamo.graphs): "sklearn" = scikit-learn NearestNeighbors(k + 1) minus self (the reference),
"index" = the smaller spot index first (old spamo)."""
EMA_UPDATES = ("after_step", "before_step")  # spamo.model.feature_graph: when the EMA target follows the graph
ATTENTION_PRECISIONS = ("float32", "bfloat16")
"""Arithmetic of the cross attention (spamo.model.attention.PRECISIONS): "float32", exact (the method's), or
"bfloat16", PyTorch's fused CUDA kernel given bfloat16 q, k, v (it accumulates in float32): an option for very large
problems on a GPU."""
DGI_INITS = ("torch", "xavier")  # spamo.model.losses: initialisation of the DGI discriminator
OPTIMIZERS = ("adamw", "adam", "sgd")  # spamo.optim.OPTIMIZERS
SCHEDULERS = ("none", "cosine", "plateau")  # spamo.optim.SCHEDULERS
# spamo.clustering's backends, in registration order (`available_methods()`): the built-in ones, then every name
# given to `register_backend`
CLUSTER_METHODS = OpenChoices("mclust", "auto", "gmm", "kmeans", "leiden", "louvain", "split-merge")

# `spamo tune`: its schedulers (search.segment_run.build_scheduler) and the metrics it can optimise
# (search.results.METRICS: spamo.metrics' scores that need the ground truth, the label-free ones, then the training
# loss), named here so that a wrong --scheduler or --metric is refused before Ray and scikit-learn are imported
# (tests/test_tune_refusals.py checks them against their owners)
TUNE_SCHEDULERS = ("asha", "none")
TUNE_METRICS = ("jaccard", "f_measure", "mutual_information", "nmi", "ami", "v_measure", "homogeneity", "completeness",
                "ari", "fmi", "avg", "asw_gt", "asw", "spatial_coherence", "consistency", "stability", "composite",
                "loss")
