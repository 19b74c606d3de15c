"""SGD with heavy-ball momentum, the update of torch.optim's single-tensor path (dampening 0, not Nesterov):

    g <- g + wd * theta
    b <- g at the first step, else mu * b + g
    theta <- theta - lr * b
"""

from __future__ import annotations

import torch

from spamo.optim.base import Optimizer


class SGD(Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    def update(self, params, grads, states, group) -> None:
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        if decay != 0:
            grads = torch._foreach_add(grads, params, alpha=decay)
        if momentum != 0:
            fresh = [s.get("momentum_buffer") is None for s in states]
            kept = [s["momentum_buffer"] for s, new in zip(states, fresh) if not new]
            if kept:
                torch._foreach_mul_(kept, momentum)
                torch._foreach_add_(kept, [g for g, new in zip(grads, fresh) if not new])
            for state, grad, new in zip(states, grads, fresh):
                if new:
                    state["momentum_buffer"] = grad.detach().clone()
            grads = [s["momentum_buffer"] for s in states]
        torch._foreach_add_(params, grads, alpha=-lr)
