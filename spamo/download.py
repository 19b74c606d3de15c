"""Downloading the benchmark datasets and unpacking them into the folder layout of docs/data.md section 1.

The authors' record is fetched as ONE archive (`Data.zip`, holding `Data/HLN`, `Data/Mouse_Brain`,
`Data/Simulation`; configs/downloads.toml): it is downloaded once into a private cache under the data root
(`<data_root>/.spamo-cache/`, named by a hash of the URL, never by the URL's last path element, so a URL can name
neither a user's file nor the recorded checksums), and each dataset is unpacked from it on request. The cached
archive is removed once every dataset it serves is in place.

Standard library only (urllib). A partial download is resumed with an HTTP Range request (`If-Range` with the
server's validator, so a changed file starts over). The archive is verified against a sha256 (given, configured, or
recorded from the first download in `<data_root>/.spamo-checksums.json` against the final URL after redirects); a
mismatch removes it and is a one-line refusal. Only http and https are fetched, and a redirect to another host is
refused unless asked for: a checksum recorded for one host must not silently vouch for another's file. Each dataset
is unpacked into a temporary sibling of its folder, its layout checked, and only then renamed into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import tarfile
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from spamo.dataset_table import DatasetSpec, dataset_registry, get_dataset_spec
from spamo.errors import SpamoInputError
from spamo.io import atomic_write_text, clean_stale, file_sha256, temp_sibling
from spamo.package_data import CONFIG_DIR

DOWNLOADS_TOML = CONFIG_DIR / "downloads.toml"
CHECKSUMS_FILE = ".spamo-checksums.json"
CACHE_DIR = ".spamo-cache"
BLOCK = 1 << 16
SCHEMES = ("https", "http")
SHA256_RE = re.compile(r"[0-9a-f]{64}")

Progress = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class DownloadSource:
    url: str
    sha256: str | None  # published checksum of the archive, if one is known
    member: str | None  # the dataset's folder inside the archive (None: find it by its layout)


def _downloads_table() -> dict:
    with open(DOWNLOADS_TOML, "rb") as fh:
        return tomllib.load(fh)


def download_source(key: str) -> DownloadSource:
    """The configured archive (URL, checksum if published) of a dataset key and the dataset's folder inside it."""
    table = _downloads_table()
    archives = table.get("archives", {})
    datasets = {k: v for k, v in table.items() if k != "archives"}
    if key not in datasets:
        raise SpamoInputError("dataset", f"no download configured for '{key}' (known: {', '.join(datasets)})")
    entry = datasets[key]
    archive = archives[entry["archive"]] if "archive" in entry else entry
    return DownloadSource(url=archive["url"], sha256=(archive.get("sha256") or None), member=entry.get("member"))


def downloadable_keys() -> list[str]:
    return [k for k in _downloads_table() if k != "archives"]


