"""Ray's OptunaSearch with the tolerances a resumable search with self-reported failures needs."""

from __future__ import annotations

import optuna
from ray.tune.search.optuna import OptunaSearch


class ResumableOptunaSearch(OptunaSearch):
    """OptunaSearch that ignores results for trials its study already closed, and tells a trial's own failure as
    FAIL.

    After a killed driver, a trial that finished (and was told to the Optuna study on disk) after Ray's last snapshot
    is restarted by Ray and replays its recorded result. Optuna refuses to update a finished trial, which is right and
    harmless here, but Ray's OptunaSearch would let that refusal stop the whole search.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if result.get("trial_error") or trial_id not in self._ot_trials:  # a failure report, or see below
            return
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """A trial that reported its own failure (search.trainable) is FAIL in the study, as a raised one was."""
        if result and result.get("trial_error"):
            result, error = None, True
        if trial_id not in self._ot_trials:
            self._tell_unknown(result, error)
            return
        super().on_trial_complete(trial_id, result=result, error=error)
        if trial_id in self._completed_trials:  # told: the study holds it; keep the id, drop the Optuna handle (its
            self._ot_trials[trial_id] = None     # cached copy of the trial), or the driver grows with every trial

    def _tell_unknown(self, result: dict | None, error: bool) -> None:
        """A trial this searcher's saved state does not know: the driver was killed after the trial was suggested
        but before the searcher's next snapshot, and Ray restarted it from its own (newer) experiment state. Its
        outcome is told to the study's open record of it (same parameters), or added as an evaluated point."""
        result = result or {}
        config = result.get("config") if isinstance(result.get("config"), dict) else {
            key.split("/", 1)[1]: value for key, value in result.items() if key.startswith("config/")}
        params = {name: config[name] for name in self._space if name in config}
        value = result.get(self.metric)
        if len(params) != len(self._space):
            return
        failed = error or value is None or value != value
        for orphan in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if orphan.params == params:  # the study's own record of this trial, left open by the killed driver
                state = optuna.trial.TrialState.FAIL if failed else optuna.trial.TrialState.COMPLETE
                self._ot_study.tell(orphan.number, None if failed else float(value), state=state)
                return
        self.add_evaluated_point(params, None if failed else float(value), error=failed)
