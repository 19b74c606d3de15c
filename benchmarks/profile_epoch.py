"""Where a training epoch goes: attention forward / backward, masks, encoders, fusion, decoders, losses,
feature-graph update, optimiser; per attention backend ("tensor" and "compiled"), side by side in ONE process.

The bench_train.py problem (HLN-like: 2 modalities x 30 features, KNN_k 20, spatial k 3, latent 64, dropout 0.1,
training mode). The clock is this process's CPU time (`time.process_time`) on ONE torch thread by default: on a
shared machine the wall clock measures the neighbours, CPU time on one thread measures the work. Each round runs
one epoch per backend and then the floor (both attention directions, forward + backward, through PyTorch's fused
kernel without dropout, q/k/v of N x 64); the table gives medians over the rounds.

How the parts are timed: forward parts by module hooks (encoders, fusion, decoders) and wrappers (the attention
call, the loss terms, G(P)); the attention backward by wrapping the autograd function's backward; the rest of the
backward by gradient hooks on the fused and per-modality embeddings (losses + decoders until the fused embedding's
gradient is ready, fusion until the embeddings' gradients are, encoders + G(P) after); masks by wrapping the
tensor backend's mask maker (the compiled and flash backends make their bits inside their C passes: the whole time
of the C kernel calls is shown as "kernel row passes"; for flash these are the dropped-entry passes, the fused
kernel itself is not included).

    python benchmarks/profile_epoch.py --sizes 2500 10000 --rounds 5                  # flash vs compiled
    python benchmarks/profile_epoch.py --sizes 2500 --backends flash compiled tensor
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_train import KNN_K, SPATIAL_K, make_inputs  # noqa: E402
from train_inputs import load_inputs  # noqa: E402

attention_module = importlib.import_module("spamo.model.attention")
fusion_module = importlib.import_module("spamo.model.fusion")
kernel_module = importlib.import_module("spamo.model.attention_kernel")
flash_module = importlib.import_module("spamo.model.attention_flash")

PARTS = ["attention forward", "attention backward", "masks (inside attention)", "kernel row passes (inside attention)",
         "encoders forward", "fusion forward (rest)", "decoders forward", "losses forward", "G(P) forward",
         "losses + decoders backward", "fusion backward (rest)", "encoders + G(P) backward",
         "optimiser step", "feature-graph update", "other"]


class Clock:
    """Accumulates CPU seconds per part for the epoch being timed."""

    def __init__(self):
        self.parts = defaultdict(float)
        self.active = False

    def timed(self, part, fn):
        def wrapper(*args, **kwargs):
            if not self.active:
                return fn(*args, **kwargs)
            start = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.parts[part] += time.process_time() - start
        return wrapper


CLOCK = Clock()


class _TimedLibrary:
    """The compiled kernel library with every call timed (ctypes functions cannot be wrapped in place)."""

    def __init__(self, lib):
        self._lib = lib

    def __getattr__(self, name):
        return CLOCK.timed("kernel row passes (inside attention)", getattr(self._lib, name))


def instrument() -> None:
    """Wrap the attention call, its backward, the mask maker and the kernel library (module level, once)."""
    fusion_module.attention = CLOCK.timed("attention forward", attention_module.attention)
    for fn in (attention_module.BlockedDropoutAttention, flash_module.FlashDropoutAttention):
        fn.backward = staticmethod(CLOCK.timed("attention backward", fn.backward))
    attention_module._TensorMasks.fill = CLOCK.timed("masks (inside attention)", attention_module._TensorMasks.fill)
    lib = kernel_module.load()
    if lib is not None:
        timed = _TimedLibrary(lib)
        kernel_module.load = lambda: timed


def hook_module(module, part):
    state = {}

    def pre(*_):
        state["t"] = time.process_time()

    def post(*_):
        if CLOCK.active:
            CLOCK.parts[part] += time.process_time() - state["t"]
    module.register_forward_pre_hook(pre)
    module.register_forward_hook(post)


def timed_epoch(trainer) -> dict:
    """One `Trainer.step()` re-enacted with timestamps (the same calls in the same order as training.py)."""
    CLOCK.parts = defaultdict(float)
    CLOCK.active = True
    start = time.process_time()
    self = trainer
    self.model.train()
    self.optimizer.zero_grad(set_to_none=True)
    t = time.process_time()
    refined = [g.refined_values() for g in self.graphs]
    encoder_graphs = [g.encoder_graph(r) for g, r in zip(self.graphs, refined)]
    CLOCK.parts["G(P) forward"] += time.process_time() - t
    outputs = self.model(self.features, self.spatial, encoder_graphs)
    t = time.process_time()
    terms = self.loss_terms(outputs, refined)
    values = {name: float(v.detach()) for name, v in terms.items()}
    CLOCK.parts["losses forward"] += time.process_time() - t
    marks = {}

    def mark(name):
        def hook(grad):
            marks[name] = time.process_time()
        return hook
    outputs["fused"].register_hook(mark("fused"))
    for i, e in enumerate(outputs["embeddings"]):
        e.register_hook(mark(f"embedding{i}"))
    attention_before = CLOCK.parts["attention backward"]
    t0 = time.process_time()
    terms["total"].backward()
    t1 = time.process_time()
    attention_backward = CLOCK.parts["attention backward"] - attention_before
    last_embedding = max(v for k, v in marks.items() if k.startswith("embedding"))
    CLOCK.parts["losses + decoders backward"] += marks["fused"] - t0
    CLOCK.parts["fusion backward (rest)"] += last_embedding - marks["fused"] - attention_backward
    CLOCK.parts["encoders + G(P) backward"] += t1 - last_embedding
    t = time.process_time()
    self.optimizer.step()
    CLOCK.parts["optimiser step"] += time.process_time() - t
    t = time.process_time()
    for graph, before in zip(self.graphs, refined):
        graph.update_after_step(before.detach())
    CLOCK.parts["feature-graph update"] += time.process_time() - t
    if self.scheduler is not None:
        self.scheduler.step(values["total"])
    self.epoch += 1
    total = time.process_time() - start
    CLOCK.active = False
    parts = dict(CLOCK.parts)
    parts["encoders forward"] = parts.get("encoders forward", 0.0)
    parts["fusion forward (rest)"] = parts.get("fusion forward", 0.0) - parts.get("attention forward", 0.0)
    parts.pop("fusion forward", None)
    known = sum(v for k, v in parts.items() if not k.endswith("(inside attention)"))
    parts["other"] = total - known
    parts["epoch"] = total
    return parts


def floor_seconds(n: int) -> float:
    """Both attention directions, forward + backward, PyTorch's fused kernel, no dropout (CPU seconds)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, 64, generator=gen, requires_grad=True) for _ in range(3))
    start = time.process_time()
    for _ in range(2):
        attention_module.attention(q, k, v, 0.0).sum().backward()
    return time.process_time() - start


