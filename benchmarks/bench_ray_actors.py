"""The floor under `bench_tune.py memory`: how a plain Ray driver's resident memory grows when it starts and ends
actors one after another, with no Tune, no Optuna and no spamo in it (benchmarks/results/tune.md, "Driver memory").

A Ray Tune trial is an actor the driver starts and ends; if a driver that only does that grows, a search's driver
cannot be flat however little spamo and Tune keep per trial, short of running the trials' controller in a process
that ends (issue 14). Each round starts two actors, calls each once, ends them; every 50 rounds the driver collects
its garbage, returns freed heap to the system (`malloc_trim(0)`) and records its RSS. Reports the growth per 100
actors (least squares) and the points.

    python benchmarks/bench_ray_actors.py --actors 800
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import time

import numpy as np
import ray

from bench_tune import rss_mib


@ray.remote(num_cpus=1)
class Worker:
    def run(self, i: int) -> dict:
        return {"score": i * 0.5, "i": i}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actors", type=int, default=800)
    args = parser.parse_args()
    if args.actors < 200:
        parser.error(f"--actors {args.actors}: the growth is fitted from 100 actors on, over two points at least; "
                     "give 200 or more")
    libc = ctypes.CDLL("libc.so.6")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    start, points = time.perf_counter(), []
    try:
        for round_ in range(args.actors // 2 + 1):
            actors = [Worker.remote() for _ in range(2)]
            ray.get([a.run.remote(round_) for a in actors])
            for actor in actors:
                ray.kill(actor)
            del actors
            if round_ % 50 == 0:
                gc.collect()
                libc.malloc_trim(0)
                points.append((2 * round_, rss_mib(os.getpid())))
                print(f"{points[-1][0]} actors ended: driver RSS {points[-1][1]:.1f} MiB", flush=True)
    finally:
        ray.shutdown()
    after_warmup = [(n, m) for n, m in points if n >= 100]
    slope = np.polyfit([n for n, _ in after_warmup], [m for _, m in after_warmup], 1)[0] * 100
    print(f"Ray {ray.__version__}, {args.actors} actors in {time.perf_counter() - start:.0f} s, load "
          f"{os.getloadavg()[0]:.1f}: the driver grows {slope:.2f} MiB per 100 actors "
          f"({slope * 1024 / 100:.1f} KiB an actor) from 100 actors on")


if __name__ == "__main__":
    main()
