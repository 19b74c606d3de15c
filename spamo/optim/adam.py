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

    def update(self, params, grads, states, group) -> None:
        lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        for param, state in zip(params, states):
            if not state:
                state.update(step=0, exp_avg=torch.zeros_like(param), exp_avg_sq=torch.zeros_like(param))
            # torch keeps the step as a float tensor; a checkpoint written by torch.optim may hold one
            state["step"] = int(float(state["step"])) + 1
        if decay != 0:
            if self.decoupled_weight_decay:
                torch._foreach_mul_(params, 1 - lr * decay)
            else:
                grads = torch._foreach_add(grads, params, alpha=decay)
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        steps = [s["step"] for s in states]
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denoms, [(1 - beta2**t) ** 0.5 for t in steps])
        torch._foreach_add_(denoms, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denoms, [-(lr / (1 - beta1**t)) for t in steps])


class AdamW(Adam):
    decoupled_weight_decay = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
