"""Optimisers and learning-rate schedules of the training plan, by the names the config uses
(`spamo.choices.OPTIMIZERS`, `spamo.choices.SCHEDULERS`), built from a resolved config.

They run torch.optim's updates without importing torch's compiler stack (`spamo.optim.base` says why); each
update and schedule has its own module with its formula.
"""

from __future__ import annotations

from typing import Callable

from spamo.optim.adam import Adam, AdamW
from spamo.optim.base import Optimizer, Schedule
from spamo.optim.cosine import CosineAnnealing
from spamo.optim.plateau import ReduceOnPlateau
from spamo.optim.sgd import SGD


def _adamw(params, config) -> Optimizer:
    return AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _adam(params, config) -> Optimizer:
    return Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def _sgd(params, config) -> Optimizer:
    return SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)


OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {"adamw": _adamw, "adam": _adam, "sgd": _sgd}


def _no_schedule(optimizer, config) -> None:
    return None


def _cosine(optimizer, config) -> Schedule:
    return CosineAnnealing(optimizer, t_max=config.epochs, eta_min=config.lr / 100)


def _plateau(optimizer, config) -> Schedule:
    return ReduceOnPlateau(optimizer, factor=0.5, patience=5)


SCHEDULERS: dict[str, Callable[..., Schedule | None]] = {"none": _no_schedule, "cosine": _cosine,
                                                          "plateau": _plateau}

__all__ = ["Adam", "AdamW", "CosineAnnealing", "OPTIMIZERS", "Optimizer", "ReduceOnPlateau", "SCHEDULERS", "SGD",
           "Schedule"]
