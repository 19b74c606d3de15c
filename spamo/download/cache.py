"""The private download cache under the data root (`<data_root>/.spamo-cache/`) and the recorded checksums.

An archive is cached under a hash of its URL (never the URL's last path element, so a URL can name neither a user's
file nor the checksum record), locked while in use, verified against a sha256 (given, configured or recorded from
the first download in `<data_root>/.spamo-checksums.json` against the final URL), and removed once every dataset it
serves is unpacked into the layout of docs/data.md section 1. A corrupt archive is removed so the next run fetches it
anew.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

from spamo.dataset_table import dataset_registry
from spamo.download.archives import CorruptArchive, FetchedArchive, _dataset_prefix, _has_layout, _open_archive
from spamo.download.fetch import Progress, fetch_with_resume
from spamo.errors import SpamoInputError
from spamo.io import atomic_write_text, file_sha256


CHECKSUMS_FILE = ".spamo-checksums.json"


CACHE_DIR = ".spamo-cache"


def cache_paths(url: str, data_root: Path) -> tuple[Path, Path, Path]:
    """(archive, partial download, metadata) of `url` in the private cache: named by a hash of the URL."""
    folder = data_root / CACHE_DIR
    stem = hashlib.sha256(url.encode()).hexdigest()[:32]
    return folder / f"{stem}.archive", folder / f"{stem}.archive.part", folder / f"{stem}.json"


@contextlib.contextmanager
def _cached_archive(url: str, data_root: Path, expected: str | None, progress: Progress | None, timeout: float,
                    allow_other_host: bool) -> Iterator[FetchedArchive]:
    """The verified archive of `url` (downloaded or resumed into the cache unless already there), locked for use.

    A corrupt archive found while unpacking (`CorruptArchive`) is removed from the cache, so the next run fetches it
    again instead of failing on the same bytes.
    """
    archive, part, meta_path = cache_paths(url, data_root)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with open(archive.parent / f"{archive.stem}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SpamoInputError(url, "another spamo download of this URL is running; wait for it") from None
        meta = _read_meta(meta_path)
        if not archive.is_file() or meta.get("url") != url or "final_url" not in meta:
            archive.unlink(missing_ok=True)
            try:
                final_url, validator = fetch_with_resume(
                    url, part, progress=progress, timeout=timeout, allow_other_host=allow_other_host,
                    validator=meta.get("validator") if part.exists() else None,
                    on_start=lambda v: _write_meta(meta_path, url=url, validator=v))
            except SpamoInputError:
                if not part.exists() or part.stat().st_size == 0:  # nothing to resume: leave nothing behind
                    _discard_cached(url, data_root)
                raise
            os.replace(part, archive)
            _write_meta(meta_path, url=url, validator=validator, final_url=final_url)
            meta = _read_meta(meta_path)
        final_url = meta["final_url"]
        expected = expected or _recorded_checksums(data_root).get(final_url)
        digest = file_sha256(archive)
        if expected is not None and digest != expected:
            _discard_cached(url, data_root)
            raise SpamoInputError(url, f"sha256 mismatch (expected {expected}, got {digest}); the downloaded file "
                                       f"was removed")
        try:
            yield FetchedArchive(archive, final_url, digest, unverified=expected is None)
        except CorruptArchive as exc:
            _discard_cached(url, data_root)
            raise SpamoInputError(url, f"{exc}; the downloaded file was removed, run the command again to fetch it "
                                       f"anew") from None


def served_keys(archive: Path) -> list[str]:
    """The datasets whose layout the archive holds (Data.zip: hln, mb, sim)."""
    try:
        with _open_archive(archive, str(archive)) as reader:
            names = reader.names()
    except (CorruptArchive, SpamoInputError):
        return []
    registry = dataset_registry()
    return [key for key, spec in registry.items() if _dataset_prefix(names, spec, None) is not None]


def _prune_cache(url: str, data_root: Path) -> None:
    """Remove the cached archive once every dataset it holds is in the data root (until then it serves them)."""
    archive = cache_paths(url, data_root)[0]
    registry = dataset_registry()
    waiting = [key for key in served_keys(archive) if not _has_layout(registry[key].path(data_root), registry[key])]
    if not waiting:
        _discard_cached(url, data_root)


def _discard_cached(url: str, data_root: Path) -> None:
    """Remove the cached archive of `url`, its partial download, metadata and lock (and the cache folder if empty)."""
    archive, part, meta = cache_paths(url, data_root)
    for path in (archive, part, meta, archive.parent / f"{archive.stem}.lock"):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        archive.parent.rmdir()  # only when empty


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_meta(path: Path, **fields) -> None:
    atomic_write_text(path, json.dumps({k: v for k, v in fields.items() if v is not None}, indent=1))


def _recorded_checksums(data_root: Path) -> dict:
    path = data_root / CHECKSUMS_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise SpamoInputError(path, "cannot be read as JSON; fix or remove it") from None


def _record_checksum(data_root: Path, url: str, digest: str) -> None:
    """Remember the first download's sha256 of `url` (the final URL), so later downloads are verified against it."""
    recorded = _recorded_checksums(data_root)
    recorded[url] = digest
    atomic_write_text(data_root / CHECKSUMS_FILE, json.dumps(recorded, indent=2, sort_keys=True) + "\n")
