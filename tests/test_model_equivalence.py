"""The key acceptance test: the sparse SPAMO model equals the dense N x N formulation of the reference.

Same initial weights, same seeds, dropout off, >= 20 optimiser steps with adam, adamw and sgd (all with weight
decay): identical losses, embeddings and learnable-graph values (float64, to 1e-5), and every entry of the dense P
outside the support of F stays exactly 0. Both sides follow the reference's defaults (encoders use G(P) without
detaching it, spatial-smoothness degree clamped at 1); the switches for the old behaviours are covered too.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from dense_reference import DenseSpamo
from model_problems import planted_problem
from spamo import _compat
from spamo.config import SpamoConfig
from spamo.model import attention_kernel
from spamo.training import Trainer

STEPS = 22


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(n_mod: int, optimizer: str, **extra) -> SpamoConfig:
    base = dict(data_type="Simulation", dropout=0.0, optimizer=optimizer, weight_decay=0.05, latent_dim=16,
                lr=0.01, epochs=STEPS, seed=7)
    base.update(extra)
    return SpamoConfig(**base).resolve(n_mod, 50)


def _pair(n_mod: int, config: SpamoConfig):
    features, spatial, feature, _ = planted_problem(50, [12, 8, 10][:n_mod], seed=3, knn_k=6)
    features = [f.double() for f in features]
    spatial = [g.double() for g in spatial]
    feature = [g.double() for g in feature]
    sparse = Trainer(features, spatial, feature, config)
    dense = DenseSpamo(sparse.model, features, spatial, feature, config)
    return sparse, dense, feature


def _close(a, b, what):
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), f"{what}: max diff {(a - b).abs().max().item():.3g}"


@pytest.mark.parametrize(
    "n_mod,optimizer,extra",
    [
        (2, "adamw", {}),
        (2, "adam", {"scheduler": "cosine"}),
        (2, "sgd", {"scheduler": "plateau"}),
        (3, "adamw", {}),
        (3, "sgd", {"ema_update": "before_step"}),
        (2, "adam", {"use_cross_attn": False}),
        (1, "adamw", {}),
        (2, "adamw", {"detach_feature_graph": True}),
        (3, "adam", {"smooth_degree_clamp": False, "ema_update": "before_step"}),
    ],
)
def test_sparse_model_equals_dense_formulation(n_mod, optimizer, extra):
    config = _config(n_mod, optimizer, **extra)
    sparse, dense, feature = _pair(n_mod, config)
    for step in range(STEPS):
        torch.manual_seed(1000 + step)  # the same DGI shuffle on both sides
        got = sparse.step()
        torch.manual_seed(1000 + step)
        want = dense.step()
        for name in want:
            assert got[name] == pytest.approx(want[name], rel=1e-6, abs=1e-8), f"step {step}: {name}"
    sparse_mod, sparse_fused = sparse.embeddings()
    dense_mod, dense_fused = dense.embeddings()
    _close(sparse_fused, dense_fused, "fused embedding")
    for a, b in zip(sparse_mod, dense_mod):
        _close(a, b, "modality embedding")
    for m, graph in enumerate(sparse.graphs):
        support = torch.zeros(50, 50, dtype=torch.bool)
        support[graph.rows, graph.cols] = True
        dense_p = dense.P[m].detach()
        assert torch.all(dense_p[~support] == 0), "an off-support entry of the dense P left 0"
        _close(graph.values.detach(), dense_p[graph.rows, graph.cols], "P on the support")
        _close(graph.current, dense.current[m][graph.rows, graph.cols], "current feature graph F")
        _close(graph.target, dense.target[m][graph.rows, graph.cols], "EMA target T")
        assert not torch.equal(graph.values.detach(), feature[m].coalesce().values()), "P never moved"


@pytest.mark.parametrize("backend", ["flash", "tensor"])
def test_training_with_attention_dropout_is_the_same_through_every_attention_backend(backend, monkeypatch):
    """Dropout on (masks from the seed): the flash and tensor backends train as the compiled one, to 1e-5."""
    attention_module = importlib.import_module("spamo.model.attention")
    if attention_kernel.load() is None or (backend == "flash" and not _compat.flash_attention_cpu_available()):
        pytest.skip("backend unavailable here")
    runs = []
    for name in ("compiled", backend):
        monkeypatch.setattr(attention_module, "default_backend", lambda *sizes, name=name: name)
        config = _config(2, "adamw", dropout=0.2, epochs=8)
        features, spatial, feature, _ = planted_problem(50, [12, 8], seed=3, knn_k=6)
        torch.manual_seed(0)
        trainer = Trainer(features, spatial, feature, config)
        losses = []
        for step in range(8):
            torch.manual_seed(2000 + step)
            losses.append(trainer.step()["total"])
        runs.append((losses, trainer.embeddings()[1]))
    assert runs[1][0] == pytest.approx(runs[0][0], rel=1e-5)
    _close(runs[1][1], runs[0][1], "fused embedding")
