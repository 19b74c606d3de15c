"""Adam and AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019), the update of torch.optim's single-tensor path.

For a parameter theta with gradient g at step t (learning rate lr, betas (b1, b2), eps, weight decay wd):

    Adam:   g <- g + wd * theta                      (L2 penalty, coupled)
    AdamW:  theta <- theta * (1 - lr * wd)           (decoupled decay, before the moments)
    m <- m + (1 - b1) (g - m)                        (torch's lerp)
    v <- b2 v + (1 - b2) g^2
    theta <- theta - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

SPAMO's published settings use AdamW (docs/method.md section 5).
"""

from __future__ import annotations

import torch

from spamo.optim.base import Optimizer


class Adam(Optimizer):
    decoupled_weight_decay = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)

    def update(self, param: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        if not state:
            state.update(step=0, exp_avg=torch.zeros_like(param), exp_avg_sq=torch.zeros_like(param))
        lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        state["step"] = step = int(float(state["step"])) + 1  # torch keeps a float tensor; a checkpoint may hold one
        if decay != 0:
            if self.decoupled_weight_decay:
                param.mul_(1 - lr * decay)
            else:
                grad = grad.add(param, alpha=decay)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = lr / (1 - beta1**step)
        denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)


class AdamW(Adam):
    decoupled_weight_decay = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
