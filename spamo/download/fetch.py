"""Fetching one URL over HTTP(S) into a partial file, resumably (standard library only, urllib).

A partial download is continued with a Range request carrying the server's validator as `If-Range`, so a file that
changed on the server starts over. Redirects are followed only to http(s), never from https down to http, and to
another host only when asked for: a checksum recorded for one host must not vouch for another's file. Every failure
is a one-line refusal (docs/data.md section 4).
"""

from __future__ import annotations

import http.client
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from spamo.download.sources import SCHEMES, check_url
from spamo.errors import SpamoInputError


BLOCK = 1 << 16


Progress = Callable[[int, "int | None"], None]


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
