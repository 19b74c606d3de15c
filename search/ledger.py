"""The search's own record of every ended trial, one JSON file per trial, written by the driver.

Ray's experiment state is saved every few seconds; this ledger is written the moment a trial ends. On resume the
trials it records as finished are not trained again (their recorded result is replayed), so a driver killed between
a trial's end and Ray's next snapshot loses and repeats nothing. `trials.parquet` is built from it.
"""

from __future__ import annotations

import ctypes
import json
import math
import re
import time
from pathlib import Path

import ray
from ray import tune

from spamo.io import atomic_write_text

LEDGER_DIR = "ledger"
# Keys Ray adds to every result; the ledger keeps only what the trial reported.
RAY_RESULT_KEYS = {
    "timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date", "time_this_iter_s",
    "time_total_s", "pid", "config", "time_since_restore", "iterations_since_restore",
    "experiment_tag", "should_checkpoint",
}


def _clean(value):
    """JSON-safe scalars (NaN becomes None)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


def trial_record(trial, status: str, error: str | None = None) -> dict:
    result = {k: _clean(v) for k, v in (trial.last_result or {}).items()
              if k not in RAY_RESULT_KEYS and k != "trial_error" and not isinstance(v, dict)}
    result["retries"] = int(trial.num_failures)  # system failures Ray retried (the trial's own never are)
    tag = str(trial.experiment_tag).split("_", 1)[0]
    return {
        "trial_id": trial.trial_id,
        "number": int(tag) if tag.isdigit() else None,
        "status": status,
        "error": error,
        "params": {k: _clean(v) for k, v in dict(trial.config).items()},
        "result": result,
        "recorded_at": time.time(),
    }


EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")


def exception_summary(text: str, limit: int = 300) -> str:
    """The last exception of a traceback text and its message (its last exception line and what follows)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    starts = [i for i, line in enumerate(lines) if EXCEPTION_LINE.match(line)]
    return " ".join(lines[starts[-1] if starts else -1:])[:limit]


def error_summary(trial) -> str:
    """The trial's exception and its message, from the error file Ray wrote."""
    path = trial.error_file
    text = Path(path).read_text(errors="replace") if path and Path(path).is_file() else ""
    return exception_summary(text) or "trial failed (no error text recorded)"


def trial_status(trial) -> str:
    """`finished` (trained to the end), `error` (the trial's own failure, reported as its last result, see
    search.trainable), or `stopped_early` (the scheduler stopped it)."""
    result = trial.last_result or {}
    if result.get("trial_error"):
        return "error"
    return "finished" if result.get("final") else "stopped_early"


class TrialLedger(tune.Callback):
    """Ray Tune callback writing `ledger/<trial_id>.json` when a trial completes or fails."""

    def __init__(self, run_dir: str | Path):
        self.folder = str(Path(run_dir).resolve() / LEDGER_DIR)

    def _write(self, record: dict) -> None:
        path = Path(self.folder) / f"{record['trial_id']}.json"
        if path.exists() and json.loads(path.read_text()).get("status") == "finished":
            return  # a replayed trial: keep the original record
        atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True))

    def on_trial_complete(self, iteration, trials, trial, **info):
        status = trial_status(trial)
        self._write(trial_record(trial, status, (trial.last_result or {}).get("trial_error")))

    def on_trial_error(self, iteration, trials, trial, **info):  # a system failure with no retry left
        self._write(trial_record(trial, "error", error_summary(trial)))


def load_ledger(run_dir: str | Path) -> dict[str, dict]:
    """Trial id -> record, for every trial that ended."""
    folder = Path(run_dir) / LEDGER_DIR
    records = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = json.loads(path.read_text())
        records[record["trial_id"]] = record
    return records


def finished_results(records: dict[str, dict]) -> dict[str, dict]:
    """Trial id -> final report of the finished trials (what a resumed run replays instead of training)."""
    return {tid: {k: v for k, v in r["result"].items() if k != "replayed"}
            for tid, r in records.items() if r["status"] == "finished"}


