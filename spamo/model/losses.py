"""The loss terms of SPAMO, one function per term (docs/method.md sections 3-5).

* `reconstruction_loss`  - MSE between a modality's features and its reconstruction;
* `feature_graph_loss`   - mean over modalities of ||G(P_m) - T_m||_F (not squared), see feature_graph.py;
* `spatial_smoothness_loss` - 1 - mean cosine between a spot and the mean of its spatial neighbours;
* `dgi_loss`             - Deep Graph Infomax: real spots vs row-shuffled spots against a summary vector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spamo.choices import DGI_INITS
from spamo.model.sparse import graph_matmul, row_sums
"""How the DGI discriminator starts: "torch" = nn.Bilinear's own default (the reference), "xavier" = old spamo."""


def reconstruction_loss(features: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all entries."""
    return F.mse_loss(reconstruction, features)


def feature_graph_loss(refined_values: list[torch.Tensor], target_values: list[torch.Tensor]) -> torch.Tensor:
    """Mean over modalities of the Frobenius norm of G(P_m) - T_m (both live on the same sparse support)."""
    norms = [torch.linalg.vector_norm(g - t) for g, t in zip(refined_values, target_values)]
    return torch.stack(norms).mean()


def spatial_smoothness_loss(fused: torch.Tensor, spatial: torch.Tensor, clamp_degree: bool = True) -> torch.Tensor:
    """1 - mean_i <u_i, (S u)_i / deg_i> with u the unit-length rows of the fused embedding.

    deg_i = max(rowsum(S)_i, 1) with `clamp_degree` (the reference's `clamp(min=1)`: a normalised graph's row sums
    are often below 1, and there the "mean" stays a damped sum), else rowsum(S)_i.
    """
    unit = F.normalize(fused, dim=1)
    degree = row_sums(spatial)
    if clamp_degree:
        degree = degree.clamp(min=1.0)
    neighbour_mean = graph_matmul(spatial, unit) / degree
    return 1.0 - (unit * neighbour_mean).sum(dim=1).mean()


class DGIHead(nn.Module):
    """Deep Graph Infomax parameters: summary s = sigmoid(Linear(d, d)(mean fused)); bilinear discriminator.

    `init="torch"` keeps nn.Bilinear's own initialisation (weight and bias uniform in +-1/sqrt(d)), as the reference;
    `init="xavier"` redraws the weight Xavier-uniform with a zero bias (the old spamo start).
    """

    def __init__(self, latent_dim: int, init: str = "torch"):
        super().__init__()
        if init not in DGI_INITS:
            raise ValueError(f"init must be one of {DGI_INITS}, got {init!r}")
        self.summary = nn.Linear(latent_dim, latent_dim)
        self.discriminator = nn.Bilinear(latent_dim, latent_dim, 1)
        if init == "xavier":
            nn.init.xavier_uniform_(self.discriminator.weight)
            nn.init.zeros_(self.discriminator.bias)

    def logits(self, rows: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        """rows_i^T W s + b: the bilinear discriminator's output, computed as a matrix-vector product.

        `nn.Bilinear` on (N, d) rows against an expanded summary goes through a generic trilinear kernel, a large
        share of an epoch; rows @ (W s) is the same value in O(N d).
        """
        weight_times_summary = self.discriminator.weight[0] @ summary.reshape(-1)
        return rows @ weight_times_summary + self.discriminator.bias


def dgi_loss(fused: torch.Tensor, head: DGIHead, permutation: torch.Tensor | None = None) -> torch.Tensor:
    """Mean BCE-with-logits of positives (fused rows, target 1) and negatives (shuffled rows, target 0).

    The shuffle is drawn from torch's (seeded) generator unless a permutation is given.
    """
    if permutation is None:
        permutation = torch.randperm(fused.shape[0], device=fused.device)
    summary = torch.sigmoid(head.summary(fused.mean(dim=0, keepdim=True)))
    positive = head.logits(fused, summary)
    negative = head.logits(fused[permutation], summary)
    logits = torch.cat([positive, negative])
    labels = torch.cat([torch.ones_like(positive), torch.zeros_like(negative)])
    return F.binary_cross_entropy_with_logits(logits, labels)
