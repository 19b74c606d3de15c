"""Unpacking one dataset's folder from a zip or tar.gz archive into the layout of docs/data.md section 1.

Only the members under the dataset's folder are extracted (Data.zip holds three datasets), into a temporary sibling
that is renamed into place once the layout is complete. Members that are links or would land outside the folder
(absolute, drive-letter or `..` paths) are refused; damaged bytes raise `CorruptArchive`, so the cached copy is
fetched again.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from spamo.dataset_table import DatasetSpec
from spamo.errors import SpamoInputError
from spamo.io import temp_sibling


@dataclass
class FetchedArchive:
    path: Path
    final_url: str
    digest: str
    unverified: bool  # no checksum was known: record this one once the archive proved good


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
