"""Reading the files of a dataset folder (docs/data.md section 1): AnnData files and label files as one-line
refusals naming the file, the modality files given as NAME=FILE, the conventional file names of each modality, and
which known layout a folder follows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spamo import modalities as modality_kinds
from spamo.dataset_table import DatasetSpec, dataset_registry
from spamo.errors import SpamoInputError


def read_h5ad_checked(path: str | Path):
    """Read an .h5ad file; any failure is a one-line refusal naming the file."""
    import anndata as ad

    path = Path(path)
    if not path.exists():
        raise SpamoInputError(path, "file not found")
    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the file is not usable AnnData
        raise SpamoInputError(path, f"cannot be read as AnnData ({_short(exc)})") from None


def read_truth_file(path: str | Path) -> np.ndarray:
    """One label per line (blank lines ignored); integer labels are kept, other labels become integer codes."""
    path = Path(path)
    try:
        lines = [line.strip() for line in path.read_text().splitlines()]
    except FileNotFoundError:
        raise SpamoInputError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpamoInputError(path, f"cannot be read as text ({_short(exc)})") from None
    tokens = [line for line in lines if line]
    if not tokens:
        raise SpamoInputError(path, "ground-truth file is empty")
    try:
        values = np.array([float(t) for t in tokens])
        if np.isfinite(values).all() and (values == np.round(values)).all():
            return values.astype(np.int64)
    except ValueError:
        pass
    _, codes = np.unique(np.array(tokens), return_inverse=True)
    return codes.astype(np.int64)


def parse_modality_files(text: str) -> dict[str, str]:
    """"RNA=a.h5ad,ADT=b.h5ad" -> {"RNA": "a.h5ad", "ADT": "b.h5ad"} (order kept: the first is modality 1)."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise SpamoInputError("--modalities", f"'{item}' is not of the form NAME=FILE")
        out[name.strip()] = value.strip()
    if not out:
        raise SpamoInputError("--modalities", "no modality given")
    return out


def detect_layout(folder: str | Path) -> DatasetSpec | None:
    """The known layout a folder follows: the one named like the folder, else the one with most files present."""
    folder = Path(folder)
    candidates = [spec for spec in dataset_registry().values()
                  if all((folder / f).exists() for f in spec.modality_files.values())]
    if not candidates:
        return None
    named = [spec for spec in candidates if spec.folder == folder.name]
    if named:
        return named[0]
    return max(candidates, key=lambda spec: len(spec.modality_files))


def _under(folder: Path, file: str | Path) -> Path:
    file = Path(file)
    return file if file.is_absolute() else folder / file


def _conventional_file(folder: Path, modality: str) -> Path:
    """The first of the modality's conventional file names that exists (the first one if none does)."""
    names = modality_kinds.default_files(modality)
    for name in names:
        if (folder / name).exists():
            return folder / name
    return folder / names[0]


def _conventional_truth(folder: Path) -> Path | None:
    """The ground-truth file of a known layout, if the folder has exactly one of them."""
    found = [folder / spec.truth_file for spec in dataset_registry().values() if (folder / spec.truth_file).exists()]
    return found[0] if len(found) == 1 else None


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]
