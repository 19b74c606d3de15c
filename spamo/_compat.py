"""Workarounds for the libraries spamo runs on, in one place, each with the condition under which it can go.

Every entry says what it works around, where it is used, and when to delete it. Nothing here acts at import: no
process-wide warning filter, no `matplotlib.use`.
"""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def rpy2_environment_kept():
    """Undo the environment changes rpy2 makes when it starts R.

    rpy2 prepends R's library folders to LD_LIBRARY_PATH; R, already loaded, no longer needs them, but every Python
    subprocess started afterwards (Ray workers, `spamo` children) would then load the wrong libpython.
    Used by: `spamo.clustering.mclust` around `import rpy2.robjects`.
    Remove when: rpy2 starts R without editing `os.environ` (true of no rpy2 3.5.x release).
    """
    before = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(before):
            if key.startswith("LD_"):
                del os.environ[key]
        for key, value in before.items():
            if key.startswith("LD_") and os.environ.get(key) != value:
                os.environ[key] = value
