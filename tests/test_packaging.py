"""The built wheel carries its configuration files and runs outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_package_data_is_the_repository_configs_folder():
    """One source of truth: what the package reads is the repository's top-level configs/, not a copy."""
    from spamo.package_data import CONFIG_DIR

    assert CONFIG_DIR.resolve() == (ROOT / "configs").resolve()
    assert (CONFIG_DIR / "datasets.toml").is_file() and (CONFIG_DIR / "search" / "sim.toml").is_file()


def test_no_module_finds_configs_through_its_own_file_path():
    """A path built from `__file__` to the checkout's configs/ breaks in an installed wheel: use CONFIG_DIR."""
    offenders = []
    for package in ("spamo", "search", "evaluation"):
        for path in (ROOT / package).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if "__file__" in line and "configs" in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert not offenders, offenders


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_target_and_runs_from_another_folder(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(ROOT)], check=True, cwd=tmp_path, timeout=600)
    (wheel,) = wheels.glob("spamo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for packaged in ("spamo/configs/datasets.toml", "spamo/configs/downloads.toml", "spamo/configs/published.toml",
                     "spamo/configs/search/sim.toml", "spamo/configs/search/default.toml",
                     "spamo/configs/cluster/ray-cluster.yaml"):
        assert packaged in names, packaged
    for path in (ROOT / "configs").rglob("*"):  # every file of configs/ travels
        if path.is_file():
            assert f"spamo/configs/{path.relative_to(ROOT / 'configs').as_posix()}" in names, path

    target = tmp_path / "target"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                    str(target), str(wheel)], check=True, cwd=tmp_path, timeout=600)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "SPAMO_DISABLE_R": "1"}
    probe = subprocess.run([sys.executable, "-c", "import spamo, cli; print(spamo.__file__, cli.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True)
    assert all(Path(p).is_relative_to(target) for p in probe.stdout.split()), probe.stdout  # not the checkout

    done = subprocess.run([sys.executable, str(target / "bin" / "spamo"), "run", "--dataset", "sim", "--epochs", "3",
                           "--out", "out"], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert (work / "out" / "labels.txt").is_file() and (work / "out" / "embedding.h5ad").is_file()
    assert (work / "Data" / "Simulation" / "adata_RNA.h5ad").is_file()  # generated here, from the packaged table
