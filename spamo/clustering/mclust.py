"""The published clustering, R's mclust (model EEE), called in this process through rpy2.

The matrix crosses to R as a double vector with dimensions, never as R source text. Everything R-specific is here:
probing whether R and mclust are usable (once per process), one lock around every call into R (R is
single-threaded), R's console chatter sent to the log, and rpy2's conversion rules set up inside each call (rpy2
keeps them in a context variable, which a thread other than the importing one does not see: Ray reuses worker
threads, so the rules cannot be set once at import).

R can be switched off with the environment variable ``SPAMO_DISABLE_R=1``: ``auto`` then uses ``gmm`` and ``mclust``
refuses, for example where embedding R next to Ray workers is unwanted.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import warnings

import numpy as np

from spamo._compat import rpy2_environment_kept
from spamo.clustering.base import BACKENDS, ClusteringFailed, ClusterRequest, register_backend
from spamo.errors import MissingDependencyError

log = logging.getLogger(__name__)

R_INSTALL_HINT = ('install R and mclust (apt-get install r-base-core r-cran-mclust) and rpy2 (pip install "spamo[r]"), '
                  "or choose --cluster-method gmm")
_R_LOCK = threading.Lock()
_START_LOCK = threading.Lock()  # one start of R at a time (a background start and a caller's probe)
_OFF_MAIN_THREAD = "R is not initialized by the main thread"  # rpy2's notice when a helper thread starts R
_background_start: threading.Thread | None = None  # the helper thread of start_r_in_background, once started


@functools.lru_cache(maxsize=1)
def _r_problem() -> str | None:
    """Why R's mclust cannot be used here (None when it can). Probed once: starting R costs about a second."""
    with _START_LOCK:  # a probe that finds the background start running waits for it, then finds R started
        try:
            with rpy2_environment_kept():
                import rpy2.robjects as ro
        except Exception as exc:  # ImportError, or R itself failing to start
            return f"rpy2 cannot start R ({exc.__class__.__name__}: {str(exc).strip()[:120]})"
    try:
        with _R_LOCK, _in_r():
            if not bool(ro.r["requireNamespace"]("mclust", quietly=True)[0]):
                return "the R package mclust is not installed"
    except Exception as exc:
        return f"R failed while looking for mclust ({str(exc).strip()[:120]})"
    return None


def start_r_in_background() -> None:
    """Start R (and look for mclust) in a helper thread, so that its start-up (about a second) overlaps the
    preprocessing and training of a run instead of following them (`benchmarks/results/run.md`).

    Nothing changes but the timing: the clustering's own probe waits for this start and uses the R it started (R
    runs no code of the run before the clustering asks it to). rpy2 notes that R started off the main thread cannot
    be interrupted with Ctrl-C; that is not so here (rpy2 starts R with its signal handlers off, Python keeps
    SIGINT), so that one notice is not shown. No-op when R is switched off or already probed.
    """
    global _background_start
    with _START_LOCK:  # one helper however often a run's stages ask (spamo.pipeline asks at each)
        if r_disabled() or _background_start is not None or _r_problem.cache_info().currsize:
            return
        _background_start = threading.Thread(target=_r_problem, name="spamo-start-R", daemon=True)
    warnings.filterwarnings("ignore", message=_OFF_MAIN_THREAD, category=UserWarning, module="rpy2")
    _background_start.start()


def r_available() -> bool:
    """True when R, rpy2 and mclust are usable and the user has not set SPAMO_DISABLE_R=1."""
    return not r_disabled() and _r_problem() is None


def clusters_in_r(method: str) -> bool:
    """Whether `--cluster-method method` clusters in R (mclust, or `auto` where R is usable)."""
    return method in ("mclust", "auto") and r_available()


def r_disabled() -> bool:
    return os.environ.get("SPAMO_DISABLE_R", "").strip().lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def _in_r():
    """The state of one call into R: rpy2's default conversion rules in this thread, R's console sent to the log."""
    import rpy2.robjects as ro
    from rpy2.rinterface_lib import callbacks
    from rpy2.robjects.conversion import localconverter

    saved = callbacks.consolewrite_warnerror, callbacks.consolewrite_print
    callbacks.consolewrite_warnerror = lambda text: log.debug("R: %s", text.rstrip())
    callbacks.consolewrite_print = lambda text: log.debug("R: %s", text.rstrip())
    try:
        with localconverter(ro.default_converter):
            yield
    finally:
        callbacks.consolewrite_warnerror, callbacks.consolewrite_print = saved


@register_backend("mclust")
def mclust_labels(points: np.ndarray, n_clusters: int, request: ClusterRequest) -> np.ndarray:
    """R mclust, model EEE, G = n_clusters, after set.seed(seed), as the published method runs it."""
    if r_disabled():
        raise MissingDependencyError("mclust", "R is switched off (SPAMO_DISABLE_R is set): unset it, "
                                               "or choose --cluster-method gmm")
    problem = _r_problem()
    if problem is not None:
        raise MissingDependencyError("mclust", f"{problem}; {R_INSTALL_HINT}")
    import rpy2.robjects as ro
    from rpy2.rinterface_lib.embedded import RRuntimeError

    data = np.ascontiguousarray(points, dtype=np.float64)
    with _R_LOCK, _in_r():
        # Mclust calls its helpers by name, so the package must be attached (constant R code, no data in it)
        ro.r("suppressWarnings(suppressPackageStartupMessages(library(mclust)))")
        mclust_fit = ro.r["Mclust"]
        matrix = ro.r["matrix"](ro.FloatVector(data.ravel(order="F")), nrow=data.shape[0], ncol=data.shape[1])
        ro.r["set.seed"](int(request.seed))
        try:
            fit = mclust_fit(matrix, G=n_clusters, modelNames="EEE", verbose=False)
        except RRuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1].strip()  # the first lines repeat the call, data included
            raise ClusteringFailed("mclust", f"no fit: {reason[:160]}") from None
        if fit is ro.NULL:
            raise ClusteringFailed("mclust", f"no EEE fit with G={n_clusters}")
        labels = np.asarray(fit.rx2("classification"), dtype=np.int64)
    return labels


@register_backend("auto")
def auto_labels(points: np.ndarray, n_clusters: int, request: ClusterRequest) -> np.ndarray:
    """mclust when R is usable (the published method), else the same model through scikit-learn (`gmm`)."""
    if r_available():
        try:
            return mclust_labels(points, n_clusters, request)
        except ClusteringFailed as exc:
            warnings.warn(f"{exc}; using gmm instead", RuntimeWarning, stacklevel=2)
    return BACKENDS["gmm"](points, n_clusters, request)
