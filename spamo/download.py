"""Downloading a benchmark dataset's archive and unpacking it into the folder layout of docs/data.md section 1.

Standard library only (urllib). A partial download is kept as `<archive>.part` and resumed with an HTTP Range
request. The archive is verified against a sha256 (given, configured, or recorded from the first download of the
same URL in `<data_root>/.spamo-checksums.json`); a mismatch removes the file and is a one-line refusal. The
archive is unpacked into a temporary folder, its layout checked, and only then renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from spamo.datasets import CONFIG_DIR, DatasetSpec, get_dataset_spec
from spamo.errors import SpamoInputError
from spamo.io import atomic_write_text, file_sha256

DOWNLOADS_TOML = CONFIG_DIR / "downloads.toml"
CHECKSUMS_FILE = ".spamo-checksums.json"
BLOCK = 1 << 16


@dataclass(frozen=True)
class DownloadSource:
    url: str
    sha256: str | None  # published checksum, if one is known


def download_source(key: str) -> DownloadSource:
    """The configured archive URL (and checksum, if published) of a dataset key."""
    with open(DOWNLOADS_TOML, "rb") as fh:
        table = tomllib.load(fh)
    if key not in table:
        raise SpamoInputError("dataset", f"no download configured for '{key}' (known: {', '.join(table)})")
    entry = table[key]
    return DownloadSource(url=entry["url"], sha256=(entry.get("sha256") or None))


def download_dataset(key: str, data_root: str | Path = "./Data", url: str | None = None, sha256: str | None = None,
                     progress: Callable[[int, int | None], None] | None = None, timeout: float = 60.0) -> Path:
    """Fetch, verify and unpack dataset `key` into `<data_root>/<folder>`; returns that folder.

    `progress(done_bytes, total_bytes_or_None)` is called as bytes arrive. A folder already holding the layout is
    left alone (nothing is downloaded).
    """
    spec = get_dataset_spec(key)
    data_root = Path(data_root)
    target = spec.path(data_root)
    if _has_layout(target, spec):
        return target
    if target.exists():
        raise SpamoInputError(target, "exists but lacks the dataset's files; remove it or choose another "
                                      "--data-root")
    source = download_source(key)
    url = url or source.url
    data_root.mkdir(parents=True, exist_ok=True)
    archive = data_root / _archive_name(url, key)
    part = archive.with_name(archive.name + ".part")
    fetch_with_resume(url, part, progress=progress, timeout=timeout)
    os.replace(part, archive)
    try:
        expected = (sha256 or source.sha256 or _recorded_checksums(data_root).get(url) or "").lower() or None
        actual = file_sha256(archive)
        if expected is not None and actual != expected:
            raise SpamoInputError(archive, f"sha256 mismatch (expected {expected}, got {actual}); the file was "
                                           f"removed")
        unpack_into_place(archive, spec, target)
        if expected is None:
            _record_checksum(data_root, url, actual)
    finally:
        archive.unlink(missing_ok=True)
    return target


def fetch_with_resume(url: str, part: Path, progress: Callable[[int, int | None], None] | None = None,
                      timeout: float = 60.0) -> Path:
    """Download `url` into `part`, continuing an existing partial file with a Range request."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "spamo"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file is already complete
            return part
        raise SpamoInputError(url, f"download failed (HTTP {exc.code} {exc.reason})") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SpamoInputError(url, f"download failed ({reason})") from None
    with response:
        resumed = have and response.status == 206
        if not resumed:
            have = 0  # the server sent the whole file: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        done = have
        try:
            with open(part, "ab" if resumed else "wb") as out:
                while block := response.read(BLOCK):
                    out.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
        except (urllib.error.URLError, OSError) as exc:
            raise SpamoInputError(url, f"download interrupted after {done} bytes ({exc}); run the command "
                                       f"again to resume") from None
    if total is not None and done != total:
        raise SpamoInputError(url, f"download incomplete ({done} of {total} bytes); run the command again to "
                                   f"resume")
    return part


def unpack_into_place(archive: Path, spec: DatasetSpec, target: Path) -> None:
    """Unpack into a temporary folder beside `target`, find the layout (possibly under a top folder), rename it."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".unpack", dir=target.parent))
    try:
        _extract(archive, staging)
        found = _find_layout(staging, spec)
        if found is None:
            needed = ", ".join(spec.modality_files.values())
            raise SpamoInputError(archive, f"archive does not hold the {spec.key} layout ({needed})")
        found.chmod(0o755)
        os.replace(found, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract(archive: Path, into: Path) -> None:
    """Extract a zip or tar(.gz) archive, refusing members that would land outside `into`."""
    root = into.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                _check_member(archive, root, name)
            zf.extractall(into)
        return
    try:
        is_tar = tarfile.is_tarfile(archive)
    except OSError:
        is_tar = False
    if not is_tar:
        raise SpamoInputError(archive, "not a zip or tar.gz archive")
    try:
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                _check_member(archive, root, member.name)
                if member.issym() or member.islnk():
                    raise SpamoInputError(archive, f"archive member '{member.name}' is a link")
            tf.extractall(into, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise SpamoInputError(archive, f"archive cannot be unpacked ({exc})") from None


def _check_member(archive: Path, root: Path, name: str) -> None:
    dest = (root / name).resolve()
    if dest != root and root not in dest.parents:
        raise SpamoInputError(archive, f"archive member '{name}' points outside the folder")


def _find_layout(staging: Path, spec: DatasetSpec) -> Path | None:
    """The unpacked folder holding the layout: the top level, a folder named like the dataset, or any one folder."""
    if _has_layout(staging, spec):
        return staging
    folders = sorted(p for p in staging.rglob("*") if p.is_dir() and "__MACOSX" not in p.parts)
    named = [p for p in folders if p.name == spec.folder and _has_layout(p, spec)]
    if named:
        return named[0]
    holding = [p for p in folders if _has_layout(p, spec)]
    return holding[0] if len(holding) == 1 else None


def _has_layout(folder: Path, spec: DatasetSpec) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in spec.modality_files.values())


def _archive_name(url: str, key: str) -> str:
    name = Path(urllib.parse.urlparse(url).path).name
    return name if name else f"{key}.archive"


def _recorded_checksums(data_root: Path) -> dict:
    path = data_root / CHECKSUMS_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise SpamoInputError(path, "cannot be read as JSON; fix or remove it") from None


def _record_checksum(data_root: Path, url: str, digest: str) -> None:
    """Remember the first download's sha256 of `url`, so later downloads are verified against it."""
    recorded = _recorded_checksums(data_root)
    recorded[url] = digest
    atomic_write_text(data_root / CHECKSUMS_FILE, json.dumps(recorded, indent=2, sort_keys=True) + "\n")
