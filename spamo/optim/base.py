"""What the training plan needs of an optimiser and of a learning-rate schedule, without torch.optim.

torch.optim's optimisers import torch's compiler stack (torch._dynamo, sympy: about two seconds of imports) the
first time one is built or stepped, for a guard that only matters under torch.compile, which spamo never applies
to its optimiser. These classes run the same updates (`spamo.optim.adam`, `spamo.optim.sgd`, the same tensor
operations in the same order as torch.optim's single-tensor path, so the parameters agree bit for bit on CPU:
tests/test_optim.py) and keep torch's state-dict layout, so a checkpoint written by either loads into the other.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class Optimizer:
    """One parameter group (torch's layout: `param_groups[0]` holds "lr" and the hyperparameters), per-parameter
    state, `zero_grad`, `step` and state dicts; subclasses give `update(params, grads, states, group)`, which
    updates every parameter that has a gradient at once with torch's `_foreach_` operations (one kernel launch per
    operation on a GPU, as torch.optim's default there; on a CPU they run the single-tensor operations)."""

    def __init__(self, params: Iterable[torch.Tensor], **hyperparameters):
        self.params = list(params)
        if not self.params:
            raise ValueError("an optimiser needs at least one parameter")
        self.defaults = dict(hyperparameters)
        self.param_groups = [dict(hyperparameters, params=self.params)]
        self.state: list[dict] = [{} for _ in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.params:
            if param.grad is None:
                continue
            if set_to_none:
                param.grad = None
            else:
                param.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        ready = [(param, state) for param, state in zip(self.params, self.state) if param.grad is not None]
        if ready:
            self.update([p for p, _ in ready], [p.grad for p, _ in ready], [s for _, s in ready],
                        self.param_groups[0])

    def update(self, params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict], group: dict) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """torch's layout: {"state": {index: {...}}, "param_groups": [{hyperparameters, "params": [indices]}]}."""
        group = {key: value for key, value in self.param_groups[0].items() if key != "params"}
        group["params"] = list(range(len(self.params)))
        return {"state": {i: dict(s) for i, s in enumerate(self.state) if s}, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError(f"the state is for {sum(len(g['params']) for g in groups)} parameters in {len(groups)} "
                             f"group(s), this optimiser has {len(self.params)} in one")
        self.param_groups[0].update({key: value for key, value in groups[0].items() if key != "params"})
        saved = state_dict["state"]
        for i, param in enumerate(self.params):
            entry = saved.get(i, {})
            self.state[i] = {key: (value.detach().to(param.device, param.dtype).clone()
                                   if isinstance(value, torch.Tensor) and key != "step" else value)
                             for key, value in entry.items()}


class Schedule:
    """A learning-rate schedule over an optimiser's `param_groups[0]["lr"]`, stepped once per epoch with that
    epoch's total loss (`step(loss)`; schedules that do not watch the loss ignore it)."""

    state_keys: tuple[str, ...] = ("last_epoch",)

    def __init__(self, optimizer: Optimizer):
        self.optimizer = optimizer
        self.last_epoch = 0

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        self.optimizer.param_groups[0]["lr"] = value

    def step(self, loss: float | None = None) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {key: getattr(self, key) for key in self.state_keys}

    def load_state_dict(self, state_dict: dict) -> None:
        """Also takes the state dict of torch's scheduler of the same kind (the keys are torch's names)."""
        for key in self.state_keys:
            setattr(self, key, state_dict[key])
