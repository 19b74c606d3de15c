"""Where the files that travel with the package live: the dataset table, search spaces, published numbers, cluster
files.

Their one source of truth is the repository's top-level `configs/`; `spamo/configs` is a link to it, so the same
files are found through `importlib.resources` in a checkout, an editable install and an installed wheel (which
carries them as package data, see `pyproject.toml`).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

CONFIG_DIR = Path(str(files("spamo").joinpath("configs")))
