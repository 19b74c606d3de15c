"""`spamo data download` against a real HTTP server on loopback serving a `Data.zip` laid out as the authors' record
(Data/HLN, Data/Mouse_Brain, Data/Simulation): one download, three datasets, resuming, checksums, refusals."""

from __future__ import annotations

import hashlib
import io
import json
import stat
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from spamo import datasets, download
from spamo.simulate import write_simulation
from refusals import assert_one_line_refusal

ETAG = '"data-zip-v1"'


class ArchiveServer:
    """Serves in-memory files by path, honouring `Range: bytes=N-` (and `If-Range`), redirects, and a connection cut
    after `cut_after` bytes of a whole-file answer; records each request's path, Range and If-Range headers."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.cut_after: int | None = None
        self.requests: list[tuple[str, str | None, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                path = self.path.split("?")[0]
                range_header, if_range = self.headers.get("Range"), self.headers.get("If-Range")
                server.requests.append((path, range_header, if_range))
                if path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.files.get(path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if range_header and range_header.startswith("bytes=") and if_range in (None, ETAG):
                    start = int(range_header[len("bytes="):].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("ETag", ETAG)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if start == 0 and server.cut_after is not None:
                    self.wfile.write(body[:server.cut_after])
                    server.cut_after = None
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        # a short poll interval: shutdown() waits for the next poll (0.5 s by default, in every test's teardown)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def fetches(self, path: str) -> list[tuple[str, str | None, str | None]]:
        return [r for r in self.requests if r[0] == path]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    srv = ArchiveServer()
    yield srv
    srv.close()


FEATURES = {"RNA": 30, "ADT": 12, "ATAC": 30}


@pytest.fixture(scope="module")
def authors_files(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """The three dataset folders in their layouts (small simulations), as {folder: {file: bytes}}."""
    root = tmp_path_factory.mktemp("src")
    out = {}
    for key in ("hln", "mb", "sim"):
        spec = datasets.get_dataset_spec(key)
        folder = write_simulation(root / spec.folder, n_spots=300, seed=2, layout=key, n_features=FEATURES)
        out[spec.folder] = {p.name: p.read_bytes() for p in folder.iterdir()}
    return out


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, body in files.items():
            zf.writestr(name, body)
    return buffer.getvalue()


def _data_zip(authors_files) -> bytes:
    """Data.zip as the record's public download scripts unzip it: Data/<folder>/<file>."""
    return _zip({f"Data/{folder}/{name}": body for folder, files in authors_files.items()
                 for name, body in files.items()})


