"""Unit tests of the SPAMO network parts: feature graph, fusion for any M (attention: test_attention.py)."""

from __future__ import annotations

import math

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


# ------------------------------------------------------------------------------------------------------------------
# The reference's behaviours (docs/method.md section 8), each against a direct computation


def test_spatial_smoothness_divides_by_row_sum_clamped_at_one():
    from spamo.model.losses import spatial_smoothness_loss

    # a normalised graph (row sums 1/3 ... above 1) plus one row whose sum is below 1 by construction
    _, spatial, _, _ = planted_problem(40, [5], seed=2, spatial_k=3)
    s = spatial[0].double().to_dense()
    rowsum = s.sum(1, keepdim=True)
    assert (rowsum < 1).any() and (rowsum > 1).any(), "the graph must have row sums on both sides of 1"
    fused = torch.randn(40, 6, dtype=torch.float64)
    u = fused / fused.norm(dim=1, keepdim=True)
    clamped = 1 - (u * ((s @ u) / torch.maximum(rowsum, torch.ones_like(rowsum)))).sum(1).mean()
    plain = 1 - (u * ((s @ u) / rowsum)).sum(1).mean()
    graph = spatial[0].double()
    assert spatial_smoothness_loss(fused, graph).item() == pytest.approx(clamped.item(), abs=1e-12)
    assert spatial_smoothness_loss(fused, graph, clamp_degree=True).item() == pytest.approx(clamped.item(), abs=1e-12)
    assert spatial_smoothness_loss(fused, graph, clamp_degree=False).item() == pytest.approx(plain.item(), abs=1e-12)
    assert abs(clamped.item() - plain.item()) > 1e-3


def test_dgi_discriminator_starts_from_the_default_bilinear_initialisation():
    from spamo.model.losses import DGIHead

    d = 64
    bound = 1 / math.sqrt(d)
    torch.manual_seed(0)
    head = DGIHead(d)  # default: "torch"
    weight, bias = head.discriminator.weight.detach(), head.discriminator.bias
    assert weight.shape == (1, d, d) and bias is not None and bias.shape == (1,)
    assert weight.abs().max() <= bound and abs(bias.item()) <= bound and bias.item() != 0.0
    # uniform on [-b, b]: mean 0, variance b^2 / 3, and it reaches close to both ends (4096 draws)
    assert abs(weight.mean().item()) < 0.05 * bound
    assert weight.var().item() == pytest.approx(bound**2 / 3, rel=0.05)
    assert weight.max().item() > 0.99 * bound and weight.min().item() < -0.99 * bound
    histogram = torch.histc(weight, bins=8, min=-bound, max=bound)
    assert (histogram / weight.numel() - 1 / 8).abs().max() < 0.03
    # the same draws as nn.Bilinear itself under the same seed
    torch.manual_seed(0)
    torch.nn.Linear(d, d)
    reference = torch.nn.Bilinear(d, d, 1)
    assert torch.equal(reference.weight, head.discriminator.weight) and torch.equal(reference.bias, bias)
    xavier = DGIHead(d, "xavier")
    assert xavier.discriminator.bias.item() == 0.0
    assert xavier.discriminator.weight.abs().max() <= math.sqrt(6 / (d * d + d))
    with pytest.raises(ValueError, match="init"):
        DGIHead(d, "normal")


