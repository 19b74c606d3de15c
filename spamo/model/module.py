"""`SpamoModule`: encoders, fusion, decoders and the DGI head for M >= 1 modalities.

The module knows tensors only: per-modality dense features and sparse, symmetric, normalised graphs.
"""

from __future__ import annotations

import torch
from torch import nn

from spamo.model.decoder import ModalityDecoder
from spamo.model.encoder import ModalityEncoder
from spamo.model.fusion import GatedFusion
from spamo.model.losses import DGIHead


class SpamoModule(nn.Module):
    """The SPAMO network; `forward` returns per-modality embeddings, the fused embedding and reconstructions."""

    def __init__(self, feature_dims: list[int], config):
        super().__init__()
        if len(feature_dims) < 1:
            raise ValueError("SpamoModule needs at least one modality")
        d, p = config.latent_dim, config.dropout
        self.feature_dims = list(feature_dims)
        self.encoders = nn.ModuleList(ModalityEncoder(f, d, p) for f in feature_dims)
        self.fusion = GatedFusion(len(feature_dims), d, p, config.use_cross_attn, config.attention_block_size,
                                  config.attention_precision)
        self.decoders = nn.ModuleList(ModalityDecoder(d, f, p) for f in feature_dims)
        self.dgi = DGIHead(d, config.dgi_init)

    @property
    def n_modalities(self) -> int:
        return len(self.feature_dims)

    def embed(self, features, spatial_graphs, feature_graphs) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-modality embeddings and the fused embedding (no decoding)."""
        embeddings = [
            encoder(x, s, f) for encoder, x, s, f in zip(self.encoders, features, spatial_graphs, feature_graphs)
        ]
        return embeddings, self.fusion(embeddings)

    def forward(self, features, spatial_graphs, feature_graphs) -> dict:
        embeddings, fused = self.embed(features, spatial_graphs, feature_graphs)
        reconstructions = [decoder(fused, s) for decoder, s in zip(self.decoders, spatial_graphs)]
        return {"embeddings": embeddings, "fused": fused, "reconstructions": reconstructions}
