"""Where each dataset is downloaded from (configs/downloads.toml) and the checks of a URL and a checksum made before
any network use.

The authors' record is ONE archive (`Data.zip`) serving three datasets; a user's `--url` replaces it (a mirror, or
one dataset's archive). Only http and https are fetched, and a URL with `.`/`..` path segments is refused: the
datasets land in the layout of docs/data.md section 1, nowhere else.
"""

from __future__ import annotations

import re
import tomllib
import urllib.parse
from dataclasses import dataclass

from spamo.dataset_table import dataset_registry
from spamo.errors import SpamoInputError
from spamo.package_data import CONFIG_DIR


DOWNLOADS_TOML = CONFIG_DIR / "downloads.toml"


SCHEMES = ("https", "http")


SHA256_RE = re.compile(r"[0-9a-f]{64}")


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


def all_keys() -> list[str]:
    """The datasets `spamo data download all` fetches: every configured download with a known layout."""
    registry = dataset_registry()
    return [key for key in downloadable_keys() if key in registry]


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
