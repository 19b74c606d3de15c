"""The benchmark datasets' table (`configs/datasets.toml`, docs/data.md section 1): which folder, data type, files,
ground truth and K each dataset key has.

On the ground floor, so that both the loaders (`spamo.datasets`) and the simulator (`spamo.simulate`, which writes
these layouts) read the one table without importing each other.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from pathlib import Path

from spamo.errors import SpamoInputError
from spamo.package_data import CONFIG_DIR

DATASETS_TOML = CONFIG_DIR / "datasets.toml"


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark dataset: where its folder is (under the data root) and which file is which modality."""

    key: str
    folder: str
    data_type: str
    modality_files: dict  # modality name -> file name, in modality order (RNA first)
    truth_file: str
    n_clusters: int

    def path(self, data_root: str | Path = "./Data") -> Path:
        return Path(data_root) / self.folder


@functools.lru_cache(maxsize=1)
def dataset_registry() -> dict[str, DatasetSpec]:
    """The dataset table of `configs/datasets.toml` (the one source of truth for the layouts)."""
    with open(DATASETS_TOML, "rb") as fh:
        table = tomllib.load(fh)
    return {key: DatasetSpec(key=key, folder=entry["folder"], data_type=entry["data_type"],
                             modality_files=dict(entry["modalities"]), truth_file=entry["truth_file"],
                             n_clusters=int(entry["n_clusters"]))
            for key, entry in table.items()}


def get_dataset_spec(key: str) -> DatasetSpec:
    registry = dataset_registry()
    if key not in registry:
        raise SpamoInputError("dataset", f"unknown dataset '{key}' (known: {', '.join(registry)})")
    return registry[key]