# What Ray Tune still needs of an ended trial's last result: its own bookkeeping keys and the few this search reads
# back (status, the log line); everything else is in the ledger already.
KEPT_RESULT_KEYS = (RAY_RESULT_KEYS - {"config"}) | {"epoch", "final", "trial_error", "start_epoch", "replayed"}


def _malloc_trim():
    """glibc's `malloc_trim`, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):
        return None


MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Hand the memory the driver has freed back to the system. Ray Tune rebuilds its experiment snapshot (a JSON
    text of every trial, ~13 KB a trial) every few seconds; glibc keeps the freed buffers, which grow with the
    snapshot, so without this the driver's resident memory grows with the trials though its live objects do not
    (benchmarks/results/tune.md: released at every trial end, about 50 us)."""
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)


class ForgetEnded(tune.Callback):
    """Keeps the driver's memory flat over long searches: Ray Tune holds every trial of the search in its controller,
    and for each one its last result, running statistics (max, min, mean, last-5 and last-10 means, two deques) of
    every number the trial ever reported, config values included, and cached JSON copies of both: about 120 KiB a
    trial here (tracemalloc, benchmarks/results/tune.md). When a trial ends, after the searcher, the scheduler and the
    callbacks before this one (the ledger, the log: pass it last) have read its result and before Ray marks the trial
    for its next snapshot, its last result is cut to `KEPT_RESULT_KEYS` plus the metric, and its statistics to the
    metric and the training iteration (all Ray's best-trial lookups use), without the last-n deques. Ray's own callbacks that follow read no
    more than those (training_iteration)."""

    def __init__(self, metric: str):
        self.keep, self.analysed = KEPT_RESULT_KEYS | {metric}, {metric, "training_iteration"}

    def on_trial_complete(self, iteration, trials, trial, **info):
        forget(trial, self.keep, self.analysed)
        release_freed_memory()

    def on_trial_error(self, iteration, trials, trial, **info):
        forget(trial, self.keep, self.analysed)
        release_freed_memory()


def forget(trial, keep: set, analysed: set) -> None:
    """Cut an ended trial's last result to `keep` and its statistics to `analysed` (no-op for a Ray whose trials look
    different)."""
    metadata = getattr(trial, "run_metadata", None)
    if metadata is None or not isinstance(getattr(metadata, "last_result", None), dict):
        return
    metadata.last_result = {k: v for k, v in metadata.last_result.items() if k in keep}
    if isinstance(getattr(metadata, "metric_analysis", None), dict):
        metadata.metric_analysis = {k: v for k, v in metadata.metric_analysis.items() if k in analysed}
    if isinstance(getattr(metadata, "metric_n_steps", None), dict):
        metadata.metric_n_steps = {}  # the deques of the last-n means: only a running trial adds to them
    # the reference to the worker's auto-filled metrics (host, pid), asked for when the trial started and read only
    # by a trial that never reported: held, it pins an object in the driver's core worker for the whole search
    if isinstance(getattr(trial, "_default_result_or_future", None), ray.ObjectRef):
        trial._default_result_or_future = None


class TrialLog(tune.Callback):
    """One line per trial start and end on the driver's console (Ray's own tables are switched off)."""

    def __init__(self, metric: str, num_samples: int):
        self.metric, self.num_samples, self.ended = metric, num_samples, 0

    def _say(self, trial, text: str) -> None:
        tag = str(trial.experiment_tag).split("_", 1)[0]
        print(f"[tune] trial {tag}/{self.num_samples} ({trial.trial_id}) {text}", flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._say(trial, "started")

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        if result.get("trial_error"):
            self._say(trial, f"failed: {result['trial_error']}")
            return
        value = result.get(self.metric)
        shown = f"{self.metric}={value:.4f}" if isinstance(value, (int, float)) else f"{self.metric}=?"
        self._say(trial, f"{trial_status(trial).replace('_', ' ')} at epoch {result.get('epoch')}: {shown}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._say(trial, f"failed: {error_summary(trial)}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._say(trial, f"lost ({error_summary(trial)}); retry {trial.num_failures} of at most "
                         f"{trial.max_failures}, from its last checkpoint")
