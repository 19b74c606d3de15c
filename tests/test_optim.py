"""spamo.optim runs torch.optim's updates and schedules: the same parameters and rates, bit for bit, on CPU."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import pytest
import torch

from spamo.optim import SGD, Adam, AdamW, CosineAnnealing, ReduceOnPlateau

CASES = [
    (Adam, torch.optim.Adam, {"lr": 3e-3, "weight_decay": 0.0}),
    (Adam, torch.optim.Adam, {"lr": 3e-3, "weight_decay": 1e-2}),
    (AdamW, torch.optim.AdamW, {"lr": 3e-3, "weight_decay": 5e-2}),
    (SGD, torch.optim.SGD, {"lr": 1e-2, "momentum": 0.9, "weight_decay": 1e-3}),
    (SGD, torch.optim.SGD, {"lr": 1e-2}),
]


def _problem(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 7, generator=generator)
    y = torch.randn(64, 3, generator=generator)
    params = [torch.randn(7, 5, generator=generator).requires_grad_(), torch.zeros(5).requires_grad_(),
              torch.randn(5, 3, generator=generator).requires_grad_()]
    return x, y, params


def _loss(x, y, params):
    return ((torch.tanh(x @ params[0] + params[1]) @ params[2] - y) ** 2).mean()


def _train(optimizer, x, y, params, steps: int, schedule=None):
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = _loss(x, y, params)
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule(float(loss))
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("ours, theirs, settings", CASES, ids=lambda c: getattr(c, "__name__", None))
def test_updates_equal_torch_bit_for_bit(ours, theirs, settings):
    x, y, params = _problem()
    twin = [p.detach().clone().requires_grad_() for p in params]
    mine = _train(ours(params, **settings), x, y, params, 40)
    reference = _train(theirs(twin, foreach=False, **settings), x, y, twin, 40)
    assert all(torch.equal(a, b) for a, b in zip(mine, reference))
    assert not torch.equal(mine[0], _problem()[2][0])  # it moved


@pytest.mark.parametrize("ours, theirs, settings", CASES[1:4], ids=lambda c: getattr(c, "__name__", None))
def test_a_state_dict_continues_exactly_and_torch_state_dicts_load(ours, theirs, settings):
    x, y, params = _problem(1)
    straight = [p.detach().clone().requires_grad_() for p in params]
    expected = _train(ours(straight, **settings), x, y, straight, 30)

    first = ours(params, **settings)
    _train(first, x, y, params, 12)
    saved = copy.deepcopy(first.state_dict())
    resumed = [p.detach().clone().requires_grad_() for p in params]
    second = ours(resumed, **settings)
    second.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(_train(second, x, y, resumed, 18), expected))

    # a checkpoint written with torch.optim (older spamo) continues the same way
    _, _, params = _problem(1)
    torch_first = theirs(params, foreach=False, **settings)
    _train(torch_first, x, y, params, 12)
    resumed = [p.detach().clone().requires_grad_() for p in params]
    second = ours(resumed, **settings)
    second.load_state_dict(copy.deepcopy(torch_first.state_dict()))
    assert all(torch.equal(a, b) for a, b in zip(_train(second, x, y, resumed, 18), expected))


def test_a_state_dict_for_other_parameters_is_refused():
    _, _, params = _problem()
    with pytest.raises(ValueError, match="3 parameters"):
        Adam(params[:2]).load_state_dict(Adam(params).state_dict())


def _rates(schedule_step, optimizer, losses):
    rates = []
    for loss in losses:
        schedule_step(loss)
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def test_cosine_rates_equal_torch_to_the_last_bit():
    _, _, params = _problem()
    ours = Adam(params, lr=2e-3)
    theirs = torch.optim.Adam([p.detach().clone() for p in params], lr=2e-3)
    mine = _rates(CosineAnnealing(ours, t_max=37, eta_min=2e-5).step, ours, [0.0] * 37)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(theirs, T_max=37, eta_min=2e-5)
    theirs.step()  # torch warns of a schedule stepped before its optimiser; no parameter has a gradient
    reference = _rates(lambda loss: schedule.step(), theirs, [0.0] * 37)
    assert mine == reference and mine[-1] == pytest.approx(2e-5)
    assert mine[17] == pytest.approx(2e-5 + (2e-3 - 2e-5) * (1 + math.cos(math.pi * 18 / 37)) / 2)


def test_plateau_rates_equal_torch_and_resume_from_a_state_dict():
    losses = [1.0, 0.9, 0.95, 0.9, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6,
              0.49999, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6] * 2
    _, _, params = _problem()
    ours = Adam(params, lr=1e-2)
    plateau = ReduceOnPlateau(ours, factor=0.5, patience=5)
    mine = _rates(plateau.step, ours, losses)
    theirs = torch.optim.Adam([p.detach().clone() for p in params], lr=1e-2)
    schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(theirs, mode="min", factor=0.5, patience=5)
    assert mine == _rates(schedule.step, theirs, losses) and min(mine) < 1e-2 / 4

    # stop after 20 epochs, resume from state dicts (ours, and torch's scheduler's): the same rates follow
    for source in ("ours", "torch"):
        first = Adam(params, lr=1e-2)
        if source == "ours":
            head = ReduceOnPlateau(first, factor=0.5, patience=5)
            _rates(head.step, first, losses[:20])
        else:
            first = torch.optim.Adam([p.detach().clone() for p in params], lr=1e-2)
            head = torch.optim.lr_scheduler.ReduceLROnPlateau(first, mode="min", factor=0.5, patience=5)
            _rates(head.step, first, losses[:20])
        resumed = Adam(params, lr=1e-2)
        resumed.param_groups[0]["lr"] = first.param_groups[0]["lr"]
        tail = ReduceOnPlateau(resumed, factor=0.5, patience=5)
        tail.load_state_dict(head.state_dict())
        assert _rates(tail.step, resumed, losses[20:]) == mine[20:], source


def test_training_imports_no_torch_compiler():
    """A whole 2-epoch training in a fresh interpreter leaves torch._dynamo and torch._inductor unimported (they
    are about two seconds of every run's fixed cost: spamo.optim, spamo._compat.set_deterministic_algorithms), and
    the deterministic flag is on during training and restored after it."""
    code = (
        "import sys, torch\n"
        "from spamo.config import SpamoConfig\n"
        "from spamo.training import Trainer, deterministic_algorithms\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x = [torch.randn(30, 6, generator=g), torch.randn(30, 4, generator=g)]\n"
        "eye = torch.eye(30).to_sparse()\n"
        "config = SpamoConfig(data_type='Simulation', epochs=2, latent_dim=8, scheduler='cosine').resolve(2, 30)\n"
        "with deterministic_algorithms():\n"
        "    assert torch.are_deterministic_algorithms_enabled()\n"
        "    trainer = Trainer(x, [eye, eye], [eye, eye], config)\n"
        "    trainer.step(); trainer.step()\n"
        "assert not torch.are_deterministic_algorithms_enabled()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('torch._dynamo', 'torch._inductor'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
