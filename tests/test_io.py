"""spamo.io: files and folders written whole or not at all, folders replaced (never merged), leftovers of dead
writers cleaned, and output paths checked before any work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from spamo import io as sio
from spamo.errors import SpamoInputError
from spamo.io import atomic_dir, atomic_path, atomic_write_text, check_output_folder, clean_stale, removed_on_refusal

REPO = Path(__file__).resolve().parents[1]


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_writes_leave_nothing_behind_on_error(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "labels.txt").write_text("1\n")
            raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "labels.txt").write_text("1\n")
    assert (target / "labels.txt").read_text() == "1\n" and _names(tmp_path) == ["out"]
    atomic_write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").read_text() == "x" and _names(tmp_path) == ["a.txt", "out"]
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert (tmp_path / "a.txt").read_text() == "x" and _names(tmp_path) == ["a.txt", "out"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_existing_folder_is_replaced_whole_not_merged(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(sio, "_exchange", lambda a, b: False)  # filesystems without RENAME_EXCHANGE
    target = tmp_path / "run"
    with atomic_dir(target) as tmp:
        for name in ("labels.txt", "metrics.txt", "run.toml"):
            (tmp / name).write_text("A\n")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "deep.txt").write_text("A\n")
    with atomic_dir(target) as tmp:
        (tmp / "labels.txt").write_text("B\n")
        (tmp / "run.toml").write_text("B\n")
    assert _names(target) == ["labels.txt", "run.toml"]  # A's metrics.txt and sub/ are gone
    assert (target / "labels.txt").read_text() == "B\n"
    assert _names(tmp_path) == ["run"]  # neither the new temporary nor the old content is left beside it


def test_a_folder_spamo_did_not_write_is_not_replaced(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(SpamoInputError, match="does not look like"):
        with atomic_dir(mine) as tmp:
            (tmp / "labels.txt").write_text("1\n")
    assert _names(mine) == ["thesis.tex"] and _names(tmp_path) == ["mine"]
    with pytest.raises(SpamoInputError, match="does not look like"):
        check_output_folder(mine, expect=sio.RUN_FOLDER_FILES)
    check_output_folder(tmp_path / "new", expect=sio.RUN_FOLDER_FILES)  # a folder that does not exist is fine
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty", expect=sio.RUN_FOLDER_FILES)


def test_keep_existing_refuses_a_non_empty_folder(tmp_path):
    target = tmp_path / "run"
    with atomic_dir(target) as tmp:
        (tmp / "labels.txt").write_text("A\n")
    with pytest.raises(SpamoInputError, match="--keep-existing"):
        check_output_folder(target, keep_existing=True)
    with pytest.raises(SpamoInputError, match="--keep-existing"):
        with atomic_dir(target, keep_existing=True) as tmp:
            (tmp / "labels.txt").write_text("B\n")
    assert (target / "labels.txt").read_text() == "A\n" and _names(tmp_path) == ["run"]


def test_output_paths_that_cannot_be_written_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    for path, message in ((tmp_path / "file", "is not a folder"), (tmp_path / "file" / "run", "which is a file"),
                          (tmp_path / "file" / "a" / "b", "which is a file")):
        with pytest.raises(SpamoInputError, match=message):
            check_output_folder(path)
    with pytest.raises(SpamoInputError, match="lies under a file"):
        atomic_write_text(tmp_path / "file" / "metrics.txt", "x")
    with pytest.raises(SpamoInputError, match="lies under a file"):
        with atomic_dir(tmp_path / "file" / "run"):
            pass
    with pytest.raises(SpamoInputError, match="is a folder"):
        atomic_write_text(tmp_path, "x")
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(SpamoInputError, match="not writable"):
            check_output_folder(locked / "run")
        locked.chmod(0o700)
    assert (tmp_path / "file").read_text() == "x"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_of_dead_processes_are_cleaned_live_ones_kept(tmp_path):
    target = tmp_path / "run"
    host = sio._host_tag()
    dead, live = _dead_pid(), os.getppid()
    stale = tmp_path / f".run.{host}-{dead}-0badc0de.part"
    stale.mkdir()
    (stale / "labels.txt").write_text("half\n")
    stale_file = tmp_path / f".run.{host}-{dead}-00000001.part"
    stale_file.write_text("half")
    running = tmp_path / f".run.{host}-{live}-12345678.part"  # a writer that is still running
    running.mkdir()
    other_host = tmp_path / f".run.00000000-{dead}-12345678.part"  # a dead pid, but of another machine
    other_host.mkdir()
    foreign = tmp_path / ".run.notes.part"  # not one of ours
    foreign.write_text("x")
    with atomic_dir(target) as tmp:
        (tmp / "labels.txt").write_text("1\n")
    assert not stale.exists() and not stale_file.exists()
    assert running.exists() and other_host.exists() and foreign.exists()


def test_content_moved_aside_by_a_killed_swap_is_put_back(tmp_path):
    """Killed between the two renames of the fallback swap: the old folder is only in `.old`; it is restored."""
    aside = tmp_path / f".run.{sio._host_tag()}-{_dead_pid()}-abcdef01.old"
    aside.mkdir()
    (aside / "labels.txt").write_text("old\n")
    assert clean_stale(tmp_path / "run") == []
    assert (tmp_path / "run" / "labels.txt").read_text() == "old\n" and _names(tmp_path) == ["run"]


WRITER = """
import sys, time
from spamo.io import atomic_dir
with atomic_dir(sys.argv[1]) as tmp:
    (tmp / "labels.txt").write_text("half")
    print(tmp, flush=True)
    time.sleep(600)
