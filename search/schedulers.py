"""The search's trial schedulers (ASHA, or none): Ray Tune's, plus the driver-memory upkeep only a scheduler can do.

With worker reuse (`reuse_actors`), Ray Tune asks for a new worker for the next pending trial while the running ones
still train, and when a running trial ends first it hands that trial's cached worker to the pending trial and
cancels the requested one. Cancelling queues a `stop` call on the never-started worker, which Ray's actor manager
keeps forever (`_pending_actors_to_enqueued_actor_tasks`, drained only when a worker starts): a tracked worker, a
tracked task and their callbacks bound to the controller, for nearly every trial of the search (271 of 300 in
benchmarks/results/tune.md). A scheduler is the one part of a search that Ray hands its controller to, so the
schedulers here drop those entries whenever a trial ends. They change no scheduling decision.
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler


def drop_cancelled_actor_tasks(tune_controller) -> int:
    """Forget the calls queued on workers that were requested and then cancelled before they started (no-op, 0, for
    a Ray whose controller looks different); the number of workers forgotten."""
    manager = getattr(tune_controller, "_actor_manager", None)
    queued = getattr(manager, "_pending_actors_to_enqueued_actor_tasks", None)
    pending = getattr(manager, "_pending_actors_to_attrs", None)
    if not isinstance(queued, dict) or not isinstance(pending, dict):
        return 0
    cancelled = [actor for actor in queued if actor not in pending]  # still pending: its calls run once it starts
    for actor in cancelled:
        del queued[actor]
    return len(cancelled)


class _DropsCancelledActorTasks:
    """Mixin for a Ray Tune scheduler: after a trial ends (completed, failed or removed), drop the calls queued on
    cancelled workers (see the module docstring)."""

    def on_trial_complete(self, tune_controller, trial, result):
        super().on_trial_complete(tune_controller, trial, result)
        drop_cancelled_actor_tasks(tune_controller)

    def on_trial_error(self, tune_controller, trial):
        super().on_trial_error(tune_controller, trial)
        drop_cancelled_actor_tasks(tune_controller)

    def on_trial_remove(self, tune_controller, trial):
        super().on_trial_remove(tune_controller, trial)
        drop_cancelled_actor_tasks(tune_controller)


    def for_next_segment(self):
        """The scheduler for the next segment of the search (search.segments): this one, its state kept."""
        return self


class AshaScheduler(_DropsCancelledActorTasks, ASHAScheduler):
    """Ray Tune's ASHA, keeping the driver's memory flat (see the module docstring). Saved when a segment of a
    search ends and read by the next (search.segments.SCHEDULER_FILE), so the rungs (each trial's metric at each
    milestone) carry over: a new segment's first trials are judged against every trial before them, not against
    empty rungs."""

    def for_next_segment(self):
        """This scheduler, its rungs kept, without the trials of the segment that ended: an ended trial leaves
        `_trial_info` only when it completes (Ray's ASHA forgets nothing of a trial that failed)."""
        self._trial_info.clear()
        return self

    def recorded(self) -> list[int]:
        """How many trials each rung recorded, lowest milestone first (for tests and benchmarks)."""
        return [len(recorded) for bracket in self._brackets for _, recorded in reversed(bracket._rungs)]


class FifoScheduler(_DropsCancelledActorTasks, FIFOScheduler):
    """Ray Tune's first-in-first-out scheduler (no early stopping), keeping the driver's memory flat."""
