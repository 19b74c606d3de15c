"""Products with sparse, symmetric graph operators (every graph in SPAMO is symmetric).

A custom autograd function multiplies by the graph in the backward pass too (the transpose of a symmetric graph is the
graph itself), so no transposed copy is built and CSR operators, which are the fastest on CPU, work both ways.
"""

from __future__ import annotations

import torch

from spamo._compat import quiet_csr_beta


class _SymmetricGraphProduct(torch.autograd.Function):
    """y = A x for a symmetric sparse A that carries no gradient."""

    @staticmethod
    def forward(ctx, graph: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.graph = graph
        return torch.sparse.mm(graph, dense)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        return None, torch.sparse.mm(ctx.graph, grad_out.contiguous())


def graph_matmul(graph: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """A @ X for a symmetric sparse graph A (COO or CSR); gradient flows to X only."""
    if graph.requires_grad:
        raise ValueError("graph_matmul: the graph operator must not require grad")
    return _SymmetricGraphProduct.apply(graph, dense)


def row_sums(graph: torch.Tensor) -> torch.Tensor:
    """Row sums of a sparse graph as a dense column (N x 1)."""
    ones = torch.ones(graph.shape[1], 1, dtype=graph.dtype, device=graph.device)
    return torch.sparse.mm(graph, ones)


def to_operator(graph: torch.Tensor) -> torch.Tensor:
    """The fastest operator form of a graph on its device: CSR (COO input is coalesced first)."""
    if graph.layout == torch.sparse_csr:
        return graph
    with quiet_csr_beta():
        return graph.coalesce().to_sparse_csr()
