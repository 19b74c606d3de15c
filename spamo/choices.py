"""The names every pluggable setting accepts, in one light module (standard library only).

The configuration (`spamo.config`) checks values against these names and the command line lists them in its help,
neither of which should have to import torch or scikit-learn to do so: `spamo --help` and a refused setting answer
at once. The implementations take their names
from here: `spamo.graphs` (feature-graph weights, kNN tie orders), `spamo.model.feature_graph` (EMA timings) and
`spamo.model.losses` (DGI initialisations) import them; `spamo.training` keys its optimiser and scheduler factories
and `spamo.clustering` registers its backends by the same names, in the same order (tests/test_config.py checks the
tables against these tuples). A new choice is added here and next to its implementation (the graphs of docs/method.md section 2, the network and
losses of sections 3-5, the clustering of section 6).
"""

from __future__ import annotations

FEATURE_GRAPH_WEIGHTS = ("connectivity", "distance")  # spamo.graphs: edge weights of the feature kNN graph
KNN_TIES = ("sklearn", "index")
"""Spatial kNN tie order (spamo.graphs): "sklearn" = scikit-learn NearestNeighbors(k + 1) minus self (the reference),
"index" = the smaller spot index first (old spamo)."""
EMA_UPDATES = ("after_step", "before_step")  # spamo.model.feature_graph: when the EMA target follows the graph
DGI_INITS = ("torch", "xavier")  # spamo.model.losses: initialisation of the DGI discriminator
OPTIMIZERS = ("adamw", "adam", "sgd")  # spamo.training.OPTIMIZERS
SCHEDULERS = ("none", "cosine", "plateau")  # spamo.training.SCHEDULERS
# spamo.clustering's built-in backends, in registration order (`available_methods()`)
CLUSTER_METHODS = ("mclust", "auto", "gmm", "kmeans", "leiden", "louvain", "split-merge")
