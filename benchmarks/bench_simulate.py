"""Time and peak memory of `spamo data simulate --layout sim` at growing sizes.

Each size runs as its own process (the real CLI); its wall time and peak resident memory come from `os.wait4`
(ru_maxrss of that child alone). Writes a markdown table to benchmarks/results/simulate.md.

    python benchmarks/bench_simulate.py                 # 10k, 100k, 1M spots
    python benchmarks/bench_simulate.py --sizes 10000   # a quick check
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_once(n_spots: int, out_dir: Path, seed: int = 0) -> dict:
    """Run the CLI once; return wall seconds, peak RSS (GiB) and the size of the written folder (GiB)."""
    command = [sys.executable, str(ROOT / "cli.py"), "data", "simulate", "--out", str(out_dir), "--n-spots",
               str(n_spots), "--seed", str(seed), "--layout", "sim"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"simulate {n_spots} failed with status {status}")
    disk = sum(p.stat().st_size for p in out_dir.iterdir())
    return {"n_spots": n_spots, "wall_s": wall, "peak_rss_gib": usage.ru_maxrss / 2**20, "disk_gib": disk / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "simulate.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_simulate.") as tmp:
        for n in args.sizes:
            folder = Path(tmp) / f"sim_{n}"
            row = run_once(n, folder)
            shutil.rmtree(folder)
            print(f"{n:>9} spots: {row['wall_s']:.1f} s, peak RSS {row['peak_rss_gib']:.2f} GiB, "
                  f"{row['disk_gib']:.2f} GiB on disk", flush=True)
            rows.append(row)
    import torch  # only to name the machine's torch build, as every results table does

    lines = [
        "# `spamo data simulate` (layout sim: RNA 1000 genes, ADT 100 proteins, ATAC 1000 peaks, 5 domains)",
        "",
        f"Machine: {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), 24 GiB RAM, "
        f"Python {platform.python_version()}, torch {torch.__version__} CPU. One process per size (the CLI, "
        "progress bar included); peak RSS from `os.wait4` of that process; files written to local disk.",
        "",
        "| spots | wall time (s) | peak RSS (GiB) | files on disk (GiB) |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['n_spots']:,} | {r['wall_s']:.1f} | {r['peak_rss_gib']:.2f} | {r['disk_gib']:.2f} |"
              for r in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
