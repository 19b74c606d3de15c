"""Do the label-free criteria track the truth? A seeded search per suite dataset, scored every way.

For every preset of `configs/benchmarks/selection.toml` (the graded simulation suite, truth known) this runs a
search of `--trials` configurations drawn from the generic search space (`configs/search/default.toml`, epochs
fixed by `--epochs`): trial 0 is the published default configuration of the data type, the rest are sampled by a
seeded Optuna *random* sampler - deliberately not guided by any score, so no criterion is favoured by the way the
trials were chosen. Each trial trains in this process (1 thread), clusters (`--cluster-method`, default gmm: the
pure-Python form of mclust's EEE model, same for every trial) and records ARI beside every label-free criterion
(asw, spatial_coherence, consistency, stability, composite). Rows are appended to `--out` (CSV) as they finish, so
a partial run is usable and a rerun continues where it stopped.

`--summary` reads that CSV and writes the table of `benchmarks/results/selection.md`: per criterion, the Spearman
correlation with ARI over the trials (median and range over datasets) and the selection regret (ARI of the best
trial minus ARI of the trial the criterion picks), beside the ARI of the published default configuration.

`--scale N` instead measures the criteria alone on N synthetic spots (time and peak memory; nothing N x N) into
`benchmarks/results/selection_scale.json`. With `--out PATH` nothing under benchmarks/results is written: the trials
go to PATH, the table to PATH with the suffix .md, the `--scale` numbers to PATH.

    PYTHONPATH=$PWD nohup python benchmarks/bench_selection.py --trials 24 --epochs 25 &
    PYTHONPATH=$PWD python benchmarks/bench_selection.py --summary
    PYTHONPATH=$PWD python benchmarks/bench_selection.py --scale 100000
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TRIALS_CSV = ROOT / "benchmarks" / "results" / "selection_trials.csv"
RESULT_MD = ROOT / "benchmarks" / "results" / "selection.md"
SCALE_JSON = ROOT / "benchmarks" / "results" / "selection_scale.json"
CRITERIA = ("asw", "spatial_coherence", "consistency", "stability", "composite")
PARAMS = ("modality_weight_0", "modality_weight_1", "modality_weight_2", "dgi_weight", "spatial_weight", "knn_k",
          "optimizer", "lr", "weight_decay", "scheduler", "dropout", "use_cross_attn")


# ------------------------------------------------------------------------------------------------ the search


class LastReport:
    """Training callback keeping the k-means domains of the last report before the end (for `stability`)."""

    def __init__(self, epochs: int, every: int, n_clusters: int, seed: int):
        self.last_epoch = (epochs - 1) // every * every
        self.n_clusters, self.seed, self.labels = n_clusters, seed, None

    def __call__(self, epoch, embedding_fn, losses):
        from spamo.selection import kmeans_domains

        if epoch == self.last_epoch:
            self.labels = kmeans_domains(embedding_fn(), self.n_clusters, self.seed)
        return False


def done_keys(path: Path) -> set:
    if not path.is_file():
        return set()
    with open(path, newline="") as fh:
        return {(row["dataset"], int(row["trial"])) for row in csv.DictReader(fh)}


def append_row(path: Path, row: dict, columns: list[str]) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)
        fh.flush()
        os.fsync(fh.fileno())


def run_preset(preset, args, out: Path, log) -> None:
    import optuna
    import torch

    from search.space import load_space, space_path, trial_config
    from spamo import datasets, pipeline
    from spamo.config import SpamoConfig
    from spamo.metrics import spatial_coherence
    from spamo.selection import criteria, kmeans_domains

    torch.set_num_threads(1)
    folder = Path(args.data_root) / preset.name
    if not folder.exists():
        preset.write(folder)
    data = datasets.load_layout(folder, datasets.get_dataset_spec(preset.layout))
    base = SpamoConfig(seed=args.seed, epochs=args.epochs, cluster_method=args.cluster_method)
    prepared, base = pipeline.prepare(data, base)
    space = load_space(space_path(None, None)).for_data(prepared.n_modalities, args.epochs)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=args.seed))
    for point in space.first_points(base):
        study.enqueue_trial(point)
    finished = done_keys(out)
    columns = ["dataset", "layout", "n_spots", "trial", "status", "ari", "nmi", *CRITERIA, "epochs", "train_s",
               "wall_s", "seed", *PARAMS, "error"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for number in range(args.trials):
        trial = study.ask(space.distributions)  # asked even when done, so the sampler's sequence is the same
        if (preset.name, number) in finished:
            continue
        started = time.time()
        row = {"dataset": preset.name, "layout": preset.layout, "n_spots": prepared.n_spots, "trial": number,
               "epochs": args.epochs, "seed": args.seed, **trial.params}
        try:
            config = trial_config(base, space.fixed, trial.params, prepared.n_modalities, prepared.n_spots)
            probe = LastReport(config.epochs, args.report_every, config.n_clusters, config.seed)
            result = pipeline.fit_and_cluster(prepared, config, callback=probe, callback_every=args.report_every,
                                              progress=False)
            final_kmeans = kmeans_domains(result.fused, config.n_clusters, config.seed)
            coherence = spatial_coherence(result.labels, prepared.coords)
            values = criteria(result.fused, prepared.features, coherence, probe.labels, final_kmeans,
                              seed=config.seed)
            row.update(status="finished", ari=result.scores["ari"], nmi=result.scores["nmi"],
                       asw=result.scores["asw"], spatial_coherence=coherence, **values,
                       train_s=result.timings.get("train_s"))
        except Exception as exc:  # noqa: BLE001 - a diverging configuration is a failed trial, the search goes on
            row.update(status="failed", error=f"{type(exc).__name__}: {str(exc)[:120]}")
        row["wall_s"] = round(time.time() - started, 2)
        append_row(out, row, columns)
        log(f"{preset.name} trial {number}: {row['status']} ari={row.get('ari', float('nan')):.3f} "
            f"cons={row.get('consistency', float('nan')):.3f} {row['wall_s']:.0f}s")


# ------------------------------------------------------------------------------------------------ the table


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(spearmanr(x[ok], y[ok]).statistic)


def selection_table(frame):
    """Per dataset and criterion: Spearman with ARI, the ARI of the pick, regret; plus the default's ARI."""
    import pandas as pd

    rows = []
    for name, part in frame.groupby("dataset", sort=False):
        done = part[part["status"] == "finished"].dropna(subset=["ari"])
        if done.empty:
            continue
        best = float(done["ari"].max())
        default = done[done["trial"] == 0]
        default_ari = float(default["ari"].iloc[0]) if not default.empty else float("nan")
        for criterion in CRITERIA:
            scored = done.dropna(subset=[criterion])
            pick = float(scored.loc[scored[criterion].idxmax(), "ari"]) if not scored.empty else float("nan")
            rows.append({"dataset": name, "criterion": criterion, "n_trials": len(done),
                         "spearman": spearman(done[criterion], done["ari"]), "pick_ari": pick,
                         "best_ari": best, "regret": best - pick, "default_ari": default_ari})
    return pd.DataFrame(rows)


