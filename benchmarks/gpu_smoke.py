"""A quick check of `spamo.training.train` on a CUDA GPU: it runs, learns, warns about what, and repeats.

Trains a planted 3-domain problem (3,000 spots, 2 modalities) for 50 epochs twice on the GPU and prints the epoch
time, the warnings raised, the k-means ARI of the fused embedding and how far the two runs' embeddings differ.

    python benchmarks/gpu_smoke.py            # from the repository root, on a machine with CUDA
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> None:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from model_problems import planted_problem
    from spamo.config import SpamoConfig
    from spamo.training import train

    features, spatial, feature, labels = planted_problem(3000, [30, 20], seed=2, knn_k=10)
    config = SpamoConfig(data_type="Simulation", epochs=50, seed=1, device="cuda").resolve(2, 3000)
    prepared = SimpleNamespace(features=[f.numpy() for f in features], modality_names=["rna", "adt"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = train(prepared, (spatial, feature), config, progress=False)
    print(f"train() on {first.device}: {first.epoch_seconds:.4f} s/epoch, {len(caught)} warnings")
    for message in sorted({str(w.message)[:160] for w in caught}):
        print("  warning:", message)
    ari = adjusted_rand_score(labels, KMeans(3, n_init=5, random_state=0).fit_predict(first.fused))
    print(f"k-means ARI of the fused embedding: {ari:.3f}")
    second = train(prepared, (spatial, feature), config, progress=False)
    print(f"largest difference between two runs' embeddings: {np.abs(first.fused - second.fused).max():.2g}")


if __name__ == "__main__":
    main()
