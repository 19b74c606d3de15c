"""Labels in distribution: ARI of `spamo run`'s pipeline on the built-in simulation over seeds, with the compiled
kernels (attention row passes, edge-value gradient) against the tensor-only code, in one process.

The two variants draw different (equally distributed) dropout masks only where floating-point rounding differs, so
single runs differ; the question is whether the ARI distribution moves. One torch thread (shared machine).

    python benchmarks/check_backends_ari.py --seeds 0 1 2 3 4
    python benchmarks/check_backends_ari.py --seeds 0 1 2 3 4 --variants compiled flash
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time

import torch

from spamo import pipeline
from spamo.config import SpamoConfig

attention_module = importlib.import_module("spamo.model.attention")
kernel_module = importlib.import_module("spamo.model.attention_kernel")


ORIGINAL = (attention_module.default_backend, kernel_module.sampled_row_dots)


def variant(name: str) -> None:
    """'compiled' / 'flash' = that attention backend at every size; 'tensor' = tensor operations only (the code
    paths without a C compiler)."""
    attention_module.default_backend, kernel_module.sampled_row_dots = ORIGINAL
    attention_module.default_backend = lambda *sizes: name
    if name == "tensor":
        kernel_module.sampled_row_dots = lambda *args: None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=0, help="0 = the data type's default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=["tensor", "compiled"], choices=["tensor", "compiled", "flash"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {name: [] for name in args.variants}
    with tempfile.TemporaryDirectory() as root:
        data = pipeline.load_data(dataset="sim", data_root=root)
        for seed in args.seeds:
            for name in results:
                variant(name)
                start = time.process_time()
                result = pipeline.run(data, SpamoConfig(seed=seed, epochs=args.epochs), progress=False)
                ari = float(result.scores["ari"])
                results[name].append(ari)
                print(f"seed {seed} {name}: ARI {ari:.4f} ({time.process_time() - start:.1f} CPU s)", flush=True)
    for name, aris in results.items():
        print(f"{name}: ARI mean {statistics.mean(aris):.4f}, sd {statistics.stdev(aris) if len(aris) > 1 else 0:.4f}, "
              f"per seed {[round(a, 4) for a in aris]}")


if __name__ == "__main__":
    main()