# ------------------------------------------------------------------------------------------------ checks up front
def check_url(url: str) -> str:
    """Refuse, before any network use, a URL spamo will not fetch: not http(s), no host, or `.`/`..` segments."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme.lower() not in SCHEMES:
        raise SpamoInputError("--url", f"only https:// and http:// downloads are supported, not {url!r}")
    if not parsed.hostname:
        raise SpamoInputError("--url", f"no host in {url!r}")
    segments = [urllib.parse.unquote(s) for s in parsed.path.split("/")]
    if any(s in (".", "..") for s in segments):
        raise SpamoInputError("--url", f"the path of {url!r} has '.' or '..' segments; give the archive's own URL")
    return url


def check_sha256(sha256: str | None) -> str | None:
    """A given checksum must be 64 hex digits; checked before downloading, not after."""
    if sha256 is None or sha256 == "":
        return None
    value = sha256.strip().lower()
    if not SHA256_RE.fullmatch(value):
        raise SpamoInputError("--sha256", f"expected 64 hexadecimal digits, got {sha256!r}")
    return value


# ------------------------------------------------------------------------------------------------ public entry points
def download_dataset(key: str, data_root: str | Path = "./Data", url: str | None = None, sha256: str | None = None,
                     progress: Progress | None = None, timeout: float = 60.0, allow_other_host: bool = False) -> Path:
    """Fetch, verify and unpack dataset `key` into `<data_root>/<folder>`; returns that folder.

    `progress(done_bytes, total_bytes_or_None)` is called as bytes arrive. A folder already holding the layout is
    left alone (nothing is downloaded).
    """
    return download_datasets([key], data_root, url=url, sha256=sha256, progress=progress, timeout=timeout,
                             allow_other_host=allow_other_host)[key]


def download_datasets(keys: list[str], data_root: str | Path = "./Data", url: str | None = None,
                      sha256: str | None = None, progress: Progress | None = None, timeout: float = 60.0,
                      allow_other_host: bool = False) -> dict[str, Path]:
    """Download each archive the datasets `keys` need once, and unpack every missing dataset from it.

    With `url`, every dataset is taken from that one archive (a mirror of Data.zip, or one dataset's archive).
    Everything is checked (keys, URL, checksum format, target folders) before any byte is fetched.
    """
    data_root = Path(data_root)
    sha256 = check_sha256(sha256)
    specs = {key: get_dataset_spec(key) for key in keys}
    sources = {key: _source_for(key, url) for key in keys}
    for source in sources.values():
        check_url(source.url)
    done: dict[str, Path] = {}
    missing: dict[str, list[str]] = {}
    for key, spec in specs.items():
        target = spec.path(data_root)
        clean_stale(target)
        if _has_layout(target, spec):
            done[key] = target
        elif os.path.lexists(target):
            raise SpamoInputError(target, "exists but lacks the dataset's files; remove it or choose another "
                                          "--data-root")
        else:
            missing.setdefault(sources[key].url, []).append(key)
    for archive_url, group in missing.items():
        configured = _configured_sha256(archive_url)
        fetched = None
        try:
            with _cached_archive(archive_url, data_root, expected=sha256 or configured, progress=progress,
                                 timeout=timeout, allow_other_host=allow_other_host) as fetched:
                if fetched.unverified:  # no checksum to trust: every member's CRC must hold before any unpacking
                    with _open_archive(fetched.path, fetched.final_url) as reader:
                        reader.verify()
                for key in group:
                    done[key] = unpack_dataset(fetched, specs[key], specs[key].path(data_root), sources[key].member)
                if fetched.unverified:
                    _record_checksum(data_root, fetched.final_url, fetched.digest)
        finally:
            if fetched is not None:  # fetched whole: a partial download stays for resuming
                _prune_cache(archive_url, data_root)
    return {key: done[key] for key in keys}


def _source_for(key: str, url: str | None) -> DownloadSource:
    configured = download_source(key)
    if url is None or url == configured.url:
        return configured
    return DownloadSource(url=url, sha256=None, member=configured.member)


def _configured_sha256(url: str) -> str | None:
    for key in downloadable_keys():
        source = download_source(key)
        if source.url == url and source.sha256:
            return check_sha256(source.sha256)
    return None


# ------------------------------------------------------------------------------------------------ the cached archive
@dataclass
class FetchedArchive:
    path: Path
    final_url: str
    digest: str
    unverified: bool  # no checksum was known: record this one once the archive proved good


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


# ------------------------------------------------------------------------------------------------ HTTP
class _RedirectGuard(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s), never from https down to http, and to another host only if allowed."""

    def __init__(self, allow_other_host: bool):
        self.allow_other_host = allow_other_host

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old = urllib.parse.urlsplit(req.full_url)
        new = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl))
        if new.scheme.lower() not in SCHEMES or (old.scheme.lower() == "https" and new.scheme.lower() != "https"):
            raise SpamoInputError(req.full_url, f"redirected to {new.geturl()!r}: only https (or http from http) "
                                                f"is followed")
        if (new.hostname or "").lower() != (old.hostname or "").lower() and not self.allow_other_host:
            raise SpamoInputError(req.full_url, f"redirected to another host ({new.hostname}); pass "
                                                f"--allow-other-host to follow it")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_with_resume(url: str, part: Path, progress: Progress | None = None, timeout: float = 60.0,
                      allow_other_host: bool = False, validator: str | None = None,
                      on_start: Callable[[str | None], None] | None = None) -> tuple[str, str | None]:
    """Download `url` into `part`, continuing an existing partial file with a Range request.

    Returns (the final URL after redirects, the server's validator: ETag or Last-Modified). `validator` is sent as
    `If-Range`, so a server whose file changed sends it whole and the download starts over.
    """
    check_url(url)
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "spamo"})
    if have:
        request.add_header("Range", f"bytes={have}-")
        if validator:
            request.add_header("If-Range", validator)
    opener = urllib.request.build_opener(_RedirectGuard(allow_other_host))
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            complete = _total_from_content_range(exc.headers.get("Content-Range")) == have
            if complete:  # the partial file is already whole
                return exc.geturl() or url, validator
            part.unlink()  # longer than the server's file: start over
            return fetch_with_resume(url, part, progress, timeout, allow_other_host, None, on_start)
        raise SpamoInputError(url, f"download failed (HTTP {exc.code} {exc.reason})") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise SpamoInputError(url, f"download failed ({reason})") from None
    with response:
        final_url = response.geturl()
        resumed = bool(have) and response.status == 206
        if not resumed:
            have = 0  # the server sent the whole file: start over
        new_validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
        if on_start is not None and not resumed:
            on_start(new_validator)
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None and length.isdigit() else None
        done = have
        try:
            with open(part, "ab" if resumed else "wb") as out:
                while block := response.read(BLOCK):
                    out.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise SpamoInputError(url, f"download interrupted after {done} bytes ({exc}); run the command again to "
                                       f"resume") from None
    if total is not None and done != total:
        raise SpamoInputError(url, f"download incomplete ({done} of {total} bytes); run the command again to "
                                   f"resume")
    return final_url, (validator if resumed else new_validator)


