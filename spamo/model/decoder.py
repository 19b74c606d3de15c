"""Per-modality decoder (the reference's `RobustDecoder`): one graph convolution back to the feature space."""

from __future__ import annotations

import torch
from torch import nn

from spamo.model.sparse import graph_matmul


class ModalityDecoder(nn.Module):
    """recon = S (dropout(fused) W) on the modality's spatial graph; Xavier-uniform W, no bias, no activation."""

    def __init__(self, latent_dim: int, out_dim: int, dropout: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(latent_dim, out_dim))
        self.dropout = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.weight)

    def forward(self, fused: torch.Tensor, spatial: torch.Tensor) -> torch.Tensor:
        return graph_matmul(spatial, self.dropout(fused) @ self.weight)
