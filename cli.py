"""The `spamo` command line (Typer).

Commands only parse options and call into the package; refusals of bad input (`SpamoInputError`) become one line on
stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import List, Optional

import typer

from spamo.errors import SpamoInputError

app = typer.Typer(help="SPAMO spatial multi-omics integration: train, tune, evaluate.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Simulate, download and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def refusals_as_one_line(func):
    """Turn a SpamoInputError into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except SpamoInputError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=exc.exit_code) from None

    return wrapper


# ---------------------------------------------------------------------------------------------------------- data
# (commands are added below by the data layer)


# ---------------------------------------------------------------------------------------------------------- run
# (spamo run is added below by the pipeline)


# ---------------------------------------------------------------------------------------------------------- score
# (spamo score is added below by the clustering/metrics layer)


# ---------------------------------------------------------------------------------------------------------- tune
# (spamo tune is added below by the search layer)


# ---------------------------------------------------------------------------------------------------------- evaluate
# (spamo evaluate is added below by the evaluation layer)


# ---------------------------------------------------------------------------------------------------------- analyze
# (spamo analyze is added below by the downstream-analysis layer)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
