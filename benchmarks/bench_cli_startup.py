"""How long a command takes before it does anything: `spamo --help`, `spamo run --help`, a refused `spamo run` and a
refused `spamo tune`, each in a fresh interpreter, against an older checkout for comparison.

Every command is run `--rounds` times per checkout, the checkouts interleaved round by round (a busy machine slows
both alike), and reported as the median and range of wall time and of CPU time (user + system of the child), with
the machine's load average before and after. The heavy libraries each command ended up importing are listed from
`-X importtime`. The other checkout is any folder holding the repository (e.g. `git archive <commit> | tar -x -C
DIR`); without `--before` only this checkout is measured.

    PYTHONPATH=$PWD python benchmarks/bench_cli_startup.py --rounds 7
    mkdir -p /tmp/old && git archive 43d21af | tar -x -C /tmp/old
    PYTHONPATH=$PWD python benchmarks/bench_cli_startup.py --before /tmp/old --rounds 7
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "sklearn", "ray", "optuna", "scanpy", "anndata", "pandas", "matplotlib")
COMMANDS = {
    "--help": ["--help"],
    "run --help": ["run", "--help"],
    "run, refused setting": ["run", "--dataset", "sim", "--optimizer", "lbfgs", "--out", "{tmp}/out"],
    "tune, refused option": ["tune", "--dataset", "sim", "--num-samples", "0", "--storage", "{tmp}/runs"],
}


def run_once(checkout: Path, args: list[str], tmp: str) -> tuple[float, float]:
    """(wall s, CPU s of the child) of one `cli.py ARGS` in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(checkout / "cli.py"), *[a.format(tmp=tmp) for a in args]], cwd=tmp, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def heavy_imports(checkout: Path, args: list[str], tmp: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-X", "importtime", str(checkout / "cli.py"),
                           *[a.format(tmp=tmp) for a in args]], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=300)
    names = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return [m for m in HEAVY if m in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="an older checkout to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    checkouts = {"now": ROOT} | ({"before": options.before.resolve()} if options.before else {})
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    times: dict = {(c, n): [] for c in checkouts for n in COMMANDS}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(options.rounds):
            for name, args in COMMANDS.items():
                for label, checkout in checkouts.items():
                    times[label, name].append(run_once(checkout, args, tmp))
        print(f"load average after:  {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        print(f"\n| command | checkout | wall s (median, range) | CPU s (median, range) | heavy imports |")
        print("|---|---|---|---|---|")
        for name, args in COMMANDS.items():
            for label, checkout in checkouts.items():
                wall, cpu = zip(*times[label, name])
                print(f"| `spamo {name}` | {label} | {statistics.median(wall):.2f} ({min(wall):.2f}-{max(wall):.2f}) "
                      f"| {statistics.median(cpu):.2f} ({min(cpu):.2f}-{max(cpu):.2f}) "
                      f"| {', '.join(heavy_imports(checkout, args, tmp)) or 'none'} |")


if __name__ == "__main__":
    main()