def machine_line() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}; `uptime`: {uptime}"


def summarise(path: Path, out_md: Path, note: str | None = None) -> str:
    import pandas as pd

    files = sorted(path.parent.glob(path.stem + "*.csv"))
    frame = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    table = selection_table(frame)
    shown = ", ".join(f"`{f.relative_to(ROOT) if f.is_relative_to(ROOT) else f}`" for f in files)
    lines = ["# Label-free selection: does the criterion track ARI?", "",
             f"Trials: {shown} "
             f"({len(frame)} rows, {frame['dataset'].nunique()} datasets, "
             f"{int((frame['status'] == 'finished').sum())} finished). Written by `benchmarks/bench_selection.py "
             "--summary`.", "", f"Machine: {machine_line()}", *([note, ""] if note else [""]),
             f"Setup: per dataset {frame.groupby('dataset').size().max()} trials from `configs/search/default.toml` "
             f"(trial 0 = the published default of the data type, the rest seeded random samples, seed "
             f"{int(frame['seed'].iloc[0])}), {int(frame['epochs'].iloc[0])} epochs each, one torch thread, "
             f"clustering gmm; median trial wall time {frame['wall_s'].median():.0f} s, total "
             f"{frame['wall_s'].sum() / 60:.0f} min of trial time. Spearman = rank correlation of the criterion "
             "with ARI over a dataset's finished trials; regret = best trial's ARI - ARI of the trial the "
             "criterion picks; 'pick beats default' counts datasets where the pick's ARI exceeds trial 0's.", ""]
    lines += ["## Per criterion (over datasets)", "",
              "| criterion | median Spearman with ARI | range | median regret | mean regret | "
              "pick beats default (datasets) |", "|---|---|---|---|---|---|"]
    order = []
    for criterion in CRITERIA:
        part = table[table["criterion"] == criterion]
        if part.empty:
            continue
        beats = int((part["pick_ari"] > part["default_ari"]).sum())
        order.append((criterion, float(np.nanmedian(part["spearman"]))))
        lines.append(f"| {criterion} | {np.nanmedian(part['spearman']):+.2f} | {np.nanmin(part['spearman']):+.2f} "
                     f".. {np.nanmax(part['spearman']):+.2f} | {np.nanmedian(part['regret']):.3f} | "
                     f"{np.nanmean(part['regret']):.3f} | {beats} of {len(part)} |")
    if order:
        best = max(order, key=lambda item: item[1] if math.isfinite(item[1]) else -2)
        lines += ["", f"Best median Spearman: **{best[0]}** ({best[1]:+.2f})."]
    lines += ["", "## Per dataset", "", "| dataset | trials | default ARI | best ARI | " +
              " | ".join(f"{c} rho / pick" for c in CRITERIA) + " |", "|---|---|---|---|" + "---|" * len(CRITERIA)]
    for name, part in table.groupby("dataset", sort=False):
        cells = [f"{r.spearman:+.2f} / {r.pick_ari:.3f}" for r in part.itertuples()]
        first = part.iloc[0]
        lines.append(f"| {name} | {first.n_trials} | {first.default_ari:.3f} | {first.best_ari:.3f} | "
                     + " | ".join(cells) + " |")
    if SCALE_JSON.is_file():
        info = json.loads(SCALE_JSON.read_text())
        lines += ["", "## Criteria alone at scale (`--scale`)", "",
                  f"{info['n_spots']:,} spots (64-d fused embedding, two 50-d modalities, 8 labels): all criteria "
                  f"(asw on a 10,000-spot sample, spatial coherence, consistency on 2,000 query spots, stability, "
                  f"composite) in {info['wall_s']} s, peak resident memory {info['peak_rss_mib']} MiB "
                  f"(process before: {info['rss_before_mib']} MiB). Machine: {info.get('machine', '')}"]
    text = "\n".join(lines) + "\n"
    out_md.write_text(text)
    return text