"""


def test_sigkilled_writer_leaves_a_part_that_the_next_writer_removes(tmp_path):
    target = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        part = Path(writer.stdout.readline().strip())
        assert part.is_dir() and part.name.startswith(".run.") and part.name.endswith(".part")
        # while the writer lives, another writer leaves its folder alone
        with atomic_dir(target) as tmp:
            (tmp / "labels.txt").write_text("1\n")
        assert part.exists()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    with atomic_dir(target) as tmp:
        (tmp / "labels.txt").write_text("2\n")
    assert not part.exists() and _names(tmp_path) == ["run"]
    assert (target / "labels.txt").read_text() == "2\n"


def test_removed_on_refusal_only_removes_what_the_block_created(tmp_path):
    created = tmp_path / "Simulation"
    with pytest.raises(SpamoInputError):
        with removed_on_refusal(created):
            created.mkdir()
            (created / "big.h5ad").write_text("x")
            raise SpamoInputError("--n-clusters", "refused")
    assert not created.exists()
    created.mkdir()
    with pytest.raises(SpamoInputError):
        with removed_on_refusal(created):
            raise SpamoInputError("--n-clusters", "refused")
    assert created.exists()  # it was there before: kept
    with pytest.raises(RuntimeError):
        with removed_on_refusal(tmp_path / "other"):
            (tmp_path / "other").mkdir()
            raise RuntimeError("not a refusal")
    assert (tmp_path / "other").exists()


def test_replaced_outputs_keeps_the_cache_and_drops_everything_else(tmp_path):
    out = tmp_path / "evaluate"
    (out / "seed_runs").mkdir(parents=True)
    (out / "seed_runs" / "run1.json").write_text("{}")
    stamp = (out / "seed_runs" / "run1.json").stat().st_mtime_ns
    (out / "best_configs.parquet").write_text("old")
    (out / "domains_gone.png").write_text("a dataset of the earlier evaluation")
    with sio.replaced_outputs(out, keep=("seed_runs",)) as new:
        (new / "best_configs.parquet").write_text("new")
    assert _names(out) == ["best_configs.parquet", "seed_runs"] and _names(tmp_path) == ["evaluate"]
    assert (out / "best_configs.parquet").read_text() == "new"
    assert (out / "seed_runs" / "run1.json").stat().st_mtime_ns == stamp
    with pytest.raises(RuntimeError):
        with sio.replaced_outputs(out, keep=("seed_runs",)) as new:
            (new / "best_configs.parquet").write_text("newer")
            raise RuntimeError("interrupted")
    assert (out / "best_configs.parquet").read_text() == "new" and _names(out) == ["best_configs.parquet", "seed_runs"]
    assert _names(tmp_path) == ["evaluate"]
