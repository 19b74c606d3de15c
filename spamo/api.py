"""The Python API: the one code path of spamo; the `spamo` command line is a thin layer over it.

scverse style: objects in memory in, objects in memory out, nothing written unless asked.

- `fit(data, data_type=..., n_clusters=..., **settings) -> RunResult` and `load(...)`: one training run
  (`spamo.api_run`).
- `tune(...) -> TuneResult` and `evaluate(...) -> dict[str, pyarrow.Table]`: the Ray Tune search and the
  evaluation of its best configurations (`spamo.api_search`).
- `analyze(result_or_run_folder, ...)`: the downstream biology of the domains (`spamo.api_analyze`).

Every refusal of bad input is a `spamo.errors.SpamoInputError` carrying the one line the CLI prints (docs/data.md
section 4). Importing this module loads all three; `import spamo` and the command line load only the one a call
needs.
"""

from __future__ import annotations

from spamo.api_analyze import analyze
from spamo.api_run import RunResult, build_run_config, fit, load, quiet_readers
from spamo.api_search import TuneResult, evaluate, tune

__all__ = ["fit", "tune", "evaluate", "analyze", "load", "RunResult", "TuneResult", "build_run_config",
           "quiet_readers"]
