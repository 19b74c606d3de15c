"""Products with sparse, symmetric graph operators (every graph in SPAMO is symmetric).

A custom autograd function multiplies by the graph in the backward pass too (the transpose of a symmetric graph is the
graph itself), so no transposed copy is built and CSR operators, which are the fastest on CPU, work both ways.

Two kinds of operator:
- a plain sparse tensor (COO or CSR) that carries no gradient (spatial graphs, a detached feature graph);
- an `EdgeValuedGraph`: a fixed symmetric support whose edge values carry gradient (the learnable feature graph G(P)
  as the encoders use it when it is not detached). Its backward also returns the gradient of every edge value,
  dL/dA_ij = <dL/dY_i, X_j>, computed on the support only (a sampled product in blocks of edges, never N x N).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch

from spamo.model import attention_kernel

_EDGE_BLOCK_ELEMENTS = 1 << 22  # edges x columns of one block of the edge-gradient gather (16 MiB in float32)


@contextlib.contextmanager
def quiet_csr():
    """Silence torch's one-time "Sparse CSR tensor support is in beta" notice for one call (noise to users).

    Scoped here instead of a process-wide filter so that importing spamo changes no one else's warnings.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        yield


def csr_operator(crow: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """An n x n CSR tensor from row pointers, column indices and values (no invariant checks: built by us)."""
    with quiet_csr():
        return torch.sparse_csr_tensor(crow, cols, values, (n, n), check_invariants=False)


@dataclass
class EdgeValuedGraph:
    """A symmetric n x n graph on a fixed row-major support whose `values` may require grad.

    `rows`, `cols` are the coalesced (row-major sorted) support, `crow` its CSR row pointers; the support and the
    values must be symmetric (entry (j, i) equals entry (i, j)), which G(P) is by construction.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    crow: torch.Tensor
    values: torch.Tensor
    n: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.n)

    def detached_operator(self) -> torch.Tensor:
        return csr_operator(self.crow, self.cols, self.values.detach(), self.n)


class _SymmetricGraphProduct(torch.autograd.Function):
    """y = A x for a symmetric sparse A that carries no gradient."""

    @staticmethod
    def forward(ctx, graph: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.graph = graph
        return torch.sparse.mm(graph, dense)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        return None, torch.sparse.mm(ctx.graph, grad_out.contiguous())


class _EdgeValuedGraphProduct(torch.autograd.Function):
    """y = A(v) x for a symmetric sparse A with edge values v; gradients to x and to v."""

    @staticmethod
    def forward(ctx, values, dense, rows, cols, crow, n):  # type: ignore[override]
        operator = csr_operator(crow, cols, values.detach(), n)
        ctx.operator = operator
        ctx.save_for_backward(dense, rows, cols)
        return torch.sparse.mm(operator, dense)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        dense, rows, cols = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_dense = torch.sparse.mm(ctx.operator, grad_out) if ctx.needs_input_grad[1] else None
        grad_values = None
        if ctx.needs_input_grad[0]:
            grad_values = sampled_row_dots(grad_out, dense, rows, cols)
        return grad_values, grad_dense, None, None, None, None


def sampled_row_dots(left: torch.Tensor, right: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """<left[rows[e]], right[cols[e]]> for every edge e, in blocks of edges (memory O(block x columns)).

    On CPU the compiled kernel of attention_kernel.py does it without the gathers (about a quarter of an epoch at
    2,500 spots went into them); it returns None where it does not apply and the tensor code below runs.
    """
    fast = attention_kernel.sampled_row_dots(left, right, rows, cols)
    if fast is not None:
        return fast
    out = torch.empty(rows.numel(), dtype=left.dtype, device=left.device)
    block = max(1, _EDGE_BLOCK_ELEMENTS // max(1, left.shape[1]))
    for start in range(0, rows.numel(), block):
        r, c = rows[start : start + block], cols[start : start + block]
        out[start : start + block] = (left.index_select(0, r) * right.index_select(0, c)).sum(dim=1)
    return out


def graph_matmul(graph, dense: torch.Tensor) -> torch.Tensor:
    """A @ X for a symmetric sparse graph A: a sparse tensor (gradient to X only) or an `EdgeValuedGraph`
    (gradient to X and to the edge values)."""
    if isinstance(graph, EdgeValuedGraph):
        return _EdgeValuedGraphProduct.apply(graph.values, dense, graph.rows, graph.cols, graph.crow, graph.n)
    if graph.requires_grad:
        raise ValueError("graph_matmul: a sparse-tensor operator must not require grad (use EdgeValuedGraph)")
    return _SymmetricGraphProduct.apply(graph, dense)


def row_sums(graph: torch.Tensor) -> torch.Tensor:
    """Row sums of a sparse graph as a dense column (N x 1)."""
    ones = torch.ones(graph.shape[1], 1, dtype=graph.dtype, device=graph.device)
    return torch.sparse.mm(graph, ones)


def to_operator(graph: torch.Tensor) -> torch.Tensor:
    """The fastest operator form of a graph on its device: CSR (COO input is coalesced first)."""
    if graph.layout == torch.sparse_csr:
        return graph
    with quiet_csr():
        return graph.coalesce().to_sparse_csr()
