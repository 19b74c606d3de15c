"""Unit tests of the SPAMO network parts: feature graph, fusion for any M (attention: test_attention.py)."""

from __future__ import annotations

import pytest
import torch

from model_problems import planted_problem
from spamo.config import SpamoConfig
from spamo.model import LearnableFeatureGraph, SpamoModule


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _feature_graph(n=40, seed=0):
    _, _, feature, _ = planted_problem(n, [6], seed=seed, knn_k=5)
    return feature[0]


def test_learnable_feature_graph_refined_values_match_dense_formula():
    graph = _feature_graph()
    learnable = LearnableFeatureGraph(graph.double())
    with torch.no_grad():
        learnable.values.add_(torch.randn_like(learnable.values) * 0.1)  # break the symmetry of P
    dense_p = torch.sparse_coo_tensor(torch.stack([learnable.rows, learnable.cols]), learnable.values.detach(),
                                      (40, 40)).to_dense()
    sym = torch.relu((dense_p + dense_p.t()) / 2) + torch.eye(40, dtype=torch.float64)
    d = sym.sum(1).rsqrt()
    want = (d[:, None] * sym * d[None, :])[learnable.rows, learnable.cols]
    assert torch.allclose(learnable.refined_values(), want, atol=1e-12)


def test_learnable_feature_graph_refuses_asymmetric_support():
    idx = torch.tensor([[0, 0, 1, 2], [0, 1, 1, 2]])
    graph = torch.sparse_coo_tensor(idx, torch.ones(4), (3, 3)).coalesce()
    with pytest.raises(ValueError, match="not symmetric"):
        LearnableFeatureGraph(graph)


def test_ema_update_timings_differ():
    graph = _feature_graph().double()
    after, before = LearnableFeatureGraph(graph, 0.9, "after_step"), LearnableFeatureGraph(graph, 0.9, "before_step")
    refined_before = after.refined_values().detach()
    for g in (after, before):
        with torch.no_grad():
            g.values.mul_(1.5)
        g.update_after_step(refined_before)
    assert torch.equal(after.current, before.current)  # F is G(P) after the step either way
    assert not torch.allclose(after.target, before.target)
    expected = 0.9 * graph.coalesce().values() + 0.1 * refined_before
    assert torch.allclose(before.target, expected)


@pytest.mark.parametrize("dims,cross", [([7], True), ([7, 5], True), ([7, 5, 6], True), ([7, 5, 6, 4], True),
                                        ([7, 5, 6], False)])
def test_module_outputs_for_any_number_of_modalities(dims, cross):
    features, spatial, feature, _ = planted_problem(30, dims, seed=1, knn_k=4)
    config = SpamoConfig(data_type="Simulation", latent_dim=8, use_cross_attn=cross).resolve(len(dims), 30)
    model = SpamoModule(dims, config)
    out = model(features, spatial, feature)
    assert [e.shape for e in out["embeddings"]] == [(30, 8)] * len(dims)
    assert out["fused"].shape == (30, 8)
    assert [r.shape for r in out["reconstructions"]] == [(30, f) for f in dims]
    out["fused"].sum().backward()
    assert all(enc.weight1.grad is not None for enc in model.encoders)
    if len(dims) >= 2 and cross:
        assert model.fusion.cross[0].key.in_features == (len(dims) - 1) * 8


def test_learnable_feature_graph_accepts_csr_and_adds_a_missing_diagonal():
    graph = _feature_graph()
    from_csr = LearnableFeatureGraph(graph.to_sparse_csr())
    assert torch.equal(from_csr.current, graph.values())
    assert torch.allclose(from_csr.operator().to_dense(), graph.to_dense())
    idx = torch.tensor([[0, 1], [1, 0]])
    no_diagonal = torch.sparse_coo_tensor(idx, torch.ones(2), (3, 3)).coalesce()
    learnable = LearnableFeatureGraph(no_diagonal)
    assert int(learnable.is_diagonal.sum()) == 3
    assert torch.allclose(learnable.refined_values().sum(), torch.tensor(3.0))  # I + [[0,1],[1,0]] blocks normalised
