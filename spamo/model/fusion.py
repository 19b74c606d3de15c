"""Cross-modal fusion (the reference's `RobustFusionModule`), generic in the number of modalities M.

With cross attention (M >= 2): modality i's query attends to keys/values built from the concatenation of the other
M - 1 embeddings; e_i' = LayerNorm(e_i + 0.2 cross_i); c = [e_1..e_M, e_1'..e_M']; a gate and an MLP on c mix the
MLP output with the mean embedding. For M = 2 this is exactly the published two-direction module. Without cross
attention (or M = 1, an ablation): fused = LayerNorm(Linear(M d, d)(concat(e))).
"""

from __future__ import annotations

import torch
from torch import nn

from spamo.model.attention import attention

CROSS_RESIDUAL = 0.2


class CrossAttention(nn.Module):
    """Single-head attention: Q = Linear(d, d)(query), K, V = Linear(ctx, d)(context), output Linear(d, d).

    `precision` names the attention's arithmetic (`spamo.model.attention.PRECISIONS`; float32 is exact).
    """

    def __init__(self, latent_dim: int, context_dim: int, dropout: float, block_size: int,
                 precision: str = "float32"):
        super().__init__()
        self.query = nn.Linear(latent_dim, latent_dim)
        self.key = nn.Linear(context_dim, latent_dim)
        self.value = nn.Linear(context_dim, latent_dim)
        self.out = nn.Linear(latent_dim, latent_dim)
        self.dropout_p = dropout
        self.block_size = block_size
        self.precision = precision

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        p = self.dropout_p if self.training else 0.0
        mixed = attention(self.query(query), self.key(context), self.value(context), p, self.block_size,
                          precision=self.precision)
        return self.out(mixed)


class GatedFusion(nn.Module):
    """Fuse M modality embeddings (N x d each) into one N x d embedding."""

    def __init__(self, n_modalities: int, latent_dim: int, dropout: float, use_cross_attn: bool, block_size: int,
                 precision: str = "float32"):
        super().__init__()
        m, d = n_modalities, latent_dim
        self.use_cross_attn = bool(use_cross_attn) and m >= 2
        if self.use_cross_attn:
            self.cross = nn.ModuleList(CrossAttention(d, (m - 1) * d, dropout, block_size, precision)
                                       for _ in range(m))
            self.cross_norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(m))
            self.gate = nn.Linear(2 * m * d, d)
            self.mlp = nn.Sequential(
                nn.Linear(2 * m * d, 2 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * d, d), nn.LayerNorm(d)
            )
        else:
            self.project = nn.Sequential(nn.Linear(m * d, d), nn.LayerNorm(d))

    def attended(self, embeddings: list[torch.Tensor]) -> list[torch.Tensor]:
        """e_i' = LayerNorm(e_i + 0.2 * cross_i) with cross_i attending to the other modalities."""
        out = []
        for i, (cross, norm) in enumerate(zip(self.cross, self.cross_norms)):
            context = torch.cat([e for j, e in enumerate(embeddings) if j != i], dim=1)
            out.append(norm(embeddings[i] + CROSS_RESIDUAL * cross(embeddings[i], context)))
        return out

    def forward(self, embeddings: list[torch.Tensor]) -> torch.Tensor:
        if not self.use_cross_attn:
            return self.project(torch.cat(embeddings, dim=1))
        combined = torch.cat(embeddings + self.attended(embeddings), dim=1)
        gate = torch.sigmoid(self.gate(combined))
        mixed = self.mlp(combined)
        mean = torch.stack(embeddings).mean(dim=0)
        return gate * mixed + (1.0 - gate) * mean
