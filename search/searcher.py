"""Ray's OptunaSearch with one tolerance a resumable search needs."""

from __future__ import annotations

import optuna
from ray.tune.search.optuna import OptunaSearch


class ResumableOptunaSearch(OptunaSearch):
    """OptunaSearch that ignores results for trials its study already closed.

    After a killed driver, a trial that finished (and was told to the Optuna study on disk) after Ray's last snapshot
    is restarted by Ray and replays its recorded result. Optuna refuses to update a finished trial, which is right and
    harmless here, but Ray's OptunaSearch would let that refusal stop the whole search.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
