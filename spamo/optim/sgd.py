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

    def update(self, param: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        if decay != 0:
            grad = grad.add(param, alpha=decay)
        if momentum != 0:
            buffer = state.get("momentum_buffer")
            if buffer is None:
                buffer = state["momentum_buffer"] = grad.detach().clone()
            else:
                buffer.mul_(momentum).add_(grad)
            grad = buffer
        param.add_(grad, alpha=-lr)
