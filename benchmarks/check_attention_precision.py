"""The bfloat16 attention option on a CUDA GPU (issue 16, item 4): what it does to the embedding and the ARI, and
what it saves per epoch.

1. Quality: `spamo run`'s pipeline (`pipeline.run`) on the built-in simulation over seeds, with
   `attention_precision` float32 and bfloat16, in one process: the ARI of each, and for each seed how far the two
   fused embeddings are apart (the largest per-spot cosine distance) and how well their domains agree (ARI between
   the two label sets). Dropout on CUDA comes from the fused kernel's own generator, so the two precisions draw
   different masks: the question is whether the ARI distribution moves, as for the CPU backends
   (check_backends_ari.py).
2. Speed: seconds per epoch of bench_train.py's HLN-like problem (2 modalities, KNN_k 20, latent 64, dropout 0.1) in
   both precisions on the same inputs at the given sizes, each run in a fresh process
   (`bench_train.py --precision float32 bfloat16`), into `--out`.

    python benchmarks/check_attention_precision.py --sizes            # quality only: seeds 0-4 (about 3 min)
    python benchmarks/check_attention_precision.py --skip-quality     # speed only: 10,000 ... 1,000,000 (about 5 min)
    python benchmarks/check_attention_precision.py --sizes 100000 --seeds 0 1

Needs CUDA: on CPU the option is refused (spamo/model/attention.py says why).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from spamo import pipeline
from spamo.config import SpamoConfig

HERE = Path(__file__).resolve().parent
PRECISIONS = ("float32", "bfloat16")


def quality(seeds: list[int], epochs: int) -> None:
    aris = {p: [] for p in PRECISIONS}
    with tempfile.TemporaryDirectory() as root:
        data = pipeline.load_data(dataset="sim", data_root=root)
        for seed in seeds:
            runs = {}
            for precision in PRECISIONS:
                config = SpamoConfig(seed=seed, epochs=epochs, device="cuda", attention_precision=precision)
                runs[precision] = pipeline.run(data, config, progress=False)
                aris[precision].append(float(runs[precision].scores["ari"]))
            a, b = (runs[p] for p in PRECISIONS)
            cosine = float(np.max(1.0 - np.sum(a.fused * b.fused, axis=1)))  # rows are L2-normalised
            agree = adjusted_rand_score(a.labels, b.labels)
            print(f"seed {seed}: ARI float32 {aris['float32'][-1]:.4f}, bfloat16 {aris['bfloat16'][-1]:.4f}; "
                  f"largest cosine distance between the embeddings {cosine:.3g}; ARI between the labels "
                  f"{agree:.4f}", flush=True)
    for precision, values in aris.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{precision}: ARI mean {statistics.mean(values):.4f}, sd {spread:.4f}, "
              f"per seed {[round(v, 4) for v in values]}")


def speed(sizes: list[int], float32_max: int, out: Path) -> None:
    """Both precisions up to `float32_max` spots, bfloat16 alone above it (results/train_gpu.md has float32 there:
    63.4 s an epoch at 1,000,000 spots on an H100), into `out` and `out` with suffix `_large`."""
    groups = [(PRECISIONS, [n for n in sizes if n <= float32_max], out),
              (("bfloat16",), [n for n in sizes if n > float32_max], out.with_name(out.stem + "_large" + out.suffix))]
    for precisions, chosen, path in groups:
        if chosen:
            subprocess.run([sys.executable, str(HERE / "bench_train.py"), "--device", "cuda", "--precision",
                            *precisions, "--dense-max", "0", "--sizes", *map(str, chosen), "--out", str(path)],
                           check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=0, help="0 = the data type's default")
    parser.add_argument("--sizes", type=int, nargs="*", default=[10000, 100000, 300000, 1000000],
                        help="spot counts of the speed table (none: skip it)")
    parser.add_argument("--out", type=Path, default=Path("train_gpu_precision.md"),
                        help="the speed table (bench_train.py's markdown, both precisions per size)")
    parser.add_argument("--float32-max", type=int, default=300000,
                        help="largest size timed in float32 too (above it: bfloat16 alone)")
    parser.add_argument("--skip-quality", action="store_true", help="only the speed table")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("check_attention_precision.py needs a CUDA device")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    if not args.skip_quality:
        quality(args.seeds, args.epochs)
    if args.sizes:
        speed(args.sizes, args.float32_max, args.out)


if __name__ == "__main__":
    main()
