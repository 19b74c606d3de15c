"""Typed refusals of bad input.

Every refusal names the file (or option) at fault and the problem, so the CLI can print exactly one line and exit
with code 2 without a traceback.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path


class SpamoInputError(Exception):
    """Input the platform refuses: `where` is a file path or an option name, `problem` a short sentence."""

    exit_code = 2

    def __init__(self, where: str | Path, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")


class MissingDependencyError(SpamoInputError):
    """An optional dependency (R, mclust, rpy2, network) is not available for the requested action."""


@contextlib.contextmanager
def quiet_readers():
    """Silence anndata's and mudata's warnings while data is read and checked: a refusal (duplicated spot names,
    say) is then the one line of its SpamoInputError, not four library warnings before it. Only inside the block;
    no process-wide filter."""
    with warnings.catch_warnings():
        for module in (r"anndata(\..*)?", r"mudata(\..*)?"):
            warnings.filterwarnings("ignore", module=module)
        warnings.filterwarnings("ignore", message=r".*names are not unique")
        yield
