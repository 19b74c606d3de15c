"""A long search runs as successive segments: one Ray Tune `Tuner.fit()` of at most `SEGMENT_TRIALS` trials each,
all over the one Optuna study of the run folder.

Why: Ray Tune's controller keeps every `Trial` of its experiment for as long as it runs (about 16 KiB a trial, and its
experiment snapshot, rewritten every few seconds, is a JSON text of all of them), so one Tuner over a 10,000-trial
search grows the driver with every trial (benchmarks/results/tune.md). Each segment's Tuner, Trials, searcher and
scheduler live in a process of their own that ends with the segment (search.segment_run), so what they leave in
the allocator, in Ray's core worker and in Optuna's caches goes with it, and the driver holds nothing per trial.

What carries over between segments:
- the trial numbers: segment k numbers its trials from where segment k-1 stopped (`NumberedTrials` starts Ray's own
  trial counter there), so folder names, ledger records, the log's "trial n/N" and trials.parquet count 1..N;
- the study: each segment's searcher is a new `ResumableOptunaSearch` on the same SQLite study (TPE sees every
  trial of every segment), with the published points only in the first and the sampler seeded `seed + segment`
  (a fresh sampler with the same seed would repeat the first segment's random proposals);
- ASHA's rungs: each segment runs in a process of its own (search.segment_run), which saves its scheduler's state
  (`SCHEDULER_FILE`) when the segment ends, before it records the end in segments.json; the next segment, in this
  driver or in one resumed after the driver was stopped or killed between the two, starts from it. A restored
  segment runs with the scheduler its Tuner pickled as it started (the rungs of the segments before it).

`segments.json` in the run folder records the segment size and each segment that ended, with the ids of trials the
ledger recorded but that Ray's snapshot lost (the driver was killed between the two; Ray ran a replacement with the
same number), which trials.parquet leaves out. A run folder without it (an older spamo) is one segment, whose Ray
experiment is where it always was (search.run_folder.experiment_path).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

from ray.tune.search import ConcurrencyLimiter, SearchGenerator

from spamo.io import atomic_path, atomic_write_text

# Trials per segment: Ray holds at most this many Trials at once. Small enough that a segment's Trials (~16 KiB each)
# stay under 2 MiB, large enough that a segment's start (new Tuner, workers) is rare against its trials.
SEGMENT_TRIALS = 100
SEGMENTS_FILE = "segments.json"
SCHEDULER_FILE = "scheduler.pkl"  # the trial scheduler as the last ended segment left it (pickled, as Ray does)


@dataclass(frozen=True)
class Segment:
    """One Tuner run of the search: trials `first`..`last` (1-based, inclusive); `number` is 1-based."""

    number: int
    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def holds(self, trial_number: int | None) -> bool:
        return trial_number is not None and self.first <= trial_number <= self.last


@dataclass
class SegmentPlan:
    """The segments of a search and which of them ended (their lost ledger records, see the module docstring)."""

    num_samples: int
    size: int
    ended: dict[int, list[str]] = field(default_factory=dict)  # segment number -> trial ids lost with a snapshot

    @property
    def segments(self) -> list[Segment]:
        starts = range(1, self.num_samples + 1, self.size)
        return [Segment(i + 1, first, min(first + self.size - 1, self.num_samples)) for i, first in enumerate(starts)]

    def next_segment(self) -> Segment | None:
        """The first segment that has not ended (None: all have)."""
        return next((s for s in self.segments if s.number not in self.ended), None)

    def lost(self) -> set[str]:
        return {trial_id for ids in self.ended.values() for trial_id in ids}


def write_plan(run_dir: Path, plan: SegmentPlan) -> None:
    record = {"trials_per_segment": plan.size, "ended": {str(k): v for k, v in sorted(plan.ended.items())}}
    atomic_write_text(Path(run_dir) / SEGMENTS_FILE, json.dumps(record, indent=1))


def read_plan(run_dir: Path, num_samples: int) -> SegmentPlan:
    """The run's plan; a run folder without one (written before segments) is a single segment."""
    path = Path(run_dir) / SEGMENTS_FILE
    if not path.is_file():
        return SegmentPlan(num_samples, max(1, num_samples))
    record = json.loads(path.read_text())
    return SegmentPlan(num_samples, int(record["trials_per_segment"]),
                       {int(k): list(v) for k, v in record.get("ended", {}).items()})


def write_scheduler(run_dir: Path, scheduler) -> None:
    with atomic_path(Path(run_dir) / SCHEDULER_FILE) as tmp:
        tmp.write_bytes(pickle.dumps(scheduler))


def read_scheduler(run_dir: Path):
    """The scheduler the last ended segment saved (None before the first ended: the segment builds a new one)."""
    path = Path(run_dir) / SCHEDULER_FILE
    return pickle.loads(path.read_bytes()) if path.is_file() else None


class NumberedTrials(SearchGenerator):
    """Ray's search generator, numbering the trials it creates from `segment.first` (Ray numbers from 1 in every
    experiment) and stopping at `segment.last`. Its counter is saved with Ray's snapshots, so a restored segment goes
    on from where it was. `max_concurrent`: Ray's ConcurrencyLimiter around the searcher, which Ray adds itself
    only when handed a bare searcher (it would ignore `max_concurrent_trials` for a search generator)."""

    def __init__(self, searcher, segment: Segment, max_concurrent: int | None = None):
        if max_concurrent:
            searcher = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
        super().__init__(searcher)
        self._counter = segment.first - 1  # the Tuner's num_samples is the segment's last number
        self._segment_size = segment.size

    @property
    def total_samples(self) -> int:
        """The trials this segment creates (what Ray's callbacks and its start-up table are told)."""
        return self._segment_size
