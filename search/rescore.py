"""`spamo tune --rescore NAME`: recompute the label-free criteria of a finished search without retraining.

Every finished trial left `found.npz` in its trial folder (its domains, the fused embedding as float16 and the
k-means labellings the stability criterion compares; `spamo.selection.TrialFindings`). The data is loaded and
preprocessed again exactly as the search did (same request, same seed), each trial's criteria are recomputed from
its file, trials.parquet gets the new values, and best_config.toml is rewritten for the chosen metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from search.results import best_row, write_best_config, write_parquet
from search.run_folder import RESULTS_ROOT, RUN_FILE, read_request, run_folder
from search.tuning import choose_metric, load_search, metric_reason
from spamo.errors import SpamoInputError
from spamo.selection import FOUND_FILE, rescore_found


@dataclass
class RescoreOutcome:
    run_dir: Path
    metric: str
    rescored: int
    missing: int
    best: dict | None


def rescore_run(name: str, metric: str | None = None, storage: str | None = None, results_root=None,
                log=print) -> RescoreOutcome:
    import pandas as pd


    run_dir = run_folder(name, storage, results_root or RESULTS_ROOT)
    if not (run_dir / RUN_FILE).is_file():
        raise SpamoInputError("--rescore", f"no tune run named '{name}' in {run_dir.parent}")
    trials_path = run_dir / "trials.parquet"
    if not trials_path.is_file():
        raise SpamoInputError(trials_path, "no trials.parquet: the search wrote no results to rescore")
    request = read_request(run_dir)
    frame = pd.read_parquet(trials_path)
    search = load_search(request, run_dir)
    chosen = choose_metric(metric, search.prepared.truth is not None)
    rescored = missing = 0
    for index, row in frame.iterrows():
        if row.get("status") != "finished":
            continue
        found = list(run_dir.glob(f"trial_*_{row['trial_id']}/{FOUND_FILE}"))
        if not found:
            missing += 1
            continue
        values = rescore_found(found[0], search.prepared.features, search.prepared.coords,
                               seed=int(row.get("seed", request.seed)))
        for column, value in values.items():
            frame.loc[index, column] = value
        rescored += 1
    if rescored == 0:
        raise SpamoInputError("--rescore", f"no finished trial of '{name}' kept its {FOUND_FILE} "
                                           "(was it run with --no-keep-embeddings?)")
    frame["metric"] = chosen
    write_parquet(frame, trials_path)
    best = best_row(frame, chosen)
    if best is not None:
        write_best_config(best, chosen, run_dir / "best_config.toml", why=metric_reason(chosen, metric))
    log(f"rescored {rescored} trial(s) of {name}" + (f" ({missing} without {FOUND_FILE})" if missing else "")
        + f"; optimising {metric_reason(chosen, metric)}")
    if best is not None:
        log(f"best: trial {int(best['number'])} {chosen} = {float(best[chosen]):.4f} -> {run_dir / 'best_config.toml'}")
    return RescoreOutcome(run_dir, chosen, rescored, missing, None if best is None else best.to_dict())
