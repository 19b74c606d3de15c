"""Workarounds for the libraries spamo runs on, in one place, each with the condition under which it can go.

Every entry says what it works around, where it is used, and when to delete it. Nothing here acts at import: no
process-wide warning filter, no `matplotlib.use`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from dataclasses import dataclass

import scipy.sparse as sp


@contextlib.contextmanager
def rpy2_environment_kept():
    """Undo the environment changes rpy2 makes when it starts R.

    rpy2 prepends R's library folders to LD_LIBRARY_PATH; R, already loaded, no longer needs them, but every Python
    subprocess started afterwards (Ray workers, `spamo` children) would then load the wrong libpython.
    Since the edit is undone, the value rpy2 would prepend is not computed either: rpy2 finds it by starting a
    whole second R (`Rscript -e 'cat(Sys.getenv("LD_LIBRARY_PATH"))'`, 0.2-0.5 s) when it is first imported, and a
    library path set after the process started changes nothing for this process's own loader anyway.
    Used by: `spamo.clustering.mclust` around `import rpy2.robjects`.
    Remove when: rpy2 starts R without editing `os.environ` (true of no rpy2 3.5.x release).
    """
    before = dict(os.environ)
    situation = None
    try:
        import rpy2.situation as situation
    except ImportError:  # no rpy2: the import inside fails on its own
        pass
    original = getattr(situation, "r_ld_library_path_from_subprocess", None)
    if original is not None:
        situation.r_ld_library_path_from_subprocess = lambda r_home: ""
    try:
        yield
    finally:
        if original is not None:
            situation.r_ld_library_path_from_subprocess = original
        for key in set(os.environ) - set(before):
            if key.startswith("LD_"):
                del os.environ[key]
        for key, value in before.items():
            if key.startswith("LD_") and os.environ.get(key) != value:
                os.environ[key] = value


def set_deterministic_algorithms(mode: bool, warn_only: bool = False) -> None:
    """Set torch's deterministic-algorithms flag without importing torch's compiler.

    `torch.use_deterministic_algorithms` sets the flag of the kernels (`torch._C._set_deterministic_algorithms`)
    and, first, the same flag of the Inductor compiler, for which it imports torch._inductor and with it
    torch._dynamo and sympy: about two seconds of imports at the start of every training, for a compiler spamo
    never calls (its attention kernel is plain C: `spamo.model.attention_kernel`). Setting the kernels' flag alone
    gives the kernels the same setting.
    Used by: `spamo.training.deterministic_algorithms`.
    Remove when: torch sets the flag without the import (true of no torch up to 2.13), or spamo compiles with
    Inductor. Where torch lacks the private setter, the public call is made.
    """
    import torch

    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        setter(mode, warn_only=warn_only)


class CsrOutput:
    """Wraps a kNN transformer so its graph comes back as `csr_matrix`.

    scanpy 1.11.5's pynndescent path fails with scipy >= 1.15: the graph is a `csr_array`, which has no `getnnz`.
    Handing scanpy a transformer whose output is converted avoids it.
    Used by: `spamo.analysis.paga.knn_transformer` (above 50,000 spots).
    Remove when: the scanpy in use accepts sparse arrays from a transformer (scanpy > 1.11.5).
    """

    def __init__(self, inner):
        self.inner = inner

    def get_params(self, deep: bool = True) -> dict:
        return self.inner.get_params(deep)

    def set_params(self, **params):
        self.inner.set_params(**params)
        return self

    def fit(self, X, y=None):  # noqa: N803 - scikit-learn's argument names
        self.inner.fit(X)
        return self

    def transform(self, X):  # noqa: N803
        return sp.csr_matrix(self.inner.transform(X))

    def fit_transform(self, X, y=None):  # noqa: N803
        return sp.csr_matrix(self.inner.fit_transform(X))


@functools.cache
def _flash_ops():
    """PyTorch's private fused CPU attention ops (forward with log-sum-exp, backward taking it), or None.

    torch is imported here, not at the top: this module also serves the clustering and plotting code, which must
    not pay torch's import time for it (the callers of these ops have loaded torch already).
    """
    import torch

    ops = torch.ops.aten
    try:
        return ops._scaled_dot_product_flash_attention_for_cpu, ops._scaled_dot_product_flash_attention_for_cpu_backward
    except (AttributeError, RuntimeError):
        return None


def flash_attention_cpu_available() -> bool:
    """Whether `flash_attention_cpu` and its backward exist in the torch in use."""
    return _flash_ops() is not None


def flash_attention_cpu(q, k, v, scale: float, blocks: int = 1):
    """softmax(scale q k^T) v and its per-row natural log-sum-exp through the fused CPU kernel, without dropout.

    The public `scaled_dot_product_attention` computes both but returns only the product; the dropout attention
    (spamo.model.attention_flash) needs the log-sum-exp to correct the product by its dropped weights, and feeds it
    back to the kernel's backward. q, k, v are (N, d) matrices; returns (N, dv) and (N,) tensors of their own.
    `blocks` > 1 (dividing N) runs the rows of q as that many equal blocks in the kernel's batch dimension, over the
    same k and v (expanded, not copied): the same numbers, row for row (see `flash_attention_cpu_backward`).
    Used by: `spamo.model.attention_flash.FlashDropoutAttention`.
    Remove when: a public PyTorch API returns the fused CPU kernel's log-sum-exp and runs its backward from it
    without torch.compile (none up to torch 2.13); then call that.
    """
    n, d = q.shape
    out, lse = _flash_ops()[0](q.view(blocks, 1, n // blocks, d), k.expand(blocks, 1, *k.shape),
                               v.expand(blocks, 1, *v.shape), 0.0, False, scale=scale)
    return out.reshape(n, -1), lse.reshape(n)


def flash_attention_cpu_backward(grad_out, q, k, v, out, lse, scale: float, blocks: int = 1):
    """The fused CPU kernel's backward: (grad q, grad k, grad v) of `flash_attention_cpu` for upstream grad_out.

    Its softmax row term is grad_out_i . out_i of the `out` it is given, whatever produced that (see the caller).
    With `blocks` > 1 the kernel returns one grad k and grad v per block of rows; they are added in block order, so
    the result depends on `blocks`, never on the thread count.
    Used by and remove when: as `flash_attention_cpu`.
    """
    n, d = q.shape
    rows = n // blocks
    grad_q, grad_k, grad_v = _flash_ops()[1](
        grad_out.view(blocks, 1, rows, -1), q.view(blocks, 1, rows, d), k.expand(blocks, 1, *k.shape),
        v.expand(blocks, 1, *v.shape), out.view(blocks, 1, rows, -1), lse.view(blocks, 1, rows), 0.0, False,
        scale=scale)
    return grad_q.reshape(n, d), _blocks_added(grad_k), _blocks_added(grad_v)


def _blocks_added(per_block):
    """(blocks, 1, N, d) -> (N, d): block 0 + block 1 + ..., in that order."""
    total = per_block[0, 0].clone()
    for block in range(1, per_block.shape[0]):
        total += per_block[block, 0]
    return total


def new_process_group() -> dict:
    """subprocess.Popen keyword arguments that start the child in a process group of its own (not a new session).

    Python 3.11 has `process_group=0`; 3.10 (which spamo still supports) needs `preexec_fn=os.setpgrp`, which runs
    between fork and exec and is only safe for an async-signal-safe call such as this one.
    Used by: `search.segment_process.run_in_child`.
    Remove when: spamo requires Python >= 3.11; then pass `process_group=0`.
    """
    return {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}


@dataclass(frozen=True)
class Workaround:
    """One workaround: what it avoids, where it lives, and when it can be deleted."""

    name: str
    where: str
    why: str
    remove_when: str


WORKAROUNDS = (
    Workaround("rpy2 environment", "spamo._compat.rpy2_environment_kept (used by spamo.clustering.mclust)",
               "rpy2 prepends R's library folders to LD_LIBRARY_PATH; child Python processes then load the wrong "
               "libpython", "rpy2 starts R without editing os.environ"),
    Workaround("csr_matrix from kNN transformers", "spamo._compat.CsrOutput (used by spamo.analysis.paga)",
               "scanpy 1.11.5's pynndescent path calls getnnz, which scipy >= 1.15's csr_array lacks",
               "the scanpy in use accepts sparse arrays from a transformer (scanpy > 1.11.5)"),
    Workaround("PAGA layout", "spamo.analysis.paga.paga_layout",
               "scanpy's own PAGA layout step fails on scipy's current sparse indexing",
               "sc.pl.paga without pos= draws on the scipy in use; then drop paga_layout"),
    Workaround("kNN graph for leiden/louvain", "spamo.clustering.community.knn_graph",
               "scanpy's pp.neighbors compiles numba code in every new process (every Ray worker) and failed with "
               "scipy's sparse arrays above 4,096 spots", "scanpy's neighbours work with the scipy in use and "
               "without a per-process compilation (the numba cost alone may justify keeping it)"),
    Workaround("nullable strings in h5ad", "spamo.io.write_h5ad",
               "under pandas 3 string columns and index are nullable string arrays, which anndata writes only with "
               "allow_write_nullable_strings on", "anndata writes nullable strings by default"),
    Workaround("resumable Optuna search", "search.searcher.ResumableOptunaSearch",
               "after a killed driver Ray replays the result of a trial the Optuna study already closed, and Ray's "
               "OptunaSearch lets Optuna's refusal stop the whole search",
               "Ray's OptunaSearch ignores UpdateFinishedTrialError"),
    Workaround("Tune snapshot period", "search.tuning (TUNE_GLOBAL_CHECKPOINT_S set when the user has not)",
               "Ray Tune snapshots its experiment state rarely by default, so a killed driver loses finished trials",
               "Ray Tune exposes the snapshot period as an argument (then pass it instead of the variable)"),
    Workaround("fused CPU attention with its log-sum-exp", "spamo._compat.flash_attention_cpu (and _backward; used "
               "by spamo.model.attention_flash)", "the public scaled_dot_product_attention hides the log-sum-exp the "
               "dropout correction and the backward need, so the private aten ops are called",
               "a public PyTorch API returns the fused CPU kernel's log-sum-exp without torch.compile"),
    Workaround("process group on Python 3.10", "spamo._compat.new_process_group (used by "
               "search.segment_process)", "Popen(process_group=) exists from Python 3.11 on",
               "spamo requires Python >= 3.11"),
    Workaround("CSR beta notice", "spamo.model.sparse.quiet_csr (scoped to each CSR construction)",
               "torch prints a beta notice the first time a CSR tensor is made", "torch drops the notice"),
)