# ------------------------------------------------------------------------------------------------ scale


def scale(n_spots: int, out: Path) -> None:
    """The criteria alone on `n_spots` random spots: wall time and peak resident memory of this process."""
    from spamo.metrics import label_free_scores
    from spamo.selection import criteria

    rng = np.random.default_rng(0)
    fused = rng.standard_normal((n_spots, 64)).astype(np.float32)
    fused /= np.linalg.norm(fused, axis=1, keepdims=True)
    features = [rng.standard_normal((n_spots, 50)).astype(np.float32) for _ in range(2)]
    coords = rng.uniform(-2, 2, size=(n_spots, 2))
    labels = rng.integers(0, 8, n_spots)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    base = label_free_scores(fused, labels, coords=coords)
    values = criteria(fused, features, base["Spatial coherence"], labels, rng.integers(0, 8, n_spots))
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info = {"n_spots": n_spots, "wall_s": round(wall, 2), "peak_rss_mib": round(peak),
            "rss_before_mib": round(before), "machine": machine_line(),
            **{k: round(v, 4) for k, v in {**base, **values}.items()}}
    out.write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="*", help="preset names (default: every preset)")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--report-every", type=int, default=5)
    parser.add_argument("--cluster-method", default="gmm")
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--data-root", default=str(ROOT / "Data" / "selection"))
    parser.add_argument("--out", type=Path, help="trials CSV (or --scale's JSON); the table goes beside it "
                        "(default: the files under benchmarks/results)")
    parser.add_argument("--summary", action="store_true", help="only write the table from --out")
    parser.add_argument("--scale", type=int, help="measure the criteria alone on this many spots")
    parser.add_argument("--note", help="a line for the table's header (e.g. how loaded the machine was)")
    args = parser.parse_args()
    if args.scale:
        scale(args.scale, args.out or SCALE_JSON)
        return
    table = RESULT_MD if args.out is None else args.out.with_suffix(".md")
    args.out = args.out or TRIALS_CSV
    if not args.summary:
        from spamo.simulate import load_presets

        presets = load_presets()
        names = args.presets or list(presets)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for name in names:
            run_preset(presets[name], args, args.out, lambda message: print(message, flush=True))
            summarise(args.out, table)
    print(summarise(args.out, table, args.note))


if __name__ == "__main__":
    main()
