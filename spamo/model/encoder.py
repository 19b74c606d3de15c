"""Per-modality graph encoder (the reference's `RobustEncoder` with `AdaptiveAdjFusion`)."""

from __future__ import annotations

import torch
from torch import nn

from spamo.model.sparse import graph_matmul


def blended_graph_product(weight: torch.Tensor, spatial: torch.Tensor, feature: torch.Tensor, x: torch.Tensor):
    """(w S + (1 - w) F) x, computed as w (S x) + (1 - w) (F x) so the blended matrix never exists."""
    return weight * graph_matmul(spatial, x) + (1.0 - weight) * graph_matmul(feature, x)


class ModalityEncoder(nn.Module):
    """Two graph convolutions sharing A = sigmoid(alpha) S + (1 - sigmoid(alpha)) F, then LayerNorm.

    h = relu(A (dropout(x) W1)); z = A (h W2). Weights Xavier-uniform without bias; alpha starts at 0.5.
    """

    def __init__(self, in_dim: int, latent_dim: int, dropout: float):
        super().__init__()
        self.weight1 = nn.Parameter(torch.empty(in_dim, latent_dim))
        self.weight2 = nn.Parameter(torch.empty(latent_dim, latent_dim))
        self.alpha = nn.Parameter(torch.tensor(0.5))
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(latent_dim)
        nn.init.xavier_uniform_(self.weight1)
        nn.init.xavier_uniform_(self.weight2)

    def spatial_share(self) -> torch.Tensor:
        """w = sigmoid(alpha): the spatial graph's share of the blended graph."""
        return torch.sigmoid(self.alpha)

    def forward(self, x: torch.Tensor, spatial: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        w = self.spatial_share()
        hidden = torch.relu(blended_graph_product(w, spatial, feature, self.dropout(x) @ self.weight1))
        latent = blended_graph_product(w, spatial, feature, hidden @ self.weight2)
        return self.norm(latent)
