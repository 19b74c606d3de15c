"""Halve the rate when the loss stops falling (torch's ReduceLROnPlateau with mode "min", relative threshold).

An epoch is an improvement when loss < best * (1 - threshold); after more than `patience` epochs without one, the
rate becomes max(lr * factor, min_lr) (unless that changes it by no more than `eps`) and the count restarts.
"""

from __future__ import annotations

import math

from spamo.optim.base import Optimizer, Schedule


class ReduceOnPlateau(Schedule):
    state_keys = ("last_epoch", "best", "num_bad_epochs")

    def __init__(self, optimizer: Optimizer, factor: float = 0.5, patience: int = 5, threshold: float = 1e-4,
                 min_lr: float = 0.0, eps: float = 1e-8):
        super().__init__(optimizer)
        if not 0 < factor < 1:
            raise ValueError(f"the factor must be in (0, 1), got {factor}")
        self.factor, self.patience, self.threshold, self.min_lr, self.eps = factor, patience, threshold, min_lr, eps
        self.best = math.inf
        self.num_bad_epochs = 0

    def step(self, loss: float | None = None) -> None:
        if loss is None:
            raise ValueError("ReduceOnPlateau.step needs the epoch's loss")
        current = float(loss)
        self.last_epoch += 1
        if current < self.best * (1.0 - self.threshold):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.num_bad_epochs > self.patience:
            new_lr = max(self.lr * self.factor, self.min_lr)
            if self.lr - new_lr > self.eps:
                self.lr = new_lr
            self.num_bad_epochs = 0
