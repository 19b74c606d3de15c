"""Write results so that an interrupted or refused run leaves nothing half-written.

Files go to a temporary sibling first and are renamed into place; whole output folders are assembled in a temporary
sibling folder and renamed at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator
from spamo.errors import SpamoInputError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success its files are moved into `path` (created if needed).

    Files already in `path` that the run does not write are kept; on error the temporary folder is removed and
    `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a results folder should be as readable as any other
    try:
        yield tmp
        if not path.exists():
            os.replace(tmp, path)
        else:
            for item in tmp.iterdir():
                target = path / item.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(item, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_toml(path: str | Path, what: str = "file") -> dict:
    """A TOML file as a dict; a missing or malformed file is a one-line `SpamoInputError` naming it."""
    import tomllib


    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise SpamoInputError(path, f"{what} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpamoInputError(path, f"not valid TOML ({exc})") from None


def dump_toml(record: dict) -> str:
    """Serialise a nested dict of scalars and lists to TOML (the standard library only reads TOML).

    Top-level scalars first, then one `[table]` per nested dict (recursively, dotted names); `None` is left out.
    """
    lines: list[str] = []
    _dump_table(record, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _dump_table(table: dict, prefix: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict) and v is not None}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if prefix and (scalars or not tables):
        lines.append("")
        lines.append("[" + ".".join(_toml_key(p) for p in prefix) + "]")
    for key, value in scalars.items():
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in tables.items():
        _dump_table(value, prefix + [str(key)], lines)


def _toml_key(key: str) -> str:
    key = str(key)
    if key and all(c.isalnum() or c in "-_" for c in key):
        return key
    return _toml_string(key)


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def _toml_value(value) -> str:
    import math

    import numpy as np

    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    return _toml_string(str(value))


def write_h5ad(adata, path: str | Path) -> None:
    """`adata.write_h5ad(path)`, also under pandas 3, whose string columns and index are nullable string arrays.

    anndata writes those only when `allow_write_nullable_strings` is on (off by default for readers older than
    anndata 0.11); spamo's own readers are new enough, so it is switched on for the write.
    """
    import anndata

    settings = anndata.settings
    if hasattr(settings, "allow_write_nullable_strings"):
        with settings.override(allow_write_nullable_strings=True):
            adata.write_h5ad(path)
    else:
        adata.write_h5ad(path)
