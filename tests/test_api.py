"""The Python API on objects in memory: `spamo.fit` is `spamo run`'s code path (same labels for the same data and
seed), `annotate` writes the documented keys, bad input is refused with the CLI's line before any work, and
`spamo.tune` / `spamo.evaluate` run from Python on a tiny simulation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import spamo
from cli import app
from spamo.errors import SpamoInputError

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = dict(epochs=12, knn_k=10, cluster_method="gmm", seed=7, latent_dim=32)
CLI_SETTINGS = ["--epochs", "12", "--knn-k", "10", "--cluster-method", "gmm", "--seed", "7", "--latent-dim", "32"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from spamo.simulate import write_simulation

    out = tmp_path_factory.mktemp("api") / "hln"
    write_simulation(out, n_spots=300, seed=4, layout="hln")
    return out


def read_modalities(folder: Path) -> dict:
    return {"RNA": ad.read_h5ad(folder / "adata_RNA.h5ad"), "ADT": ad.read_h5ad(folder / "adata_ADT.h5ad")}


# ------------------------------------------------------------------------------------------------ fast lane


def test_import_spamo_is_light_and_exposes_the_api():
    code = "import sys, spamo; assert 'torch' not in sys.modules and 'anndata' not in sys.modules; " \
           "print(sorted(n for n in ('fit', 'tune', 'evaluate', 'analyze') if n in dir(spamo)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['analyze', 'evaluate', 'fit', 'tune']"


def test_a_misaligned_object_is_refused_with_the_clis_message(folder, tmp_path):
    mods = read_modalities(folder)
    adt = mods["ADT"][:-3].copy()  # three spots missing from ADT
    bad = tmp_path / "bad"
    bad.mkdir()
    mods["RNA"].write_h5ad(bad / "adata_RNA.h5ad")
    adt.write_h5ad(bad / "adata_ADT.h5ad")
    done = CliRunner().invoke(app, ["run", "--data-dir", str(bad), "--data-type", "10x", "--n-clusters", "5",
                                    "--out", str(tmp_path / "run"), "--quiet"])
    assert done.exit_code == 2
    cli_line = done.stderr.strip()
    assert "\n" not in cli_line and "spot names differ" in cli_line
    with pytest.raises(SpamoInputError) as info:
        spamo.fit({"RNA": mods["RNA"], "ADT": adt}, data_type="10x", n_clusters=5)
    problem = str(info.value)
    assert problem.startswith("data['ADT']: spot names differ from data['RNA']")
    assert problem.split("(", 1)[1] == cli_line.split("(", 1)[1]  # the same count of missing / extra spots
    with pytest.raises(SpamoInputError, match="spot names differ"):
        spamo.fit([mods["RNA"], adt], data_type="10x", n_clusters=5)


def test_bad_settings_and_inputs_are_refused_before_any_work(folder):
    mods = read_modalities(folder)
    with pytest.raises(SpamoInputError, match=r"spamo.fit: epochs must be an integer >= 0"):
        spamo.fit(mods, data_type="10x", n_clusters=5, epochs=-1)
    with pytest.raises(SpamoInputError, match=r"KNN_k \(knn_k\) must be an integer >= 1, got 'twenty'"):
        spamo.fit(mods, data_type="10x", n_clusters=5, KNN_k="twenty")
    with pytest.raises(SpamoInputError, match="unknown setting 'learning_speed'"):
        spamo.fit(mods, data_type="10x", learning_speed=3)
    with pytest.raises(SpamoInputError, match="give the data type"):
        spamo.fit(mods, n_clusters=5)
    with pytest.raises(SpamoInputError, match="expected a MuData, a dict of AnnData or a list of AnnData"):
        spamo.fit(np.zeros((3, 3)), data_type="10x", n_clusters=5)
    with pytest.raises(SpamoInputError, match="3 AnnData objects but data type 10x"):
        spamo.fit([mods["RNA"]] * 3, data_type="10x", n_clusters=5)


# ------------------------------------------------------------------------------------------------ trained


@pytest.fixture(scope="module")
def cli_run(folder, tmp_path_factory):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("cli") / "run"
    done = CliRunner().invoke(app, ["run", "--data-dir", str(folder), "--data-type", "10x", "--n-clusters", "5",
                                    *CLI_SETTINGS, "--out", str(out), "--quiet", "--no-plot"])
    torch.set_num_threads(before)
    assert done.exit_code == 0, done.output
    return out


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_fit_on_a_mudata_and_on_a_dict_gives_the_labels_of_spamo_run(folder, cli_run, tmp_path):
    cli_labels = np.loadtxt(cli_run / "labels.txt", dtype=int)
    mods = read_modalities(folder)
    before = {name: adata.copy() for name, adata in mods.items()}
    from_dict = spamo.fit(mods, data_type="10x", n_clusters=5, **SETTINGS)
    np.testing.assert_array_equal(from_dict.labels, cli_labels)
    for name, adata in mods.items():  # the inputs are not modified
        assert list(adata.obsm) == list(before[name].obsm) and list(adata.obs) == list(before[name].obs)

    mdata = md.MuData({"rna": mods["RNA"], "prot": mods["ADT"]})
    from_mudata = spamo.fit(mdata, data_type="10x", n_clusters=5, **SETTINGS)
    np.testing.assert_array_equal(from_mudata.labels, cli_labels)
    np.testing.assert_array_equal(from_mudata.embedding, from_dict.embedding)
    assert from_mudata.config.knn_k == 10 and from_mudata.config.epochs == 12 and from_mudata.config.lr == 0.01
    assert set(from_mudata.scores) >= {"ari", "nmi", "asw", "spatial_coherence"}  # truth from obsm['spfac']

    # annotate: the documented keys, matched by obs_names (a shuffled object gets its own rows)
    from_mudata.annotate(mdata)
    assert mdata.obsm["X_spamo"].shape == (mdata.n_obs, 32)
    assert mdata.obsm["X_spamo_RNA"].shape == mdata.obsm["X_spamo_ADT"].shape == (mdata.n_obs, 32)
    assert isinstance(mdata.obs["spamo_domain"].dtype, pd.CategoricalDtype)
    assert list(mdata.obs["spamo_domain"].cat.categories) == ["0", "1", "2", "3", "4"]
    positions = pd.Index(from_mudata.spot_names).get_indexer(mdata.obs_names)
    np.testing.assert_array_equal(mdata.obs["spamo_domain"].astype(int).to_numpy(), from_mudata.labels[positions])
    shuffled = mods["RNA"][np.random.default_rng(0).permutation(mods["RNA"].n_obs)].copy()
    from_dict.annotate(shuffled)
    rows = pd.Index(from_dict.spot_names).get_indexer(shuffled.obs_names)
    np.testing.assert_allclose(shuffled.obsm["X_spamo"], from_dict.embedding[rows])
    np.testing.assert_allclose(shuffled.obsm["X_spamo_ADT"], from_dict.per_modality[1][rows])

    # write: the run folder spamo run writes, with the same labels and the run folder's keys
    out = from_dict.write(tmp_path / "api_run", draw=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in cli_run.iterdir())
    np.testing.assert_array_equal(np.loadtxt(out / "labels.txt", dtype=int), cli_labels)
    from spamo.run_folder import read_embedding

    embedding = read_embedding(out)
    assert embedding.modality_names == ["RNA", "ADT"] and embedding.sources == {}  # in memory: no input file
    np.testing.assert_allclose(embedding.fused, from_dict.embedding, rtol=1e-6)

    # analyze in memory: the domains' markers per modality, nothing written without out_dir
    analysed = spamo.analyze(from_dict, n_top=5, permutations=0)
    assert analysed.out_dir is None and set(analysed.markers["modality"]) == {"RNA", "ADT"}
    assert sorted(analysed.markers["domain"].astype(str).unique()) == ["0", "1", "2", "3", "4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api_run"]


TUNE_AND_EVALUATE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import spamo

    base = Path(sys.argv[1])
    result = spamo.tune(data_dir=base / "sim", data_type="Simulation", n_clusters=5, num_samples=2, epochs=6,
                        name="api", scheduler="none", max_concurrent=1, storage=str(base / "ray"), report_every=3,
                        cpus_per_trial=1, gpus_per_trial=0)
    tables = spamo.evaluate([result.path], top_k=1, seeds=1, out=base / "eval", num_cpus=2, cross=False,
                            plots=False)
    print(json.dumps({"path": str(result.path), "n_trials": len(result.trials), "metric": result.metric,
                      "statuses": sorted(result.trials["status"]), "complete": result.complete,
                      "best_knn_k": result.best_config.knn_k, "best_type": type(result.best_config).__name__,
                      "tables": {name: [table.num_rows, table.column_names[:3]] for name, table in tables.items()},
                      "table_type": type(next(iter(tables.values()))).__module__}))
""")


@pytest.mark.slow
@pytest.mark.ray
def test_tune_and_evaluate_from_python_on_a_tiny_simulation(tmp_path):
    from spamo.simulate import write_simulation

    write_simulation(tmp_path / "sim", n_spots=300, seed=1, layout="sim")
    script = tmp_path / "api_tune.py"
    script.write_text(TUNE_AND_EVALUATE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["n_trials"] == 2 and summary["statuses"] == ["finished", "finished"] and summary["complete"]
    assert summary["metric"] == "ari" and summary["best_type"] == "SpamoConfig"
    assert Path(summary["path"]) == tmp_path / "ray" / "api"  # with a local --storage, the run folder lives there
    assert (Path(summary["path"]) / "trials.parquet").is_file() and (Path(summary["path"]) / "best_config.toml").is_file()
    assert summary["table_type"].startswith("pyarrow")
    assert "seed_runs" in summary["tables"] and summary["tables"]["seed_runs"][0] == 1
