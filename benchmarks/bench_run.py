"""Wall clock of a whole `spamo run` (fresh process: imports, loading, preprocessing, graphs, training, clustering,
scoring, files, picture), with and without the picture, on a 2,500-spot RNA + ADT simulation in the HLN layout.

Each variant is a fresh `python cli.py run` subprocess, timed from start to exit; variants are interleaved round by
round so a shared machine's drift hits them alike, and the median and range over the rounds are reported, with the
stage timings the run itself recorded in run.toml and the load average. `--tree DIR` (repeatable) times the same
commands from other checkouts (e.g. an older commit made with `git worktree add`) in the same rounds.

    python benchmarks/bench_run.py                                # 1-epoch runs +/- picture, then one 200-epoch run
    python benchmarks/bench_run.py --epochs 1 --rounds 3          # the fixed cost alone (issue #16: <= 10 s)
    python benchmarks/bench_run.py --epochs 1 --rounds 5 --out /tmp/run.md
    python benchmarks/bench_run.py --tree /tmp/old-spamo --epochs 1 200

The table replaces the text between the markers BEGIN and END of the output file (the notes around them, measured
by hand, are kept); a file without the markers is written whole.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- bench_run.py table: begin -->", "<!-- bench_run.py table: end -->"
SPOTS, DOMAINS = 2500, 8  # the simulator makes 4-8 domains


def make_input(root: Path) -> None:
    """ROOT/HLN: a 2,500-spot RNA + ADT simulation written in the HLN dataset layout (8 domains)."""
    sys.path.insert(0, str(ROOT))
    from spamo.simulate import write_simulation

    write_simulation(root / "HLN", n_spots=SPOTS, seed=0, layout="hln", n_domains=DOMAINS)


def one_run(tree: Path, data_root: Path, out: Path, epochs: int, plot: bool, threads: int | None) -> dict:
    cmd = [sys.executable, str(tree / "cli.py"), "run", "--dataset", "hln", "--data-root", str(data_root),
           "--out", str(out), "--epochs", str(epochs), "--n-clusters", str(DOMAINS), "--quiet"]
    cmd += [] if plot else ["--no-plot"]
    env = dict(os.environ, PYTHONPATH=str(tree))
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    # CPU seconds (user + system) of the run: on a shared machine, what the run itself cost
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    row = {"wall": wall, "cpu": cpu}
    run_toml = out / "run.toml"
    if run_toml.exists():
        meta = tomllib.loads(run_toml.read_text())
        row["timings"] = {k: v for k, v in meta.get("timings", {}).items() if isinstance(v, (int, float))}
    return row


def markdown(results: dict, rounds: int, trees: list[Path], loads: list) -> str:
    lines = [
        "# Whole `spamo run` wall clock (bench_run.py)",
        "",
        f"Machine: {platform.machine()} {os.cpu_count()}-core CPU VM, Python {platform.python_version()}; input: "
        f"{SPOTS:,}-spot RNA + ADT simulation in the HLN layout ({DOMAINS} domains, HLN settings), `spamo run "
        "--dataset hln --quiet`, a fresh process per run, timed from start to exit; variants interleaved, "
        f"{rounds} round(s), median (range). Load average (1 min) at the rounds: "
        + ", ".join(f"{x:.1f}" for x in loads) + ".",
        "",
        "| tree | epochs | picture | wall s, median (range) | CPU s (user + system) | outside the stages s | stage "
        "timings of the median run (run.toml, wall s) |",
        "|---|---:|---|---|---:|---:|---|",
    ]
    for (tree, epochs, plot), rows in results.items():
        ok = [r for r in rows if "wall" in r]
        if not ok:
            lines.append(f"| {tree} | {epochs} | {'yes' if plot else 'no'} | failed: {rows[0].get('error')} | | | |")
            continue
        ok.sort(key=lambda r: r["wall"])
        mid = ok[len(ok) // 2]
        walls = [r["wall"] for r in ok]
        stages = ", ".join(f"{k} {v:.1f}" for k, v in mid.get("timings", {}).items())
        # interpreter start, imports before the run, loading, writing the folder, the picture, exit
        outside = mid["wall"] - mid.get("timings", {}).get("total_s", float("nan"))
        lines.append(f"| {tree} | {epochs} | {'yes' if plot else 'no'} | {statistics.median(walls):.1f} "
                     f"({min(walls):.1f}-{max(walls):.1f}) | {mid['cpu']:.1f} | {outside:.1f} | {stages} |")
    return "\n".join(lines) + "\n"


def write_table(path: Path, table: str) -> None:
    """The generated table between the markers of `path` (notes outside them kept), or the whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text.split(BEGIN, 1)[1]:
        head, rest = text.split(BEGIN, 1)
        table = head + BEGIN + "\n" + table + rest[rest.index(END):]
    path.write_text(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 200])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the 1-epoch variants (longer runs: once)")
    parser.add_argument("--tree", type=Path, action="append", default=[], help="another checkout to time too")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the runs (default: unset)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "run.md")
    args = parser.parse_args()
    trees = [ROOT] + [t.resolve() for t in args.tree]
    results: dict = {}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        data_root = Path(tmp) / "data"
        make_input(data_root)
        for epochs in args.epochs:
            rounds = args.rounds if epochs <= 5 else 1
            plots = (True, False) if epochs <= 5 else (True,)
            for r in range(rounds):
                loads.append(os.getloadavg()[0])
                for tree in trees:
                    for plot in plots:
                        out = Path(tmp) / f"run_{len(loads)}_{plot}"
                        row = one_run(tree, data_root, out, epochs, plot, args.threads)
                        name = "this tree" if tree == ROOT else str(tree)
                        results.setdefault((name, epochs, plot), []).append(row)
                        print(name, epochs, "picture" if plot else "no picture", row, flush=True)
                write_table(args.out, markdown(results, args.rounds, trees, loads))
    print(markdown(results, args.rounds, trees, loads))


if __name__ == "__main__":
    main()