def _total_from_content_range(value: str | None) -> int | None:
    match = re.fullmatch(r"bytes \*/(\d+)", (value or "").strip())
    return int(match.group(1)) if match else None


# ------------------------------------------------------------------------------------------------ unpacking
class CorruptArchive(Exception):
    """The archive's bytes are damaged (CRC, truncated): the cached copy must be fetched again."""


def unpack_dataset(fetched: FetchedArchive | Path, spec: DatasetSpec, target: Path, member: str | None = None) -> Path:
    """Unpack one dataset's folder from the archive into `target`, through a temporary sibling renamed at the end.

    Only the members under the dataset's folder in the archive are extracted (Data.zip holds three datasets). The
    folder is the configured `member` when the archive has it, else one named like the dataset's folder, else the
    only folder holding the layout.
    """
    archive = fetched.path if isinstance(fetched, FetchedArchive) else Path(fetched)
    label = fetched.final_url if isinstance(fetched, FetchedArchive) else archive.name
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = temp_sibling(target)
    os.mkdir(staging, 0o777)
    try:
        with _open_archive(archive, label) as reader:
            names = reader.names()
            prefix = _dataset_prefix(names, spec, member)
            if prefix is None:
                needed = ", ".join(spec.modality_files.values())
                raise SpamoInputError(label, f"archive does not hold the {spec.key} layout ({needed})")
            reader.extract([n for n in names if n.startswith(prefix)], staging)
        found = staging / prefix if prefix else staging
        if not _has_layout(found, spec):
            raise CorruptArchive(f"the {spec.key} files did not unpack")
        found.chmod(0o755)
        os.rename(found, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _dataset_prefix(names: list[str], spec: DatasetSpec, member: str | None) -> str | None:
    """The member-name prefix ('' or 'Data/HLN/') of the folder holding the dataset's files in the archive."""
    files = list(spec.modality_files.values())
    present = set(names)
    candidates = set()
    for name in names:
        if "__MACOSX" in name.split("/"):
            continue
        if name == files[0] or name.endswith("/" + files[0]):
            prefix = name[: len(name) - len(files[0])]
            if all(prefix + f in present for f in files):
                candidates.add(prefix)
    if member is not None and member.strip("/") + "/" in candidates:
        return member.strip("/") + "/"
    named = sorted((p for p in candidates if p.rstrip("/").split("/")[-1] == spec.folder), key=len)
    if named:
        return named[0]
    return next(iter(candidates)) if len(candidates) == 1 else None


class _Zip:
    def __init__(self, archive: Path, label: str):
        self.label = label
        try:
            self.zf = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, OSError) as exc:
            raise CorruptArchive(f"zip archive cannot be read ({exc})") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.zf.close()

    def verify(self) -> None:
        try:
            bad = self.zf.testzip()
        except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
            raise CorruptArchive(f"archive is damaged ({exc})") from None
        if bad is not None:
            raise CorruptArchive(f"archive is damaged (bad CRC of member '{bad}')")

    def names(self) -> list[str]:
        infos = self.zf.infolist()
        for info in infos:
            _check_member_name(self.label, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise SpamoInputError(self.label, f"archive member '{info.filename}' is a link")
        return [i.filename for i in infos]

    def extract(self, names: list[str], into: Path) -> None:
        try:
            for name in names:
                self.zf.extract(name, into)
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise CorruptArchive(f"archive is damaged ({exc})") from None
        except OSError as exc:
            raise SpamoInputError(self.label, f"archive cannot be unpacked ({exc.strerror or exc})") from None


class _Tar:
    def __init__(self, archive: Path, label: str):
        self.label = label
        try:
            self.tf = tarfile.open(archive)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise CorruptArchive(f"tar archive cannot be read ({exc})") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.tf.close()

    def verify(self) -> None:
        try:
            for member in self.tf.getmembers():
                if member.isfile():
                    with self.tf.extractfile(member) as fh:
                        while fh.read(1 << 20):
                            pass
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise CorruptArchive(f"archive is damaged ({exc})") from None

    def names(self) -> list[str]:
        try:
            members = self.tf.getmembers()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise CorruptArchive(f"archive is damaged ({exc})") from None
        for member in members:
            _check_member_name(self.label, member.name)
            if member.issym() or member.islnk():
                raise SpamoInputError(self.label, f"archive member '{member.name}' is a link")
        self.members = {m.name: m for m in members}
        return [m.name + ("/" if m.isdir() else "") for m in members]

    def extract(self, names: list[str], into: Path) -> None:
        chosen = [self.members[n.rstrip("/")] for n in names]
        try:
            self.tf.extractall(into, members=chosen, filter="data")
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise CorruptArchive(f"archive is damaged ({exc})") from None
        except OSError as exc:
            raise SpamoInputError(self.label, f"archive cannot be unpacked ({exc.strerror or exc})") from None


def _open_archive(archive: Path, label: str):
    if zipfile.is_zipfile(archive):
        return _Zip(archive, label)
    try:
        is_tar = tarfile.is_tarfile(archive)
    except OSError:
        is_tar = False
    if not is_tar:
        raise CorruptArchive("not a zip or tar.gz archive")
    return _Tar(archive, label)


def _check_member_name(label: str, name: str) -> None:
    """Refuse members that would land outside the unpacking folder: absolute, drive-letter or '..' paths."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name) or ".." in parts:
        raise SpamoInputError(label, f"archive member '{name}' points outside the folder")


def _has_layout(folder: Path, spec: DatasetSpec) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in spec.modality_files.values())


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


def all_keys() -> list[str]:
    """The datasets `spamo data download all` fetches: every configured download with a known layout."""
    registry = dataset_registry()
    return [key for key in downloadable_keys() if key in registry]
