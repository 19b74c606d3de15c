"""The SPAMO network (docs/method.md sections 3 and 4), sparse and generic in the number of modalities."""

from spamo.model.attention import BlockedDropoutAttention, attention, attention_keep_mask
from spamo.model.feature_graph import LearnableFeatureGraph
from spamo.model.losses import dgi_loss, feature_graph_loss, reconstruction_loss, spatial_smoothness_loss
from spamo.model.module import SpamoModule

__all__ = [
    "BlockedDropoutAttention",
    "LearnableFeatureGraph",
    "SpamoModule",
    "attention",
    "attention_keep_mask",
    "dgi_loss",
    "feature_graph_loss",
    "reconstruction_loss",
    "spatial_smoothness_loss",
]
