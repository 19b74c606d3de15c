"""The download commands' entry points: every archive the requested datasets need is fetched once, verified and
every missing dataset unpacked from it into the layout of docs/data.md section 1.

Everything is checked (keys, URL, checksum format, target folders) before any byte is fetched; a folder already
holding its dataset's layout is left alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from spamo.dataset_table import get_dataset_spec
from spamo.download.archives import _has_layout, _open_archive, unpack_dataset
from spamo.download.cache import _cached_archive, _prune_cache, _record_checksum
from spamo.download.fetch import Progress
from spamo.download.sources import _configured_sha256, _source_for, check_sha256, check_url
from spamo.errors import SpamoInputError
from spamo.io import clean_stale


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