def build_trainer(path: Path, backend: str):
    from spamo.config import SpamoConfig
    from spamo.training import Trainer

    features, spatial, feature = load_inputs(path)
    n = features[0].shape[0]
    config = SpamoConfig(data_type="10x", knn_k=KNN_K, spatial_k=SPATIAL_K, epochs=1000).resolve(2, n)
    trainer = Trainer(features, spatial, feature, config)
    for encoder in trainer.model.encoders:
        hook_module(encoder, "encoders forward")
    hook_module(trainer.model.fusion, "fusion forward")
    for decoder in trainer.model.decoders:
        hook_module(decoder, "decoders forward")
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2500, 10000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the markdown tables here too")
    parser.add_argument("--backends", nargs="+", default=["flash", "compiled"],
                        choices=list(attention_module.BACKENDS), help="attention backends to profile side by side")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    instrument()
    available = {"tensor"} | ({"compiled"} if kernel_module.load() is not None else set())
    if "compiled" in available and attention_module.default_backend() == "flash":
        available.add("flash")
    backends = [b for b in args.backends if b in available]
    original = attention_module.attention

    def with_backend(backend):
        def call(*args, **kwargs):  # whatever the model passes, with the backend replaced
            return original(*args, **{**kwargs, "backend": backend})
        return call
    text = [f"torch threads {args.threads}; CPU seconds of this process; load average at start "
            f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}", ""]
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "inputs.npz"
            make_inputs(n, path)
            trainers = {b: build_trainer(path, b) for b in backends}
        rows = {b: [] for b in backends}
        floors = []
        rounds = args.rounds if n <= 10000 else 1
        for r in range(rounds + 1):  # round 0 warms up (and builds the kernel)
            for b in backends:
                fusion_module.attention = CLOCK.timed("attention forward", with_backend(b))
                parts = timed_epoch(trainers[b])
                if r:
                    rows[b].append(parts)
            floor = floor_seconds(n)
            if r:
                floors.append(floor)
            print(f"N={n} round {r}: " + ", ".join(f"{b} {rows[b][-1]['epoch']:.3f}" for b in backends if rows[b])
                  + f", floor {floor:.3f}", flush=True)
        floor = statistics.median(floors)
        text += [f"## {n:,} spots ({rounds} rounds; floor = both directions through the fused kernel without "
                 f"dropout: median {floor:.3f} s, range {min(floors):.3f}-{max(floors):.3f})", "",
                 "| part | " + " | ".join(f"{b} backend, s" for b in backends) + " |",
                 "|---|" + "---:|" * len(backends)]
        for part in PARTS + ["epoch"]:
            cells = []
            for b in backends:
                vals = [p.get(part, 0.0) for p in rows[b]]
                med = statistics.median(vals)
                share = "" if part == "epoch" else f" ({100 * med / statistics.median(p['epoch'] for p in rows[b]):.0f}%)"
                cells.append(f"{med:.4f}{share}")
            text.append(f"| {'**epoch**' if part == 'epoch' else part} | " + " | ".join(cells) + " |")
        ratio = " | ".join(f"{statistics.median(p['epoch'] for p in rows[b]) / floor:.2f}" for b in backends)
        epoch_range = " | ".join(f"{min(p['epoch'] for p in rows[b]):.3f}-{max(p['epoch'] for p in rows[b]):.3f}"
                                 for b in backends)
        text += [f"| epoch range | {epoch_range} |", f"| **epoch / floor** | {ratio} |", ""]
        print("\n".join(text), flush=True)
        if args.out:
            args.out.write_text("\n".join(text) + "\n")
    text.append(f"load average at end {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("\n".join(text))
    if args.out:
        args.out.write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
