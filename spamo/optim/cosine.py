"""Cosine annealing (Loshchilov & Hutter 2017) from the initial rate to `eta_min` over `t_max` epochs.

The closed form is lr_e = eta_min + (lr_0 - eta_min) (1 + cos(pi e / t_max)) / 2; like torch's
CosineAnnealingLR, each step applies it as a ratio to the current rate,

    lr_e = (1 + cos(pi e / t_max)) / (1 + cos(pi (e - 1) / t_max)) (lr_{e-1} - eta_min) + eta_min,

so the rates agree with torch's to the last bit. Steps past `t_max` do not occur in training (one step per epoch,
t_max = epochs); there the rate stays at `eta_min`.
"""

from __future__ import annotations

import math

from spamo.optim.base import Optimizer, Schedule


class CosineAnnealing(Schedule):
    def __init__(self, optimizer: Optimizer, t_max: int, eta_min: float = 0.0):
        super().__init__(optimizer)
        self.t_max, self.eta_min = int(t_max), float(eta_min)

    def step(self, loss: float | None = None) -> None:
        self.last_epoch += 1
        e, t = self.last_epoch, self.t_max
        if e > t:
            self.lr = self.eta_min
            return
        self.lr = ((1 + math.cos(math.pi * e / t)) / (1 + math.cos(math.pi * (e - 1) / t))
                   * (self.lr - self.eta_min) + self.eta_min)
