"""`spamo data download` against a real HTTP server on loopback: checksums, resuming, unpacking into place."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from spamo import datasets
from spamo.simulate import write_simulation


class ArchiveServer:
    """Serves in-memory files by path, honouring `Range: bytes=N-`, and records the Range headers it saw."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                body = server.files.get(self.path.split("?")[0])
                server.ranges.append(self.headers.get("Range"))
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                range_header = self.headers.get("Range")
                if range_header and range_header.startswith("bytes="):
                    start = int(range_header[len("bytes="):].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    srv = ArchiveServer()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def hln_files(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("src") / "HLN"
    write_simulation(folder, n_spots=300, seed=2, layout="hln", n_features={"RNA": 40, "ADT": 20})
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _zip(files: dict[str, bytes], top: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, body in files.items():
            zf.writestr(f"{top}{name}", body)
    return buffer.getvalue()


def _targz(files: dict[str, bytes], top: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, body in files.items():
            info = tarfile.TarInfo(f"{top}{name}")
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def _download(url: str, root: Path, *extra: str):
    return CliRunner().invoke(app, ["data", "download", "hln", "--url", url, "--data-root", str(root), *extra])


def _one_line_refusal(result, *expected: str) -> None:
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name != ".spamo-checksums.json")


def test_download_unpacks_wrapped_zip_and_records_checksum(server, hln_files, tmp_path):
    archive = _zip(hln_files, top="HLN/")
    server.files["/records/1/files/HLN.zip"] = archive
    url = server.url("/records/1/files/HLN.zip?download=1")
    result = _download(url, tmp_path)
    assert result.exit_code == 0, (result.output, result.exception)
    assert _leftovers(tmp_path) == ["HLN"]  # no archive, .part or temporary folder left
    assert sorted(p.name for p in (tmp_path / "HLN").iterdir()) == sorted(hln_files)
    recorded = json.loads((tmp_path / ".spamo-checksums.json").read_text())
    assert recorded == {url: hashlib.sha256(archive).hexdigest()}
    data = datasets.load_dataset("hln", data_root=tmp_path)
    assert data.n_spots == 300 and data.modality_names == ["RNA", "ADT"]

    # a second download of the same URL is verified against the recorded checksum: a corrupted archive is refused
    (tmp_path / "HLN").rename(tmp_path / "old")
    corrupted = bytearray(archive)
    corrupted[len(corrupted) // 2] ^= 0xFF
    server.files["/records/1/files/HLN.zip"] = bytes(corrupted)
    result = _download(url, tmp_path)
    _one_line_refusal(result, "HLN.zip", "sha256 mismatch")
    assert _leftovers(tmp_path) == ["old"]  # the bad file is removed and nothing was unpacked


def test_tar_gz_with_given_checksum_and_mismatch(server, hln_files, tmp_path):
    archive = _targz(hln_files, top="wrapped/")
    server.files["/hln.tar.gz"] = archive
    result = _download(server.url("/hln.tar.gz"), tmp_path, "--sha256", "0" * 64)
    _one_line_refusal(result, "hln.tar.gz", "sha256 mismatch", "0" * 64)
    assert _leftovers(tmp_path) == []
    result = _download(server.url("/hln.tar.gz"), tmp_path, "--sha256", hashlib.sha256(archive).hexdigest())
    assert result.exit_code == 0, (result.output, result.exception)
    assert sorted(p.name for p in (tmp_path / "HLN").iterdir()) == sorted(hln_files)


def test_resumes_partial_download_with_range_request(server, hln_files, tmp_path):
    archive = _zip(hln_files)
    server.files["/HLN.zip"] = archive
    half = len(archive) // 2
    (tmp_path / "HLN.zip.part").write_bytes(archive[:half])
    result = _download(server.url("/HLN.zip"), tmp_path)
    assert result.exit_code == 0, (result.output, result.exception)
    assert server.ranges == [f"bytes={half}-"]
    assert _leftovers(tmp_path) == ["HLN"]
    recorded = json.loads((tmp_path / ".spamo-checksums.json").read_text())
    assert list(recorded.values()) == [hashlib.sha256(archive).hexdigest()]
    assert (tmp_path / "HLN" / "adata_RNA.h5ad").read_bytes() == hln_files["adata_RNA.h5ad"]


def test_refuses_non_archive_and_wrong_layout(server, hln_files, tmp_path):
    server.files["/junk.zip"] = b"<html>not an archive</html>"
    _one_line_refusal(_download(server.url("/junk.zip"), tmp_path), "junk.zip", "not a zip or tar.gz archive")
    assert _leftovers(tmp_path) == [] and not (tmp_path / ".spamo-checksums.json").exists()

    only_rna = {"adata_RNA.h5ad": hln_files["adata_RNA.h5ad"]}
    server.files["/partial.zip"] = _zip(only_rna, top="HLN/")
    _one_line_refusal(_download(server.url("/partial.zip"), tmp_path), "partial.zip", "adata_ADT.h5ad")
    assert _leftovers(tmp_path) == []

    _one_line_refusal(_download(server.url("/missing.zip"), tmp_path), "missing.zip", "HTTP 404")
    assert _leftovers(tmp_path) == []


def test_configured_sources_point_at_the_published_record():
    from spamo.download import download_source

    for key in ("hln", "mb", "sim"):
        assert "zenodo.org/records/14591305/files/" in download_source(key).url
