"""The training benchmarks' inputs read back: the .npz that `bench_train.make_inputs` writes (two modalities'
features and their normalised spatial and feature graphs as COO arrays) as the tensors `spamo.training.Trainer`
takes. bench_train.py's timed workers and profile_epoch.py read it the same way, here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

N_MODALITIES = 2


def load_inputs(path: str | Path) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """(features, spatial graphs, feature graphs), one of each per modality, on the CPU (coalesced sparse graphs)."""
    data = np.load(path)
    n = data["features0"].shape[0]

    def graph(name: str) -> torch.Tensor:
        indices = torch.as_tensor(data[f"{name}_indices"])
        return torch.sparse_coo_tensor(indices, torch.as_tensor(data[f"{name}_values"]), (n, n)).coalesce()

    features = [torch.as_tensor(data[f"features{m}"]) for m in range(N_MODALITIES)]
    return (features, [graph(f"spatial{m}") for m in range(N_MODALITIES)],
            [graph(f"feature{m}") for m in range(N_MODALITIES)])