def test_edge_valued_graph_product_gradients_match_dense(monkeypatch):
    from spamo.model import sparse
    from spamo.model.sparse import EdgeValuedGraph, graph_matmul

    monkeypatch.setattr(sparse, "_EDGE_BLOCK_ELEMENTS", 64)  # several edge blocks even on a small graph
    graph = LearnableFeatureGraph(_feature_graph().double())
    values = graph.refined_values().detach().requires_grad_(True)
    x = torch.randn(40, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(40, 5, dtype=torch.float64)
    y = graph_matmul(EdgeValuedGraph(graph.rows, graph.cols, graph.crow, values, graph.n), x)
    (y * weights).sum().backward()
    dense_values = values.detach().clone().requires_grad_(True)
    dense_x = x.detach().clone().requires_grad_(True)
    dense = torch.zeros(40, 40, dtype=torch.float64).index_put((graph.rows, graph.cols), dense_values)
    want = dense @ dense_x
    (want * weights).sum().backward()
    assert torch.allclose(y, want, atol=1e-12)
    assert torch.allclose(x.grad, dense_x.grad, atol=1e-12)
    assert torch.allclose(values.grad, dense_values.grad, atol=1e-12)


def _recon_only_gradient(detach: bool):
    """P's gradient from the reconstruction loss alone, in the second step (the first uses the constant F_0)."""
    from dense_reference import DenseSpamo, normalise_dense
    from spamo.training import Trainer

    features, spatial, feature, _ = planted_problem(40, [7, 5], seed=4, knn_k=5)
    features = [f.double() for f in features]
    spatial = [g.double() for g in spatial]
    feature = [g.double() for g in feature]
    config = SpamoConfig(data_type="Simulation", dropout=0.0, latent_dim=8, lr=0.01, epochs=2, seed=3,
                         detach_feature_graph=detach).resolve(2, 40)
    trainer = Trainer(features, spatial, feature, config)
    dense = DenseSpamo(trainer.model, features, spatial, feature, config)
    torch.manual_seed(0)
    trainer.step()
    torch.manual_seed(0)
    dense.step()
    # sparse: the trainer's own encoder graphs; a loss of the reconstructions only
    trainer.optimizer.zero_grad(set_to_none=True)
    refined = [g.refined_values() for g in trainer.graphs]
    outputs = trainer.model(trainer.features, trainer.spatial, [g.encoder_graph(r) for g, r in zip(trainer.graphs, refined)])
    sum(torch.nn.functional.mse_loss(r, x) for r, x in zip(outputs["reconstructions"], trainer.features)).backward()
    # dense, written out: the encoders multiply by the N x N G(P) (detached or not), P dense N x N
    dense.optimizer.zero_grad(set_to_none=True)
    _, _, recon = dense.forward()
    sum(torch.nn.functional.mse_loss(r, x) for r, x in zip(recon, features)).backward()
    got = [g.values.grad for g in trainer.graphs]
    want = [None if p.grad is None else p.grad[g.rows, g.cols] for p, g in zip(dense.P, trainer.graphs)]
    current_is_g_of_p = all(torch.allclose(c, normalise_dense(p)) for c, p in zip(dense.current, dense.P))
    return got, want, current_is_g_of_p


def test_reconstruction_loss_reaches_p_unless_the_feature_graph_is_detached():
    got, want, current_is_g_of_p = _recon_only_gradient(detach=False)
    assert current_is_g_of_p
    for g, w in zip(got, want):
        assert g is not None and w is not None and g.abs().max() > 1e-6
        assert torch.allclose(g, w, atol=1e-10, rtol=1e-7), (g - w).abs().max()
    detached, want_detached, _ = _recon_only_gradient(detach=True)
    for g, w in zip(detached, want_detached):
        assert (g is None or not g.any()) and (w is None or not w.any())


def test_encoders_use_f0_in_the_first_step_and_g_of_p_with_gradient_after():
    graph = LearnableFeatureGraph(_feature_graph().double())
    refined = graph.refined_values()
    first = graph.encoder_graph(refined)
    assert first.layout == torch.sparse_csr and torch.equal(first.values(), graph.current)
    assert not torch.allclose(refined, graph.current)  # G(P_0) is not F_0: the first step must use F_0
    graph.update_after_step(refined.detach())
    later = graph.encoder_graph(graph.refined_values())
    assert later.values.requires_grad and torch.allclose(later.values, graph.current)
    detached = LearnableFeatureGraph(_feature_graph().double(), detach=True)
    detached.update_after_step()
    assert not detached.encoder_graph(detached.refined_values()).requires_grad
