"""The training plan of SPAMO (docs/method.md section 5), separate from the network.

`train(prepared, graphs, config)` seeds everything, builds `SpamoModule` and one `LearnableFeatureGraph` per
modality, runs full-batch epochs (one forward, one optimiser step each), then one forward in evaluation mode and
returns L2-normalised embeddings. `Trainer` is the same plan one step at a time (tests and tuners drive it).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from spamo._compat import set_deterministic_algorithms
from spamo.errors import SpamoInputError
from spamo.model.attention import PRECISIONS
from spamo.model.feature_graph import LearnableFeatureGraph
from spamo.model.losses import (
    dgi_loss,
    feature_graph_loss,
    reconstruction_loss,
    spatial_smoothness_loss,
)
from spamo.model.module import SpamoModule
from spamo.model.sparse import to_operator
from spamo.optim import OPTIMIZERS, SCHEDULERS


@dataclass
class TrainResult:
    """Embeddings after training (L2-normalised per spot) and how the run went."""

    fused: np.ndarray  # N x d
    per_modality: list[np.ndarray]  # M arrays, N x d
    history: list[dict] = field(default_factory=list)  # one dict of loss terms per epoch
    epoch_seconds: float = float("nan")  # mean wall time of one training epoch
    train_seconds: float = float("nan")  # wall time of the whole call
    device: str = "cpu"
    stopped_early: bool = False  # the callback asked to stop
    start_epoch: int = 0  # the epoch training continued from (0 unless started from a checkpoint)


# ---------------------------------------------------------------------------------------------- run setup


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def random_states() -> dict:
    """The states of every generator training draws from (Python, NumPy, torch CPU and CUDA)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_random_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@contextlib.contextmanager
def deterministic_algorithms():
    """Ask torch for deterministic kernels (warning where none exists) for the duration of a run."""
    before = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    set_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        set_deterministic_algorithms(before, warn_only=before_warn)


