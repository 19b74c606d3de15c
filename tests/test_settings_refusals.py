"""Every bad setting is refused up front through the CLI: one line naming the setting and what it accepts, exit 2,
before any data is read (the built-in simulation is not even generated) and with nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app

FLAG_CASES = [
    (["--epochs", "-1"], "epochs", "integer >= 0"),
    (["--ema-beta", "2"], "ema_beta", "[0, 1]"),
    (["--spatial-weight", "-5"], "spatial_weight", ">= 0"),
    (["--lr", "nan"], "lr", "> 0"),
    (["--lr", "-1"], "lr", "> 0"),
    (["--weight-decay", "-1"], "weight_decay", ">= 0"),
    (["--latent-dim", "0"], "latent_dim", ">= 1"),
    (["--dgi-weight", "nan"], "dgi_weight", ">= 0"),
    (["--dropout", "1"], "dropout", "[0, 1)"),
    (["--knn-k", "0"], "knn_k", ">= 1"),
    (["--n-clusters", "1"], "n_clusters", ">= 2"),
    (["--seed", "-3"], "seed", "[0, 2147483647]"),
    (["--optimizer", "lbfgs"], "optimizer", "adamw, adam, sgd"),
    (["--cluster-method", "dbscan"], "cluster_method", "gmm"),
    (["--device", "gpu"], "device", "cpu"),
    (["--data-type", "Visium-HD"], "data_type", "10x"),
    (["--modality-weights", "5,x"], "--modality-weights", "numbers"),
    (["--rna-weight", "-1"], "modality_weight_0", ">= 0"),
]

TOML_CASES = [
    ('knn_k = "twenty"\n', "knn_k", "integer >= 1"),
    ('dropout = "high"\n', "dropout", "[0, 1)"),
    ("latent_dim = 6.5\n", "latent_dim", "integer >= 1"),
    ('RNA_weight = "five"\n', "RNA_weight", ">= 0"),
    ("spamo = 3\n", "spamo", "table"),
    ("[spamo]\nuse_cross_attn = \"yes\"\n", "use_cross_attn", "true or false"),
    ("[spamo]\nmodality_weights = [5, -1]\n", "modality_weights", ">= 0"),
    ("[spamo]\nepochs_override = -2\n", "epochs_override (epochs)", ">= 0"),
    ("[spamo]\nlearning_speed = 3\n", "learning_speed", "unknown setting"),
]


def one_line_refusal(result, *needles: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert result.stdout.strip() == ""
    return lines[0]


def run(tmp_path: Path, *args: str):
    """`spamo run --dataset sim` into tmp_path; the data root stays empty unless data is read (it would be
    generated there)."""
    return CliRunner().invoke(app, ["run", "--dataset", "sim", "--data-root", str(tmp_path / "Data"), "--quiet",
                                    "--out", str(tmp_path / "run"), *args])


def assert_nothing_written(tmp_path: Path, *keep: str) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


@pytest.mark.parametrize("args, setting, accepted", FLAG_CASES, ids=[" ".join(c[0]) for c in FLAG_CASES])
def test_bad_flag_is_one_line_before_any_data_is_read(tmp_path, args, setting, accepted):
    one_line_refusal(run(tmp_path, *args), setting, accepted)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("text, setting, accepted", TOML_CASES, ids=[c[0].strip() for c in TOML_CASES])
def test_bad_toml_value_is_one_line_naming_file_and_setting(tmp_path, text, setting, accepted):
    config = tmp_path / "settings.toml"
    config.write_text(text)
    one_line_refusal(run(tmp_path, "--config", str(config)), "settings.toml", setting, accepted)
    assert_nothing_written(tmp_path, "settings.toml")


def test_out_that_is_a_file_is_refused_before_training(tmp_path):
    (tmp_path / "taken").write_text("mine\n")
    result = CliRunner().invoke(app, ["run", "--dataset", "sim", "--data-root", str(tmp_path / "Data"),
                                      "--out", str(tmp_path / "taken"), "--quiet"])
    one_line_refusal(result, "--out", "is not a folder")
    assert (tmp_path / "taken").read_text() == "mine\n"
    assert_nothing_written(tmp_path, "taken")


def test_out_under_a_file_is_refused_before_training(tmp_path):
    (tmp_path / "taken").write_text("mine\n")
    result = CliRunner().invoke(app, ["run", "--dataset", "sim", "--data-root", str(tmp_path / "Data"),
                                      "--out", str(tmp_path / "taken" / "deeper" / "run"), "--quiet"])
    one_line_refusal(result, "--out", "which is a file")
    assert_nothing_written(tmp_path, "taken")


def test_score_out_under_a_file_is_one_line(tmp_path):
    (tmp_path / "truth.txt").write_text("0\n1\n1\n")
    (tmp_path / "taken").write_text("mine\n")
    result = CliRunner().invoke(app, ["score", "--truth", str(tmp_path / "truth.txt"), "--pred",
                                      str(tmp_path / "truth.txt"), "--out", str(tmp_path / "taken" / "m.txt")])
    one_line_refusal(result, "--out", "which is a file")
    result = CliRunner().invoke(app, ["score", "--truth", str(tmp_path / "truth.txt"), "--pred",
                                      str(tmp_path / "truth.txt"), "--out", str(tmp_path)])
    one_line_refusal(result, "--out", "is a folder")
    assert_nothing_written(tmp_path, "taken", "truth.txt")


# ------------------------------------------------------------------------------------------------ clean output
ROOT = Path(__file__).resolve().parents[1]


def cli_process(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real entry point (cli.main) in a child process, stdout and stderr piped (not a terminal)."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.fixture(scope="module")
def deep_simulation(tmp_path_factory):
    """A small simulation at a long path (longer than 80 columns), with one duplicated spot name in a copy."""
    import anndata as ad

    from spamo.simulate import write_simulation

    folder = tmp_path_factory.mktemp("clean") / ("a_rather_long_folder_name_" * 3) / "hln"
    write_simulation(folder, n_spots=300, seed=2, layout="hln")
    duplicated = folder.parent / "duplicated"
    duplicated.mkdir()
    for name in ("adata_RNA.h5ad", "adata_ADT.h5ad"):
        adata = ad.read_h5ad(folder / name)
        names = list(adata.obs_names)
        names[1] = names[0]
        adata.obs_names = names
        adata.write_h5ad(duplicated / name)
    return folder


def test_duplicated_spot_names_print_only_the_refusal(deep_simulation, tmp_path):
    done = cli_process("run", "--data-dir", str(deep_simulation.parent / "duplicated"), "--data-type", "10x",
                       "--n-clusters", "5", "--out", str(tmp_path / "run"), "--quiet", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr  # no anndata warning before it
    assert "duplicated spot names" in done.stderr and done.stdout == ""


def test_tables_are_not_truncated_when_stdout_is_not_a_terminal(deep_simulation, tmp_path):
    done = cli_process("data", "info", str(deep_simulation), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout
    path = str(deep_simulation / "adata_RNA.h5ad")
    assert len(path) > 80 and any(path in line for line in done.stdout.splitlines()), done.stdout
