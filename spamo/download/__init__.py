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

The package by job: `sources` (what to fetch, checked up front), `fetch` (HTTP with resume and the redirect guard),
`cache` (the private cache and the recorded checksums), `archives` (unpacking zip and tar.gz safely), `entry`
(`download_dataset(s)`). Every public name is importable from `spamo.download`.
"""

from __future__ import annotations

from spamo.download.archives import CorruptArchive, FetchedArchive, unpack_dataset
from spamo.download.cache import CACHE_DIR, CHECKSUMS_FILE, cache_paths, served_keys
from spamo.download.entry import download_dataset, download_datasets
from spamo.download.fetch import fetch_with_resume
from spamo.download.sources import (DownloadSource, all_keys, check_sha256, check_url, download_source,
                                    downloadable_keys)

__all__ = ["CACHE_DIR", "CHECKSUMS_FILE", "CorruptArchive", "DownloadSource", "FetchedArchive", "all_keys",
           "cache_paths", "check_sha256", "check_url", "download_dataset", "download_datasets", "download_source",
           "downloadable_keys", "fetch_with_resume", "served_keys", "unpack_dataset"]