def resolve_device(name: str) -> torch.device:
    """`cpu`, `cuda` (or `cuda:i`) or `auto` (CUDA when present)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SpamoInputError("device", f"'{name}' requested but CUDA is not available")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise SpamoInputError("device", f"'{name}' is not one of cpu, cuda, auto")


def check_device(config) -> torch.device:
    """The run's device (`resolve_device`), refusing what it cannot run: a CUDA device that is not there, and an
    attention precision other than float32 off CUDA (spamo.model.attention's docstring says why). `fit` and
    `spamo run` call it before any data is read; `train` calls it again."""
    device = resolve_device(config.device)
    check_precision(config.attention_precision, device.type,
                    f"this run's device is {device} (--device {config.device})")
    return device


def check_precision(precision: str, device_type: str, why: str) -> None:
    """Refuse an attention precision other than float32 off CUDA; `why` says which device that is and why."""
    if PRECISIONS[precision] is not None and device_type != "cuda":
        raise SpamoInputError("attention_precision", f"{precision} runs on a CUDA device only, and {why}; on CPU "
                                                     "the attention is exact float32")


# ---------------------------------------------------------------------------------------------- trainer


class Trainer:
    """One SPAMO model, its learnable feature graphs, optimiser and scheduler; `step()` runs one epoch."""

    def __init__(
        self,
        features: list[torch.Tensor],
        spatial_graphs: list[torch.Tensor],
        feature_graphs: list[torch.Tensor],
        config,
        device: torch.device | str = "cpu",
        modality_names: list[str] | None = None,
    ):
        n_mod = len(features)
        if not (len(spatial_graphs) == len(feature_graphs) == n_mod):
            raise ValueError("one feature matrix, spatial graph and feature graph per modality are needed")
        self.config = config
        self.device = torch.device(device)
        self.modality_names = list(modality_names or [str(i) for i in range(n_mod)])
        self.weights = tuple(float(w) for w in config.modality_weights)
        self.features = [f.to(self.device) for f in features]
        dtype = self.features[0].dtype
        self.spatial = [to_operator(g.to(self.device, dtype)) for g in spatial_graphs]
        seed_everything(config.seed)
        self.model = SpamoModule([f.shape[1] for f in self.features], config).to(self.device, dtype)
        self.graphs = torch.nn.ModuleList(
            LearnableFeatureGraph(g.to(self.device, dtype), config.ema_beta, config.ema_update, config.detach_feature_graph)
            for g in feature_graphs
        )
        params = list(self.model.parameters()) + [g.values for g in self.graphs]
        self.optimizer = OPTIMIZERS[config.optimizer](params, config)
        self.scheduler = SCHEDULERS[config.scheduler](self.optimizer, config)
        self.epoch = 0

    def loss_terms(self, outputs: dict, refined: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every loss term of one forward pass, by name, plus their weighted sum `total`."""
        cfg = self.config
        terms = {
            f"recon_{name}": reconstruction_loss(x, r)
            for name, x, r in zip(self.modality_names, self.features, outputs["reconstructions"])
        }
        total = sum(w * t for w, t in zip(self.weights, terms.values()))
        terms["graph"] = feature_graph_loss(refined, [g.target for g in self.graphs])
        terms["spatial"] = spatial_smoothness_loss(outputs["fused"], self.spatial[0], cfg.smooth_degree_clamp)
        terms["dgi"] = dgi_loss(outputs["fused"], self.model.dgi)
        terms["total"] = (
            total + cfg.graph_weight * terms["graph"] + cfg.spatial_weight * terms["spatial"]
            + cfg.dgi_weight * terms["dgi"]
        )
        return terms

    def step(self) -> dict[str, float]:
        """One full-batch epoch: forward, loss, backward, optimiser step, feature-graph update, scheduler."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        # G(P) once per modality: the Frobenius term's and, unless detached, the encoders' graph (as the reference)
        refined = [g.refined_values() for g in self.graphs]
        encoder_graphs = [g.encoder_graph(r) for g, r in zip(self.graphs, refined)]
        outputs = self.model(self.features, self.spatial, encoder_graphs)
        terms = self.loss_terms(outputs, refined)
        values = {name: float(t.detach()) for name, t in terms.items()}
        for name, value in values.items():
            if not math.isfinite(value):
                raise FloatingPointError(f"epoch {self.epoch + 1}: loss term '{name}' is {value}")
        terms["total"].backward()
        self.optimizer.step()
        for graph, before in zip(self.graphs, refined):
            graph.update_after_step(before.detach())
        values["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.scheduler is not None:
            self.scheduler.step(values["total"])
        self.epoch += 1
        values["epoch"] = self.epoch
        return values

    @torch.no_grad()
    def embeddings(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One forward in evaluation mode; per-modality and fused embeddings, L2-normalised per spot."""
        was_training = self.model.training
        self.model.eval()
        try:
            per_modality, fused = self.model.embed(self.features, self.spatial, [g.operator() for g in self.graphs])
        finally:
            self.model.train(was_training)
        return [F.normalize(e, dim=1) for e in per_modality], F.normalize(fused, dim=1)

    def fused_embedding(self) -> np.ndarray:
        """The current fused embedding (evaluation mode, L2-normalised) as a NumPy array."""
        return self.embeddings()[1].cpu().numpy()

    # ------------------------------------------------------------------------------------------ checkpoints (h5)

    def checkpoint_state(self) -> dict:
        """Everything the next epoch depends on: model and feature-graph parameters and buffers (P, F and the EMA
        target), optimiser and scheduler state, every random generator and the epoch. A Trainer built from the same
        data and config and given this state by `restore_state` continues exactly as this one would (on CPU)."""
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "graphs": self.graphs.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": random_states(),
        }

    def restore_state(self, state: dict) -> None:
        """Continue from `checkpoint_state()` of a trainer of the same data and config."""
        self.model.load_state_dict(state["model"])
        self.graphs.load_state_dict(state["graphs"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        set_random_states(state["rng"])
        self.epoch = int(state["epoch"])


# ---------------------------------------------------------------------------------------------- train()


def _graph_lists(graphs) -> tuple[list, list]:
    if hasattr(graphs, "spatial") and hasattr(graphs, "feature"):
        return list(graphs.spatial), list(graphs.feature)
    spatial, feature = graphs
    return list(spatial), list(feature)


def _progress_bar(total: int, enabled: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.description}"),
        disable=not enabled, transient=False,
    )


def _describe(values: dict) -> str:
    shown = {k: v for k, v in values.items() if k not in ("epoch", "lr")}
    return " ".join(f"{k}={v:.4g}" for k, v in shown.items())


# A training checkpoint is written every CHECKPOINT_SECONDS of training, or every CHECKPOINT_MAX_EPOCHS epochs if that
# comes first, unless a fixed `checkpoint_every` is given: frequent enough that a lost trial loses about a minute,
# rare enough that saving (a few MB) costs nothing measurable.
CHECKPOINT_SECONDS = 60.0
CHECKPOINT_MAX_EPOCHS = 50


class CheckpointClock:
    """Decides after which epochs a checkpoint is due: every `every` epochs, or by the time rule above."""

    def __init__(self, every: int | None = None):
        self.every = every
        self.last_epoch, self.last_time = 0, time.perf_counter()

    def due(self, epoch: int) -> bool:
        if self.every is not None:
            due = epoch - self.last_epoch >= self.every
        else:
            due = (epoch - self.last_epoch >= CHECKPOINT_MAX_EPOCHS
                   or time.perf_counter() - self.last_time >= CHECKPOINT_SECONDS)
        if due:
            self.last_epoch, self.last_time = epoch, time.perf_counter()
        return due


def train(prepared, graphs, config, callback=None, callback_every: int = 10, progress: bool = True, *,
          start_from: dict | None = None, on_checkpoint: Callable[[dict], None] | None = None,
          checkpoint_every: int | None = None) -> TrainResult:
    """Train SPAMO on prepared features and graphs; `config` is already `resolve()`d.

    `graphs` has `.spatial` and `.feature` (lists of symmetric normalised sparse tensors, one per modality).
    `callback(epoch, fused_embedding_fn, losses)` runs every `callback_every` epochs; `fused_embedding_fn()` returns
    the current fused embedding (eval mode, L2-normalised, N x d NumPy). A callback returning True stops training.
    Raises FloatingPointError naming the epoch and term when a loss turns NaN or infinite.

    Checkpoints: with `on_checkpoint`, after each epoch a checkpoint is due at (see `CheckpointClock`; never after
    the last epoch) it is called with `{"trainer": Trainer.checkpoint_state(), "history": [...]}` before that
    epoch's `callback`; the dict holds live tensors, so save it (torch.save) before returning. `start_from` (such
    a dict, loaded) continues training after its epoch: on CPU the result equals that of an uninterrupted run.
    """
    started = time.perf_counter()
    device = check_device(config)
    spatial, feature = _graph_lists(graphs)
    features = [torch.as_tensor(np.asarray(x, dtype=np.float32)) for x in prepared.features]
    history: list[dict] = []
    epoch_time = 0.0
    stopped = False
    with deterministic_algorithms():
        trainer = Trainer(features, spatial, feature, config, device, prepared.modality_names)
        if start_from is not None:
            trainer.restore_state(start_from["trainer"])
            history = [dict(h) for h in start_from["history"]]
        start_epoch = trainer.epoch
        clock = CheckpointClock(checkpoint_every)
        clock.last_epoch = start_epoch
        with _progress_bar(config.epochs, progress) as bar:
            task = bar.add_task("", total=config.epochs, completed=start_epoch)
            for _ in range(start_epoch, config.epochs):
                tick = time.perf_counter()
                values = trainer.step()
                epoch_time += time.perf_counter() - tick
                history.append(values)
                bar.update(task, advance=1, description=_describe(values))
                if on_checkpoint is not None and trainer.epoch < config.epochs and clock.due(trainer.epoch):
                    on_checkpoint({"trainer": trainer.checkpoint_state(), "history": history})
                if callback is not None and callback_every > 0 and trainer.epoch % callback_every == 0:
                    if callback(trainer.epoch, trainer.fused_embedding, values) is True:
                        stopped = True
                        break
        per_modality, fused = trainer.embeddings()
    return TrainResult(
        fused=fused.cpu().numpy(),
        per_modality=[e.cpu().numpy() for e in per_modality],
        history=history,
        epoch_seconds=epoch_time / max(len(history) - start_epoch, 1),
        train_seconds=time.perf_counter() - started,
        device=str(device),
        stopped_early=stopped,
        start_epoch=start_epoch,
    )
