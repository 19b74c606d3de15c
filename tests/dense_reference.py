"""A dense N x N formulation of SPAMO, written the way the reference release stores it.

Dense adjacency matrices, a dense learnable P (N x N) per modality, explicit softmax(Q K^T / sqrt(d)) V attention and
dense G(P) = normalise(relu((P + P^T)/2) + I). As the reference's trainers: the encoders use F_0 in the first step and
then G(P) computed after each step without detaching it (`detach_feature_graph=False`), and the spatial-smoothness
neighbour mean divides by the row sum clamped at 1 (`smooth_degree_clamp`). It takes its initial weights from a sparse `SpamoModule` (same
parameter names) so the equivalence test can run both side by side; `benchmarks/bench_train.py` times it too.
Small N only: everything here is O(N^2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# the reference trains with torch.optim's own optimisers and schedules, so that the comparison checks spamo.optim too
TORCH_OPTIMIZERS = {
    "adamw": lambda params, c: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay),
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay),
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=0.9, weight_decay=c.weight_decay),
}
TORCH_SCHEDULERS = {
    "none": lambda optimizer, c: None,
    "cosine": lambda optimizer, c: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=c.epochs,
                                                                              eta_min=c.lr / 100),
    "plateau": lambda optimizer, c: torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5,
                                                                               patience=5),
}


def to_dense(graph: torch.Tensor) -> torch.Tensor:
    return graph.to_dense()


def normalise_dense(p: torch.Tensor) -> torch.Tensor:
    """D^-1/2 (relu((P + P^T)/2) + I) D^-1/2 on a dense matrix."""
    sym = torch.relu(0.5 * (p + p.t())) + torch.eye(p.shape[0], dtype=p.dtype, device=p.device)
    inv_sqrt = sym.sum(dim=1).rsqrt()
    return inv_sqrt[:, None] * sym * inv_sqrt[None, :]


class DenseSpamo:
    """The same model and training step as `spamo.training.Trainer`, with every graph and P dense."""

    def __init__(self, model, features, spatial_graphs, feature_graphs, config):
        self.config = config
        self.features = features
        self.n_mod = len(features)
        self.params = {name: p.detach().clone().requires_grad_(True) for name, p in model.named_parameters()}
        self.spatial = [to_dense(g) for g in spatial_graphs]
        self.P = [to_dense(g).clone().requires_grad_(True) for g in feature_graphs]
        self.current = [to_dense(g).clone() for g in feature_graphs]
        self.target = [to_dense(g).clone() for g in feature_graphs]
        self.optimizer = TORCH_OPTIMIZERS[config.optimizer](list(self.params.values()) + self.P, config)
        self.scheduler = TORCH_SCHEDULERS[config.scheduler](self.optimizer, config)
        self.training = True

    # -- layers -------------------------------------------------------------------------------------------
    def _linear(self, x, name):
        return x @ self.params[f"{name}.weight"].t() + self.params[f"{name}.bias"]

    def _norm(self, x, name):
        return F.layer_norm(x, x.shape[-1:], self.params[f"{name}.weight"], self.params[f"{name}.bias"])

    def _drop(self, x):
        return F.dropout(x, self.config.dropout, self.training)

    def encode(self, i):
        p = self.params
        w = torch.sigmoid(p[f"encoders.{i}.alpha"])
        blended = w * self.spatial[i] + (1 - w) * self.current[i]  # the reference builds the N x N blend
        hidden = torch.relu(blended @ (self._drop(self.features[i]) @ p[f"encoders.{i}.weight1"]))
        latent = blended @ (hidden @ p[f"encoders.{i}.weight2"])
        return self._norm(latent, f"encoders.{i}.norm")

    def cross(self, i, embeddings):
        name = f"fusion.cross.{i}"
        context = torch.cat([e for j, e in enumerate(embeddings) if j != i], dim=1)
        q = self._linear(embeddings[i], f"{name}.query")
        k, v = self._linear(context, f"{name}.key"), self._linear(context, f"{name}.value")
        weights = torch.softmax(q @ k.t() / math.sqrt(q.shape[1]), dim=1)
        return self._linear(self._drop(weights) @ v, f"{name}.out")

    def fuse(self, embeddings):
        if self.n_mod == 1 or not self.config.use_cross_attn:
            return self._norm(self._linear(torch.cat(embeddings, 1), "fusion.project.0"), "fusion.project.1")
        attended = [
            self._norm(e + 0.2 * self.cross(i, embeddings), f"fusion.cross_norms.{i}") for i, e in enumerate(embeddings)
        ]
        combined = torch.cat(embeddings + attended, dim=1)
        gate = torch.sigmoid(self._linear(combined, "fusion.gate"))
        hidden = self._drop(F.gelu(self._linear(combined, "fusion.mlp.0")))
        mixed = self._norm(self._linear(hidden, "fusion.mlp.3"), "fusion.mlp.4")
        return gate * mixed + (1 - gate) * torch.stack(embeddings).mean(0)

    def forward(self):
        embeddings = [self.encode(i) for i in range(self.n_mod)]
        fused = self.fuse(embeddings)
        recon = [self.spatial[i] @ (self._drop(fused) @ self.params[f"decoders.{i}.weight"]) for i in range(self.n_mod)]
        return embeddings, fused, recon

    # -- losses -------------------------------------------------------------------------------------------
    def losses(self, fused, recon, refined):
        cfg, p = self.config, self.params
        terms = {f"recon_{i}": F.mse_loss(recon[i], self.features[i]) for i in range(self.n_mod)}
        weighted = sum(w * t for w, t in zip(cfg.modality_weights, terms.values()))
        terms["graph"] = torch.stack([torch.linalg.matrix_norm(g - t) for g, t in zip(refined, self.target)]).mean()
        unit = F.normalize(fused, dim=1)
        s = self.spatial[0]
        degree = s.sum(1, keepdim=True)
        if cfg.smooth_degree_clamp:
            degree = degree.clamp(min=1)
        terms["spatial"] = 1 - (unit * ((s @ unit) / degree)).sum(1).mean()
        perm = torch.randperm(fused.shape[0], device=fused.device)
        summary = torch.sigmoid(self._linear(fused.mean(0, keepdim=True), "dgi.summary"))
        bil = p["dgi.discriminator.weight"][0]

        def score(rows):
            return (rows @ bil * summary).sum(1) + p["dgi.discriminator.bias"]

        logits = torch.cat([score(fused), score(fused[perm])])
        labels = torch.cat([torch.ones(fused.shape[0]), torch.zeros(fused.shape[0])]).to(fused)
        terms["dgi"] = F.binary_cross_entropy_with_logits(logits, labels)
        terms["total"] = weighted + cfg.graph_weight * terms["graph"] + cfg.spatial_weight * terms["spatial"] \
            + cfg.dgi_weight * terms["dgi"]
        return terms

    def step(self):
        self.training = True
        self.optimizer.zero_grad(set_to_none=True)
        _, fused, recon = self.forward()
        refined = [normalise_dense(p) for p in self.P]
        terms = self.losses(fused, recon, refined)
        terms["total"].backward()
        self.optimizer.step()
        for m, p in enumerate(self.P):
            # As the reference: F <- G(P) kept in the autograd graph (unless detached), so the next forward's
            # losses reach P through the encoders; the EMA target is always detached.
            after = normalise_dense(p)
            self.current[m] = after.detach() if self.config.detach_feature_graph else after
            with torch.no_grad():
                source = refined[m].detach() if self.config.ema_update == "before_step" else after.detach()
                self.target[m] = self.config.ema_beta * self.target[m] + (1 - self.config.ema_beta) * source
        values = {k: float(v.detach()) for k, v in terms.items()}
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(values["total"])
        elif self.scheduler is not None:
            self.scheduler.step()
        return values

    @torch.no_grad()
    def embeddings(self):
        self.training = False
        embeddings = [self.encode(i) for i in range(self.n_mod)]
        fused = self.fuse(embeddings)
        return [F.normalize(e, dim=1) for e in embeddings], F.normalize(fused, dim=1)
