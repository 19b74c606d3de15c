"""The clustering backends a user registered in the driver, sent to Ray's workers with the work.

`spamo.clustering.register_backend` registers in the calling process only, so a backend registered in a notebook is
unknown to the worker processes that train and cluster the trials (and the evaluation's seed runs). The search's
trial context (`search.trainable.TrialContext`) and the evaluation's seed-run tasks (`evaluation.evaluate`) carry
`travelling_backends()`; Ray pickles them with its cloudpickle, which sends a function defined in `__main__` by
value and one of an importable module by reference, and the worker registers them before it builds a config.

Whether a backend pickles is known in the driver, so one that does not (it holds a lock, an open file, a
connection) is refused here in one line, before anything is started or written, not as a failure of every trial.
"""

from __future__ import annotations

from ray import cloudpickle

from spamo.clustering.base import Backend, user_backends
from spamo.errors import SpamoInputError

__all__ = ["travelling_backends"]


def travelling_backends() -> dict[str, Backend]:
    """The user-registered backends (`spamo.clustering.base.user_backends`), each checked to pickle the way Ray will
    send it; a backend that does not is refused in one line."""
    backends = user_backends()
    for name, func in backends.items():
        try:
            cloudpickle.dumps(func)
        except Exception as exc:  # noqa: BLE001 - whatever stops pickling, the user gets one line
            problem = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
            raise SpamoInputError("cluster_method", f"the backend '{name}' registered in this process cannot be sent "
                                                    f"to Ray's workers ({problem}): define it, and what it uses, at "
                                                    "the top level of a module or notebook cell") from None
    return backends
