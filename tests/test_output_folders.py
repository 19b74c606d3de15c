"""Every folder spamo writes is swapped in whole: through the CLI, an existing `--out` is replaced (never merged),
`--keep-existing` refuses instead, a folder spamo did not write is never replaced, a refusal writes nothing, and the
`.part` folder of a SIGKILLed writer is removed by the next one."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import pytest
from typer.testing import CliRunner

from cli import app
from spamo import io as sio
from spamo.simulate import write_simulation
from refusals import assert_one_line_refusal

REPO = Path(__file__).resolve().parents[1]
RUN = ["run", "--data-type", "10x", "--n-clusters", "4", "--epochs", "3", "--KNN_k", "8", "--cluster-method",
       "kmeans", "--no-plot", "--quiet"]


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _cli(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory):
    """A small dataset with a ground truth, and the same spots without any (no truth file, no obsm['spfac'])."""
    root = tmp_path_factory.mktemp("folders")
    with_truth = write_simulation(root / "with_truth", n_spots=300, seed=4, layout="hln",
                                  n_features={"RNA": 40, "ADT": 12})
    without = root / "without_truth"
    without.mkdir()
    for name in ("adata_RNA.h5ad", "adata_ADT.h5ad"):
        adata = ad.read_h5ad(with_truth / name)
        del adata.obsm["spfac"]
        sio.write_h5ad(adata, without / name)
    return with_truth, without


@pytest.mark.slow
def test_run_into_an_existing_folder_leaves_exactly_the_new_runs_files(two_folders, tmp_path):
    with_truth, without = two_folders
    out = tmp_path / "run"
    stale = tmp_path / f".run.{sio._host_tag()}-{_dead_pid()}-deadbeef.part"  # a SIGKILLed run's leftover
    stale.mkdir()
    (stale / "labels.txt").write_text("half\n")

    first = _cli(*RUN, "--data-dir", with_truth, "--out", out)
    assert first.exit_code == 0, (first.output, first.exception)
    assert _names(out) == ["embedding.h5ad", "labels.txt", "metrics.json", "metrics.txt", "run.toml"]
    assert not stale.exists()
    second = _cli(*RUN, "--data-dir", without, "--out", out)
    assert second.exit_code == 0, (second.output, second.exception)
    assert _names(out) == ["embedding.h5ad", "labels.txt", "metrics.json", "run.toml"]  # A's metrics.txt is gone
    assert str(without) in (out / "run.toml").read_text() and str(with_truth) not in (out / "run.toml").read_text()
    assert _names(tmp_path) == ["run"]


def test_simulate_into_an_existing_folder_replaces_it(tmp_path):
    out = tmp_path / "Simulation"
    assert _cli("data", "simulate", "--out", out, "--n-spots", "300", "--seed", "1").exit_code == 0
    (out / "adata_ADT.h5ad").rename(out / "stray_from_another_seed.h5ad")
    result = _cli("data", "simulate", "--out", out, "--n-spots", "300", "--seed", "2", "--layout", "mb")
    assert result.exit_code == 0, (result.output, result.exception)
    assert _names(out) == ["MB_cluster.txt", "adata_RNA.h5ad", "adata_peaks_normalized.h5ad"]
    fresh = tmp_path / "fresh"
    assert _cli("data", "simulate", "--out", fresh, "--n-spots", "300", "--seed", "2", "--layout", "mb").exit_code == 0
    assert (out / "MB_cluster.txt").read_bytes() == (fresh / "MB_cluster.txt").read_bytes()
    assert _names(tmp_path) == ["Simulation", "fresh"]


def _previous_run(tmp: Path) -> Path:
    out = tmp / "previous"
    out.mkdir()
    for name in sio.RUN_FOLDER_FILES:
        (out / name).write_text("old\n")
    return out


def _mine(tmp: Path) -> Path:
    out = tmp / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    return out


def _a_file(tmp: Path) -> Path:
    (tmp / "a_file").write_text("x")
    return tmp / "a_file"


REFUSED = {
    # name: (command before --out, how to make the --out path, extra options, text of the one line)
    "run --out is a file": ("run", _a_file, [], "not a folder"),
    "run --out under a file": ("run", lambda t: _a_file(t) / "run", [], "which is a file"),
    "run --out a folder spamo did not write": ("run", _mine, [], "does not look like"),
    "run --keep-existing": ("run", _previous_run, ["--keep-existing"], "--keep-existing"),
    "simulate --out is a file": ("simulate", _a_file, [], "is not a folder"),
    "simulate --out a folder spamo did not write": ("simulate", _mine, [], "does not look like"),
    "simulate --keep-existing": ("simulate", lambda t: write_simulation(t / "sim", n_spots=300, seed=0),
                                 ["--keep-existing"], "--keep-existing"),
}


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_output_folders_are_one_line_and_change_nothing(case, tmp_path):
    command, make, extra, expected = REFUSED[case]
    work = tmp_path / "work"
    work.mkdir()
    out = make(work)
    before = _snapshot(work)
    data_root = tmp_path / "Data"
    if command == "run":
        args = ["run", "--dataset", "sim", "--data-root", data_root, "--out", out, "--quiet", *extra]
    else:
        args = ["data", "simulate", "--out", out, "--n-spots", "300", *extra]
    assert_one_line_refusal(_cli(*args), expected)
    assert _snapshot(work) == before
    assert not data_root.exists()  # refused before any data was read or generated


@pytest.mark.slow
@pytest.mark.parametrize("refusal", [["--n-clusters", "1"], ["--modalities", "FOO"], ["--knn-k", "5000"]],
                         ids=lambda r: r[0])
def test_a_refused_run_on_the_builtin_simulation_writes_nothing(refusal, tmp_path):
    """The simulation generated under the data root on the way to a refusal known only from the data is removed."""
    result = _cli("run", "--dataset", "sim", "--data-root", tmp_path / "Data", "--out", tmp_path / "run", "--quiet",
                  *refusal)
    assert_one_line_refusal(result, refusal[0].lstrip("-").replace("-", "_") if refusal[0] != "--modalities"
                      else "FOO")
    assert _names(tmp_path) in ([], ["Data"]) and not (tmp_path / "Data" / "Simulation").exists()
    assert not any((tmp_path / "Data").iterdir()) if (tmp_path / "Data").exists() else True


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.slow
def test_sigkilled_simulate_leaves_a_part_the_next_run_cleans(tmp_path):
    out = tmp_path / "Simulation"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "data", "simulate", "--out", str(out),
                               "--n-spots", "400000"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        parts = []
        while not parts and time.time() < deadline and writer.poll() is None:
            parts = [p for p in tmp_path.iterdir() if p.name.startswith(".Simulation.") and p.name.endswith(".part")]
            time.sleep(0.05)
        assert parts, "the writer never started its temporary folder"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert parts[0].exists() and not out.exists()  # SIGKILL: nothing could clean up, nothing half-written in place
    result = _cli("data", "simulate", "--out", out, "--n-spots", "300")
    assert result.exit_code == 0, (result.output, result.exception)
    assert _names(tmp_path) == ["Simulation"]
    shutil.rmtree(out)
