"""Write results so that an interrupted or refused run leaves nothing half-written, and nothing is mixed.

Files go to a temporary sibling first and are renamed into place. Whole output folders are assembled in a temporary
sibling folder and swapped in whole at the end: an existing folder is *replaced*, never merged (a run without ground
truth must not sit beside the previous run's `metrics.txt`). The old content is moved aside by the swap and removed
only after it, so an interruption at any moment leaves either the old folder or the new one, never a mixture.

Temporary names are `.<name>.<host>-<pid>-<random>.part` (and `.old` for content moved aside): the pid and a hash
of the host name say who owns them, so the next writer of the same path removes those of processes that are dead
(a SIGKILLed run cannot clean up after itself) and leaves those of live ones alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import tomllib
from pathlib import Path
from typing import Iterable, Iterator

from spamo.errors import SpamoInputError

TEMP_SUFFIXES = ("part", "old")
RUN_FOLDER_FILES = ("run.toml", "labels.txt", "metrics.json")  # what every `spamo run` folder holds


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def temp_sibling(path: Path, suffix: str = "part") -> Path:
    """A fresh name beside `path` that records this process (host and pid); nothing is created."""
    return path.with_name(f".{path.name}.{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}.{suffix}")


def _owner(entry: Path, name: str) -> tuple[str, int, str] | None:
    """(host tag, pid, suffix) of a temporary sibling of `name`, or None when `entry` is not one."""
    match = re.fullmatch(rf"\.{re.escape(name)}\.([0-9a-f]{{8}})-(\d+)-[0-9a-f]+\.({'|'.join(TEMP_SUFFIXES)})",
                         entry.name)
    return (match.group(1), int(match.group(2)), match.group(3)) if match else None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()


def clean_stale(path: str | Path) -> list[Path]:
    """Remove the temporary siblings of `path` left by dead processes of this host; returns what was removed.

    A folder moved aside (`.old`) by a writer killed in the middle of a two-step swap is put back when `path` itself
    is missing, since it is then the only copy of the old content.
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return []
    removed = []
    host = _host_tag()
    try:
        entries = [e for e in parent.iterdir() if e.name.startswith(f".{path.name}.")]
    except OSError:
        return []
    for entry in entries:
        owner = _owner(entry, path.name)
        if owner is None or owner[0] != host or _pid_alive(owner[1]):
            continue
        if owner[2] == "old" and not os.path.lexists(path):
            with contextlib.suppress(OSError):
                os.rename(entry, path)
                continue
        _remove(entry)
        removed.append(entry)
    return removed


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise SpamoInputError(path, "lies under a file, not a folder") from None
    except PermissionError:
        raise SpamoInputError(path, "its folder cannot be created (permission denied)") from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on error removed."""
    path = Path(path)
    _make_parent(path)
    if path.is_dir():
        raise SpamoInputError(path, "is a folder; give a file name")
    clean_stale(path)
    tmp_path = temp_sibling(path)
    os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # umask applies, as for any file
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def check_output_folder(path: str | Path, keep_existing: bool = False, expect: Iterable[str] = (),
                        option: str = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot be written or must not be replaced.

    Refused: a path that is a file or lies under a file, a parent that cannot be written, an existing non-empty
    folder when `keep_existing` is asked for, and an existing non-empty folder holding none of the files `expect`s
    (the names this kind of output always writes): replacing it whole would delete something spamo did not write,
    such as `--out .` or a folder of results. Stale temporary siblings of dead processes are removed.
    """
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise SpamoInputError(option, f"{path} exists and is not a folder")
    for ancestor in path.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise SpamoInputError(option, f"{path} lies under {ancestor}, which is a file")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise SpamoInputError(option, f"{ancestor} is not writable")
            break
    if path.is_dir():
        clean_stale(path)
        content = sorted(p.name for p in path.iterdir())
        if content and keep_existing:
            raise SpamoInputError(option, f"{path} exists and is not empty (--keep-existing): remove it or choose "
                                          f"another folder")
        expect = set(expect)
        if content and expect and not expect.intersection(content):
            raise SpamoInputError(option, f"{path} exists and does not look like this kind of spamo output (none of "
                                          f"{', '.join(sorted(expect))}); it would be replaced whole: remove it or "
                                          f"choose another folder")
    return path


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where not supported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(b))


def swap_in(new: Path, path: Path) -> None:
    """Put folder `new` at `path`, replacing whatever folder is there whole; the old content is removed after."""
    if not os.path.lexists(path):
        os.rename(new, path)
        return
    if not path.is_dir() or path.is_symlink():
        raise SpamoInputError(path, "exists and is not a folder; not replaced")
    if _exchange(new, path):
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the old content
        return
    aside = temp_sibling(path, "old")
    os.rename(path, aside)
    os.rename(new, path)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` whole (created if needed).

    An existing `path` is replaced, never merged, and only if it is empty or holds at least one of the files the
    new folder holds (the same kind of output); otherwise, or with `keep_existing` and a non-empty `path`, the
    swap is refused with a one-line `SpamoInputError` and `path` is left as it was. On error the temporary folder
    is removed and `path` is left as it was.
    """
    path = Path(path)
    if path.is_symlink() and path.is_dir():
        path = path.resolve()  # replace the folder the link points at, not the link
    _make_parent(path)
    if os.path.lexists(path) and not path.is_dir():
        raise SpamoInputError(path, "exists and is not a folder")
    clean_stale(path)
    tmp = temp_sibling(path)
    os.mkdir(tmp, 0o777)  # umask applies: a results folder is as readable as any other
    try:
        yield tmp
        if path.is_dir():
            check_output_folder(path, keep_existing=keep_existing, expect=[p.name for p in tmp.iterdir()],
                                option=str(path))
        swap_in(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def replaced_outputs(path: str | Path, keep: Iterable[str] = ()) -> Iterator[Path]:
    """Like `atomic_dir`, for a folder that also holds a cache outliving one command (an evaluation's seed runs).

    The new outputs are written into the yielded temporary folder; on success the entries of the old folder named
    in `keep` are moved into it (renames: the cache's files keep their times) and the whole is swapped in, so no
    table or picture of an earlier command is left beside the new ones. Check the folder with `check_output_folder`
    before the command writes its cache into it.
    """
    path = Path(path)
    _make_parent(path)
    clean_stale(path)
    tmp = temp_sibling(path)
    os.mkdir(tmp, 0o777)
    try:
        yield tmp
        for name in keep:
            if os.path.lexists(path / name) and not os.path.lexists(tmp / name):
                os.rename(path / name, tmp / name)
        swap_in(tmp, path)
    finally:
        if tmp.exists():
            for name in keep:  # a failure after the cache moved: put it back
                if os.path.lexists(tmp / name) and path.is_dir() and not os.path.lexists(path / name):
                    os.rename(tmp / name, path / name)
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def removed_on_refusal(path: str | Path) -> Iterator[None]:
    """Remove `path` if it did not exist on entry and a refusal (`SpamoInputError`) leaves the block.

    For data written on the way to a refusal, e.g. the built-in simulation generated under `./Data` for a
    `spamo run --dataset sim` that is then refused: a refused command writes nothing.
    """
    path = Path(path)
    existed = os.path.lexists(path)
    try:
        yield
    except SpamoInputError:
        if not existed and os.path.lexists(path):
            _remove(path)
        raise


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_toml(path: str | Path, what: str = "file") -> dict:
    """A TOML file as a dict; a missing or malformed file is a one-line `SpamoInputError` naming it."""
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
