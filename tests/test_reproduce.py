"""The authors' own file layout end to end, and `spamo reproduce` (docs/data.md section 1, docs/method.md sections 7-8).

The fixture mimics the authors' Simulation files: spot names are spot ids as strings in a permuted row order,
`GT_1.txt` line i is the label of the spot named i, and `.X` and `layers['counts']` are two different count
matrices (here `.X` carries the simulated domains and the layer is the same counts with its rows shuffled, so reading
the wrong one is visible in the features and in the scores).
"""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from search.space import load_space, space_path, trial_config
from spamo import datasets, pipeline, reproduce
from spamo.config import SpamoConfig, build_config
from spamo.errors import SpamoInputError
from spamo.metrics import parse_metrics_text, score_against_truth
from spamo.preprocessing import preprocess
from spamo.simulate import write_simulation

SMALL = {"RNA": 60, "ADT": 30, "ATAC": 80}
N = 324

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _authors_layout(folder: Path, seed: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Rewrite a simulated Simulation folder the way the authors' files are laid out.

    Returns (perm, truth_by_id): row r of every file is the spot whose id is perm[r]; truth_by_id[i] is spot i's label.
    """
    write_simulation(folder, n_spots=N, seed=seed, layout="sim", n_features=SMALL)
    truth_by_id = np.loadtxt(folder / "GT_1.txt", dtype=np.int64)  # simulated in id order (row i = spot i)
    rng = np.random.default_rng(11)
    perm = rng.permutation(N)
    shuffle = rng.permutation(N)
    for name in ("adata_RNA.h5ad", "adata_ADT.h5ad", "adata_ATAC.h5ad"):
        adata = ad.read_h5ad(folder / name)
        counts = adata.layers["counts"].tocsr()
        authors = ad.AnnData(X=counts[perm].astype(np.float32), var=adata.var.copy())
        authors.layers["counts"] = counts[shuffle][perm]  # another count matrix: same values, other spots' rows
        authors.obs_names = [str(i) for i in perm]  # '529', '478', ... as in the authors' files
        authors.obsm["spatial"] = adata.obsm["spatial"][perm]
        authors.obsm["spfac"] = adata.obsm["spfac"][perm]
        authors.write_h5ad(folder / name)
    (folder / "GT_1.txt").write_text("".join(f"{int(v)}\n" for v in truth_by_id))  # line i = spot named i
    return perm, truth_by_id


@pytest.fixture(scope="module")
def authors_root(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    root = tmp_path_factory.mktemp("Data")
    perm, truth_by_id = _authors_layout(root / "Simulation")
    return root, perm, truth_by_id


def test_truth_is_aligned_to_rows_by_spot_id(authors_root):
    root, perm, truth_by_id = authors_root
    data = datasets.load("sim", data_root=root)
    assert data.label_order == "spot_id" and data.matrix_label == ".X"
    np.testing.assert_array_equal(data.spot_ids, perm)
    np.testing.assert_array_equal(data.truth, truth_by_id[perm])  # row r's label is the label of spot id perm[r]
    # read row-wise, the same file would be unrelated to the rows: this is the ARI the old loader gave
    assert score_against_truth(truth_by_id, data.truth)["ARI"] < 0.1


def test_features_come_from_x_and_layer_reads_the_layer(authors_root):
    root, _, _ = authors_root
    from_x = preprocess(datasets.load("sim", data_root=root))
    from_layer = preprocess(datasets.load("sim", data_root=root, layer="counts"))
    stripped = datasets.load("sim", data_root=root)
    for adata in stripped.modalities.values():
        del adata.layers["counts"]  # what remains is .X alone
    only_x = preprocess(stripped)
    for a, b, c in zip(from_x.features, only_x.features, from_layer.features):
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(np.abs(a), np.abs(c), atol=1e-3)


def test_run_toml_records_the_matrix_and_the_order_and_layer_refusal(authors_root, tmp_path):
    root, _, _ = authors_root
    result = CliRunner().invoke(app, ["data", "info", "--dataset", "sim", "--data-root", str(root), "--layer",
                                      "counts"])
    assert result.exit_code == 0 and "layers['counts']" in result.stdout and "spot_id" in result.stdout
    result = CliRunner().invoke(app, ["data", "info", "--dataset", "sim", "--data-root", str(root), "--layer", "raw"])
    assert result.exit_code == 2 and "has no layers['raw']" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("rename, problem", [
    (lambda names: ["x" + names[0]] + names[1:], "has no leading number"),
    (lambda names: [str(N + 5)] + names[1:], f"is id {N + 5}"),
    (lambda names: ["0" + names[1]] + names[1:], "is used 2 times"),  # "0241" and "241" are both id 241
])
def test_names_that_are_not_a_permutation_are_refused(authors_root, tmp_path, rename, problem):
    root, _, _ = authors_root
    folder = tmp_path / "Simulation"
    shutil.copytree(root / "Simulation", folder)
    for name in ("adata_RNA.h5ad", "adata_ADT.h5ad", "adata_ATAC.h5ad"):
        adata = ad.read_h5ad(folder / name)
        adata.obs_names = rename(list(adata.obs_names))
        adata.write_h5ad(folder / name)
    before = sorted(p.name for p in folder.iterdir())
    result = CliRunner().invoke(app, ["data", "info", str(folder)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "adata_RNA.h5ad" in lines[0] and "spot ids 0.." in lines[0] and problem in lines[0]
    assert sorted(p.name for p in folder.iterdir()) == before


# ------------------------------------------------------------------------------------------------ profiles
@pytest.mark.parametrize("key", ["hln", "mb", "sim"])
def test_the_published_trial_of_each_search_space_is_the_profile(key):
    """`spamo tune`'s first trial (defaults + [fixed] + the published point) is exactly `--reproduce published`."""
    profile = reproduce.published_config(key)
    n_modalities = 3 if key == "sim" else 2
    n_spots = {"hln": 3484, "mb": 9196, "sim": 1296}[key]
    space = load_space(space_path(key, None)).for_data(n_modalities, None)
    base = SpamoConfig(data_type=profile.data_type or datasets.get_dataset_spec(key).data_type, n_clusters=5)
    (point,) = space.first_points(base.resolve(n_modalities, n_spots))
    trial = trial_config(base, space.fixed, point, n_modalities, n_spots)
    wanted = profile.replace(data_type=base.data_type, n_clusters=5).resolve(n_modalities, n_spots)
    # the only difference: tune's clustering is "auto" (mclust where R is usable), the profile names mclust
    assert trial.replace(cluster_method="mclust") == wanted


def test_profiles_replay_what_run_sh_really_ran():
    sim, hln, mb = (reproduce.published_config(k).replace(data_type=datasets.get_dataset_spec(k).data_type)
                    .resolve(3 if k == "sim" else 2, 2000) for k in ("sim", "hln", "mb"))
    # the 3-modality trainer ignores --RNA_weight/--ADT_weight: 1/3/3, and updates the EMA target before the step
    assert (sim.modality_weights, sim.knn_k, sim.ema_beta, sim.seed) == ((1.0, 3.0, 3.0), 20, 0.9, 2025)
    assert (sim.optimizer, sim.lr, sim.weight_decay, sim.scheduler, sim.epochs) == ("adam", 1e-3, 2e-2, "none", 200)
    assert sim.ema_update == "before_step" and sim.feature_graph_weight == "connectivity"
    for two in (hln, mb):  # the 2-modality reference: distance-valued feature edges, EMA after the step
        assert two.feature_graph_weight == "distance" and two.ema_update == "after_step" and two.ema_beta == 0.9
    assert (hln.modality_weights, hln.dgi_weight, hln.optimizer, hln.scheduler, hln.epochs) == (
        (5.0, 5.0), 0.3, "adam", "cosine", 200)
    assert (mb.modality_weights, mb.optimizer, mb.scheduler, mb.epochs, mb.weight_decay) == (
        (1.0, 10.0), "adamw", "cosine", 400, 0.05)
    for config in (sim, hln, mb):  # the reference's behaviours, and the published clustering
        assert (config.detach_feature_graph, config.smooth_degree_clamp, config.dgi_init, config.knn_ties) == (
            False, True, "torch", "sklearn")
        assert (config.cluster_method, config.n_pcs) == ("mclust", 20)
    # --reproduce published is the base; flags given as well still win
    profile = reproduce.published_config("sim")
    assert build_config(None, base=profile, epochs=3).replace(epochs=200) == profile
    with pytest.raises(SpamoInputError, match="not both"):
        build_config("x.toml", base=profile)


def test_run_refuses_an_unknown_profile_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["run", "--dataset", "sim", "--data-root", str(tmp_path), "--reproduce", "best",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "'best' is not a known profile" in result.stderr and not (tmp_path / "out").exists()


def test_profile_key_and_unknown_profile():
    assert reproduce.profile_key("hln") == "hln"
    assert reproduce.profile_key(None, None, "Spatial-epigenome-transcriptome") == "mb"
    with pytest.raises(SpamoInputError, match="no published profile for data type SPOTS"):
        reproduce.profile_key(None, None, "SPOTS")
    with pytest.raises(SpamoInputError, match="'best' is not a known profile"):
        reproduce.published_config("sim", "best")


# ------------------------------------------------------------------------------------------------ spamo reproduce
def test_missing_dataset_folder_is_one_line_naming_the_fetch_command(tmp_path):
    (tmp_path / "Data").mkdir()
    result = CliRunner().invoke(app, ["reproduce", "all", "--data-root", str(tmp_path / "Data"), "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "HLN" in lines[0] and "spamo data download hln" in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "Data" / "Simulation").exists()


@pytest.mark.slow
def test_reproduce_sim_is_deterministic_and_writes_the_reference_layout(authors_root, tmp_path):
    root, perm, truth_by_id = authors_root
    outs = []
    for name in ("first", "second"):
        result = CliRunner().invoke(app, ["reproduce", "sim", "--data-root", str(root), "--out",
                                          str(tmp_path / name), "--epochs", "4", "--no-plot", "--quiet"])
        assert result.exit_code == 0, (result.output, result.exception)
        outs.append(tmp_path / name / "Simulation")
    first, second = outs
    labels = np.loadtxt(first / "labels.txt", dtype=np.int64)
    np.testing.assert_array_equal(labels, np.loadtxt(second / "labels.txt", dtype=np.int64))  # same labels twice
    # labels.txt is in spot-id order: scored against GT_1.txt as the authors' cal_matrics.py would, it gives the
    # in-memory scores (metrics.json), and metrics.txt holds them in the reference's layout
    metrics = json.loads((first / "metrics.json").read_text())["scores"]
    by_file = score_against_truth(truth_by_id, labels)
    assert by_file["ARI"] == pytest.approx(metrics["ari"]) and by_file["NMI"] == pytest.approx(metrics["nmi"])
    text = (first / "metrics.txt").read_text()
    assert text.splitlines()[0].startswith("Our     jaccard: ") and f"Our     (ARI): {metrics['ari']:.6f}\n" in text
    assert parse_metrics_text(text)["Avg."] == pytest.approx(metrics["avg"], abs=1e-6)
    record = tomllib.loads((first / "run.toml").read_text())
    assert record["run"]["matrix"] == ".X" and record["run"]["label_order"] == "spot_id"
    assert record["config"]["modality_weights"] == [1.0, 3.0, 3.0] and record["config"]["ema_update"] == "before_step"
    summary = tomllib.loads((tmp_path / "first" / "reproduce.toml").read_text())["sim"]
    assert summary["published"]["ari"] == 0.996 and summary["ours"]["ari"] == pytest.approx(metrics["ari"])
    assert summary["backend"].startswith("mclust EEE on PCA-20")
    assert len(summary["ground_truth_sha256"]) == 64
    assert "sim " in result.stdout and "0.996" in result.stdout and summary["ground_truth_sha256"] in result.stdout