def _targz(files: dict[str, bytes], top: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, body in files.items():
            info = tarfile.TarInfo(f"{top}{name}")
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def _download(key: str, url: str, root: Path, *extra: str):
    return CliRunner().invoke(app, ["data", "download", key, "--url", url, "--data-root", str(root), *extra])


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _top(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_one_data_zip_download_serves_all_three_datasets(server, authors_files, tmp_path):
    archive = _data_zip(authors_files)
    server.files["/records/14591305/files/Data.zip"] = archive
    url = server.url("/records/14591305/files/Data.zip?download=1")
    root = tmp_path / "Data"

    result = _download("hln", url, root)
    assert result.exit_code == 0, (result.output, result.exception)
    assert sorted(p.name for p in (root / "HLN").iterdir()) == sorted(authors_files["HLN"])
    assert (root / ".spamo-cache").is_dir()  # kept: Mouse_Brain and Simulation are still to come from it
    result = _download("mb", url, root)
    assert result.exit_code == 0, (result.output, result.exception)
    result = _download("all", url, root)
    assert result.exit_code == 0, (result.output, result.exception)

    assert len(server.fetches("/records/14591305/files/Data.zip")) == 1  # downloaded once
    assert _top(root) == [".spamo-checksums.json", "HLN", "Mouse_Brain", "Simulation"]  # cache gone, no temporary
    for folder, files in authors_files.items():
        assert {p.name: p.read_bytes() for p in (root / folder).iterdir()} == files
    assert json.loads((root / ".spamo-checksums.json").read_text()) == {url: hashlib.sha256(archive).hexdigest()}
    for key, n_modalities in (("hln", 2), ("mb", 2), ("sim", 3)):
        data = datasets.load_dataset(key, data_root=root)
        assert data.n_spots == 300 and len(data.modality_names) == n_modalities
    assert "hln: " in result.output and "sim: " in result.output


def test_download_all_from_the_configured_record(server, authors_files, tmp_path, monkeypatch):
    """`spamo data download all` with no --url: the configured archive, fetched once for the three."""
    server.files["/records/14591305/files/Data.zip"] = _data_zip(authors_files)
    config = tmp_path / "downloads.toml"
    text = download.sources.DOWNLOADS_TOML.read_text().replace("https://zenodo.org",
                                                       server.url("").rstrip("/"))
    config.write_text(text)
    monkeypatch.setattr(download.sources, "DOWNLOADS_TOML", config)
    result = CliRunner().invoke(app, ["data", "download", "all", "--data-root", str(tmp_path / "D")])
    assert result.exit_code == 0, (result.output, result.exception)
    assert len(server.requests) == 1
    assert _top(tmp_path / "D") == [".spamo-checksums.json", "HLN", "Mouse_Brain", "Simulation"]


def test_interrupted_download_resumes_with_a_range_request(server, authors_files, tmp_path):
    archive = _data_zip(authors_files)
    server.files["/Data.zip"] = archive
    half = len(archive) // 2
    server.cut_after = half
    root = tmp_path / "Data"
    assert_one_line_refusal(_download("sim", server.url("/Data.zip"), root), "incomplete", "run the command again")
    assert not (root / "Simulation").exists()
    part = download.cache_paths(server.url("/Data.zip"), root)[1]
    assert part.stat().st_size == half

    result = _download("sim", server.url("/Data.zip"), root)
    assert result.exit_code == 0, (result.output, result.exception)
    assert server.requests == [("/Data.zip", None, None), ("/Data.zip", f"bytes={half}-", ETAG)]
    assert {p.name: p.read_bytes() for p in (root / "Simulation").iterdir()} == authors_files["Simulation"]
    recorded = json.loads((root / ".spamo-checksums.json").read_text())
    assert list(recorded.values()) == [hashlib.sha256(archive).hexdigest()]


def test_corrupted_archive_is_refused_and_nothing_is_unpacked(server, authors_files, tmp_path):
    archive = _data_zip(authors_files)
    corrupted = bytearray(archive)
    corrupted[len(corrupted) // 3] ^= 0xFF  # inside a member's data: its CRC no longer holds
    server.files["/Data.zip"] = bytes(corrupted)
    root = tmp_path / "Data"
    # no checksum known: the CRCs of every member are checked before anything is unpacked
    assert_one_line_refusal(_download("all", server.url("/Data.zip"), root), "archive is damaged", "removed")
    assert _listing(root) == []
    # a known checksum: refused before unpacking, the file removed
    good = hashlib.sha256(archive).hexdigest()
    assert_one_line_refusal(_download("hln", server.url("/Data.zip"), root, "--sha256", good), "sha256 mismatch", good)
    assert _listing(root) == []
    # the recorded checksum of the first good download vouches for later ones
    server.files["/Data.zip"] = archive
    assert _download("hln", server.url("/Data.zip"), root, "--sha256", good).exit_code == 0
    server.files["/Data2.zip"] = _zip({f"HLN/{n}": b for n, b in authors_files["HLN"].items()})
    first = _download("hln", server.url("/Data2.zip"), tmp_path / "other")
    assert first.exit_code == 0, first.output
    (tmp_path / "other" / "HLN").rename(tmp_path / "old")
    damaged = bytearray(server.files["/Data2.zip"])
    damaged[-30] ^= 0xFF  # the end of the central directory record: still a zip, but not the recorded bytes
    server.files["/Data2.zip"] = bytes(damaged)
    assert_one_line_refusal(_download("hln", server.url("/Data2.zip"), tmp_path / "other"), "sha256 mismatch")
    assert _top(tmp_path / "other") == [".spamo-checksums.json"]


def test_tar_gz_of_one_dataset_with_given_checksum(server, authors_files, tmp_path):
    archive = _targz(authors_files["HLN"], top="wrapped/")
    server.files["/hln.tar.gz"] = archive
    result = _download("hln", server.url("/hln.tar.gz"), tmp_path, "--sha256", hashlib.sha256(archive).hexdigest())
    assert result.exit_code == 0, (result.output, result.exception)
    assert sorted(p.name for p in (tmp_path / "HLN").iterdir()) == sorted(authors_files["HLN"])
    assert _top(tmp_path) == ["HLN"]  # a given checksum is not recorded; the archive left the cache


def test_redirects_same_host_followed_other_host_refused_unless_asked(server, authors_files, tmp_path):
    archive = _zip({f"HLN/{n}": b for n, b in authors_files["HLN"].items()})
    server.files["/files/HLN.zip"] = archive
    server.redirects["/same"] = "/files/HLN.zip"
    server.redirects["/other"] = server.url("/files/HLN.zip", host="localhost")
    result = _download("hln", server.url("/same"), tmp_path / "a")
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads((tmp_path / "a" / ".spamo-checksums.json").read_text()) == {
        server.url("/files/HLN.zip"): hashlib.sha256(archive).hexdigest()}  # filed under the final URL

    assert_one_line_refusal(_download("hln", server.url("/other"), tmp_path / "b"), "another host", "--allow-other-host")
    assert server.fetches("/files/HLN.zip") == [("/files/HLN.zip", None, None)]  # the other host was not asked
    assert _listing(tmp_path / "b") == []
    result = _download("hln", server.url("/other"), tmp_path / "b", "--allow-other-host")
    assert result.exit_code == 0, (result.output, result.exception)
    assert list(json.loads((tmp_path / "b" / ".spamo-checksums.json").read_text())) == [
        server.url("/files/HLN.zip", host="localhost")]


def _symlink_zip(authors_files) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        link = zipfile.ZipInfo("HLN/escape")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/tmp")
        zf.writestr("HLN/escape/adata_RNA.h5ad", b"x")
        for name, body in authors_files["HLN"].items():
            zf.writestr(f"HLN/{name}", body)
    return buffer.getvalue()


CRAFTED = {
    # name: (served path or None, URL path, extra options, expected text in the one line)
    "file scheme": (None, "file:///etc/passwd", [], "only https:// and http://"),
    "ftp scheme": (None, "ftp://127.0.0.1/Data.zip", [], "only https:// and http://"),
    "url ends in ..": (None, "/files/..", [], "'..' segments"),
    "url with .. inside": (None, "/a/../Data.zip", [], "'..' segments"),
    "malformed sha256": ("/Data.zip", "/Data.zip", ["--sha256", "abc123"], "64 hexadecimal digits"),
    "zip with a file under a symlink": ("/link.zip", "/link.zip", [], "is a link"),
    "zip member outside": ("/dotdot.zip", "/dotdot.zip", [], "points outside"),
    "not an archive": ("/junk.zip", "/junk.zip", [], "not a zip or tar.gz archive"),
    "wrong layout": ("/partial.zip", "/partial.zip", [], "adata_ADT.h5ad"),
    "missing": (None, "/missing.zip", [], "HTTP 404"),
    "unknown dataset": (None, "/Data.zip", [], "unknown dataset"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_downloads_are_one_line_and_write_nothing(case, server, authors_files, tmp_path):
    served, url_path, extra, expected = CRAFTED[case]
    bodies = {
        "/Data.zip": _data_zip(authors_files),
        "/link.zip": _symlink_zip(authors_files),
        "/dotdot.zip": _zip({"HLN/../../evil.txt": b"x", **{f"HLN/{n}": b for n, b in authors_files["HLN"].items()}}),
        "/junk.zip": b"<html>not an archive</html>",
        "/partial.zip": _zip({"HLN/adata_RNA.h5ad": authors_files["HLN"]["adata_RNA.h5ad"]}),
    }
    if served:
        server.files[served] = bodies[served]
    url = url_path if "://" in url_path else server.url(url_path)
    root = tmp_path / "Data"
    result = _download("nope" if case == "unknown dataset" else "hln", url, root, *extra)
    assert_one_line_refusal(result, expected)
    assert _listing(root) == [], _listing(root)  # nothing written: no archive, no cache, no half-unpacked folder
    assert not (tmp_path / "evil.txt").exists()
    if case == "malformed sha256":
        assert server.requests == []  # refused before downloading


def test_url_names_cannot_reach_user_files_or_the_checksums(server, authors_files, tmp_path):
    """The archive goes to the private cache: a URL's last element (HLN, a user's file, the checksums file) names
    nothing in the data root."""
    archive = _zip({f"HLN/{n}": b for n, b in authors_files["HLN"].items()})
    root = tmp_path / "Data"
    root.mkdir()
    (root / "notes.zip").write_text("my notes")
    (root / ".spamo-checksums.json").write_text(json.dumps({"https://example.org/x.zip": "ab" * 32}))
    for path in ("/mirror/HLN", "/mirror/notes.zip", "/mirror/.spamo-checksums.json"):
        server.files[path] = archive
        result = _download("hln", server.url(path), root)
        assert result.exit_code == 0, (path, result.output, result.exception)
        assert sorted(p.name for p in (root / "HLN").iterdir()) == sorted(authors_files["HLN"])
        assert _top(root) == [".spamo-checksums.json", "HLN", "notes.zip"]
        assert (root / "notes.zip").read_text() == "my notes"
        recorded = json.loads((root / ".spamo-checksums.json").read_text())
        assert recorded["https://example.org/x.zip"] == "ab" * 32 and server.url(path) in recorded
        (root / "HLN").rename(tmp_path / f"done{len(server.requests)}")


def test_existing_incomplete_folder_is_refused_before_downloading(server, tmp_path):
    (tmp_path / "HLN").mkdir()
    (tmp_path / "HLN" / "mine.txt").write_text("x")
    assert_one_line_refusal(_download("hln", server.url("/Data.zip"), tmp_path), "lacks the dataset's files")
    assert server.requests == [] and _top(tmp_path) == ["HLN"]


def test_configured_sources_point_at_the_published_record():
    for key, folder in (("hln", "Data/HLN"), ("mb", "Data/Mouse_Brain"), ("sim", "Data/Simulation")):
        source = download.download_source(key)
        assert source.url == "https://zenodo.org/records/14591305/files/Data.zip?download=1"
        assert source.member == folder
    assert download.all_keys() == ["hln", "mb", "sim"]


@pytest.mark.parametrize("partial", ["changed on the server", "already whole"])
def test_resume_starts_over_when_the_file_changed_and_finishes_a_whole_partial(partial, server, authors_files,
                                                                                tmp_path):
    archive = _data_zip(authors_files)
    server.files["/Data.zip"] = archive
    url = server.url("/Data.zip")
    root = tmp_path / "Data"
    _, part, meta = download.cache_paths(url, root)
    part.parent.mkdir(parents=True)
    if partial == "changed on the server":  # bytes of an older file, and its validator
        part.write_bytes(b"old bytes " * 100)
        meta.write_text(json.dumps({"url": url, "validator": '"data-zip-v0"'}))
        expected = [("/Data.zip", "bytes=1000-", '"data-zip-v0"')]
    else:
        part.write_bytes(archive)
        meta.write_text(json.dumps({"url": url, "validator": ETAG}))
        expected = [("/Data.zip", f"bytes={len(archive)}-", ETAG)]
    result = _download("hln", url, root)
    assert result.exit_code == 0, (result.output, result.exception)
    assert server.requests == expected
    assert {p.name: p.read_bytes() for p in (root / "HLN").iterdir()} == authors_files["HLN"]
    assert json.loads((root / ".spamo-checksums.json").read_text()) == {url: hashlib.sha256(archive).hexdigest()}
