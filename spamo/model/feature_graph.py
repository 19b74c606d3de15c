"""The learnable feature graph with an EMA target (docs/method.md section 4), on the support of F_m.

The reference keeps a dense N x N parameter P_m. Every entry of P outside the support of F_m (its edges plus the
diagonal) starts at 0 and stays 0 under SGD, Adam and AdamW (relu has zero gradient at 0, weight decay of 0 is 0),
so P is stored as one value per support entry: the same model in O(E) memory (tests/test_model_equivalence.py).

G(P) = D^-1/2 (relu((P + P^T) / 2) + I) D^-1/2, with P^T read through a precomputed reverse-edge permutation.

What the encoders use (`encoder_graph`), as the reference does: F_0 (the normalised feature graph, a constant) in the
first forward pass, then G(P) of the current P *with its gradient* (`detach=False`, the default), so the
reconstruction, DGI and spatial losses reach P as well as the Frobenius term; `detach=True` gives the encoders the
same values without the gradient (the old spamo behaviour).
"""

from __future__ import annotations

import torch
from torch import nn

from spamo.choices import EMA_UPDATES
from spamo.model.sparse import EdgeValuedGraph, csr_operator


def _reverse_edge_permutation(rows: torch.Tensor, cols: torch.Tensor, n: int) -> torch.Tensor:
    """For every entry (i, j) of a coalesced (row-major sorted) support, the position of entry (j, i)."""
    keys = rows * n + cols
    reverse_keys = cols * n + rows
    position = torch.searchsorted(keys, reverse_keys)
    position = position.clamp(max=keys.numel() - 1)
    if not torch.equal(keys[position], reverse_keys):
        raise ValueError("feature graph support is not symmetric")
    return position


def _with_full_diagonal(graph: torch.Tensor) -> torch.Tensor:
    """The coalesced graph with every diagonal entry present in its support (value 0 where it was missing)."""
    if graph.layout != torch.sparse_coo:
        graph = graph.to_sparse_coo()
    graph = graph.coalesce()
    n = graph.shape[0]
    idx = graph.indices()
    if int((idx[0] == idx[1]).sum()) == n:
        return graph
    diag = torch.arange(n, device=idx.device).expand(2, n)
    indices = torch.cat([idx, diag], dim=1)
    values = torch.cat([graph.values(), torch.zeros(n, dtype=graph.dtype, device=graph.device)])
    return torch.sparse_coo_tensor(indices, values, graph.shape, check_invariants=False).coalesce()


def _compressed_rows(rows: torch.Tensor, n: int) -> torch.Tensor:
    """CSR row pointers of row-sorted COO rows."""
    counts = torch.bincount(rows, minlength=n)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


class LearnableFeatureGraph(nn.Module):
    """P (a parameter per support entry), the current graph F used by the encoder, and the EMA target T."""

    def __init__(
        self, graph: torch.Tensor, ema_beta: float = 0.9, ema_update: str = "after_step", detach: bool = False
    ):
        super().__init__()
        if ema_update not in EMA_UPDATES:
            raise ValueError(f"ema_update must be one of {EMA_UPDATES}, got {ema_update!r}")
        graph = _with_full_diagonal(graph)
        self.n = int(graph.shape[0])
        self.ema_beta = float(ema_beta)
        self.ema_update = ema_update
        self.detach = bool(detach)
        rows, cols = graph.indices()
        self.register_buffer("rows", rows.clone())
        self.register_buffer("cols", cols.clone())
        self.register_buffer("reverse", _reverse_edge_permutation(rows, cols, self.n))
        self.register_buffer("is_diagonal", (rows == cols).to(graph.dtype))
        self.register_buffer("crow", _compressed_rows(rows, self.n))
        values = graph.values().detach()
        self.values = nn.Parameter(values.clone())  # P on the support
        self.register_buffer("current", values.clone())  # F: what the encoder uses in the next forward
        self.register_buffer("target", values.clone())  # T: the EMA target
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))  # optimiser steps seen (0: F is F_0)

    def refined_values(self) -> torch.Tensor:
        """G(P) on the support: D^-1/2 (relu((P + P^T)/2) + I) D^-1/2 (differentiable in P).

        Gathers use `index_select`, whose backward is an `index_add_`; `tensor[index]` would backpropagate through
        the much slower accumulating `index_put_` (benchmarks/results/train.md).
        """
        sym = torch.relu(0.5 * (self.values + self.values.index_select(0, self.reverse))) + self.is_diagonal
        degree = torch.zeros(self.n, dtype=sym.dtype, device=sym.device).index_add_(0, self.rows, sym)
        inv_sqrt = degree.rsqrt()
        return inv_sqrt.index_select(0, self.rows) * sym * inv_sqrt.index_select(0, self.cols)

    def operator(self) -> torch.Tensor:
        """The current feature graph F as a CSR operator, without gradient (evaluation, or `detach=True`)."""
        return csr_operator(self.crow, self.cols, self.current, self.n)

    def encoder_graph(self, refined: torch.Tensor | None = None):
        """The graph the encoders multiply by in a training forward pass.

        F_0 before the first update (the reference's first epoch uses the constant normalised feature graph); after
        it, `refined` = G(P) of this forward pass (the same values as F) carrying its gradient into P, unless
        `detach` is set or no `refined` is given.
        """
        if self.detach or refined is None or int(self.updates) == 0:
            return self.operator()
        return EdgeValuedGraph(self.rows, self.cols, self.crow, refined, self.n)

    def as_coo(self, which: str = "current") -> torch.Tensor:
        """`current`, `target` or `refined` values as a sparse COO tensor (for inspection and tests)."""
        values = self.refined_values().detach() if which == "refined" else getattr(self, which)
        return torch.sparse_coo_tensor(
            torch.stack([self.rows, self.cols]), values, (self.n, self.n), check_invariants=False
        ).coalesce()

    @torch.no_grad()
    def update_after_step(self, refined_before_step: torch.Tensor | None = None) -> None:
        """F <- G(P) and T <- beta T + (1 - beta) G(P), after the optimiser step.

        With `ema_update = "before_step"` (a switch for the reference's timing) T is fed the G(P) of the forward
        pass instead, i.e. computed before the step; F is always G(P) after the step.
        """
        refined = self.refined_values()
        self.current.copy_(refined)
        source = refined
        if self.ema_update == "before_step":
            if refined_before_step is None:
                raise ValueError("ema_update='before_step' needs the G(P) of the forward pass")
            source = refined_before_step.detach()
        self.target.mul_(self.ema_beta).add_(source, alpha=1.0 - self.ema_beta)
        self.updates += 1
