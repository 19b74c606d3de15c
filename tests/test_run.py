"""`spamo run` end to end: the published method on the built-in simulation, its outputs, its refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli import app
from spamo import pipeline
from spamo.clustering import cluster, r_available
from spamo.config import SpamoConfig
from spamo.errors import SpamoInputError
from spamo.metrics import clustering_scores, label_free_parts, score_against_truth
from spamo.plots import place_embedding

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def default_simulation(tmp_path_factory):
    """The default simulation (1296 spots, 3 modalities, 5 domains), prepared once with the default settings."""
    root = tmp_path_factory.mktemp("data")
    data = pipeline.load_data(dataset="sim", data_root=root)
    prepared, config = pipeline.prepare(data, SpamoConfig(cluster_method="gmm"))
    return data, prepared, config


@pytest.mark.slow
def test_default_run_recovers_the_simulated_domains_and_beats_every_single_modality(default_simulation):
    _, prepared, config = default_simulation
    full = pipeline.fit_and_cluster(prepared, config, progress=False)
    assert full.scores["ari"] >= 0.95, full.scores
    again = pipeline.fit_and_cluster(prepared, config, progress=False)
    np.testing.assert_array_equal(full.labels, again.labels)  # fixed seed on CPU: the same labels twice
    np.testing.assert_array_equal(full.fused, again.fused)
    for name in prepared.modality_names:
        alone = prepared.subset_modalities([name])
        single = config.replace(modality_weights=None).resolve(1, alone.n_spots)
        result = pipeline.fit_and_cluster(alone, single, progress=False)
        assert result.scores["ari"] <= full.scores["ari"] - 0.15, (name, result.scores["ari"], full.scores["ari"])


def spamo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def small_simulation(tmp_path_factory):
    from spamo.simulate import write_simulation

    folder = tmp_path_factory.mktemp("small") / "sim"
    write_simulation(folder, n_spots=400, seed=3, layout="hln")
    return folder


@pytest.mark.slow
def test_run_writes_every_output_in_the_reference_formats(small_simulation, tmp_path):
    out = tmp_path / "run"
    done = spamo("run", "--data-dir", small_simulation, "--data-type", "10x", "--n-clusters", "5", "--epochs", "15",
                 "--KNN_k", "10", "--RNA_weight", "2", "--cluster-method", "gmm", "--seed", "7", "--out", out,
                 "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["domains.png", "embedding.h5ad", "labels.txt", "metrics.json",
                                                      "metrics.txt", "run.toml"]
    labels = np.loadtxt(out / "labels.txt", dtype=int)
    assert labels.shape == (400,) and len(np.unique(labels)) == 5
    truth = np.loadtxt(small_simulation / "GT_labels.txt", dtype=int)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["scores"]["ari"] == pytest.approx(score_against_truth(truth, labels)["ARI"])
    assert metrics["ground_truth"]["sha256"] and metrics["scored_against_truth"] is True
    text = (out / "metrics.txt").read_text().splitlines()
    assert text[0].startswith("Our     jaccard: ") and any(line.startswith("Our     (ARI): ") for line in text)
    assert all(len(line.split(": ")[1].split(".")[1]) == 6 for line in text)
    emb = ad.read_h5ad(out / "embedding.h5ad")
    assert emb.obsm["X_spamo"].shape == (400, 64) and emb.obsm["X_spamo_RNA"].shape == (400, 64)
    assert np.allclose(np.linalg.norm(emb.obsm["X_spamo"], axis=1), 1.0, atol=1e-4)
    assert (emb.obs["domain"].astype(int).to_numpy() == labels).all()
    assert emb.obsm["spatial"].shape == (400, 2) and list(emb.uns["spamo"]["modalities"]) == ["RNA", "ADT"]
    record = tomllib.loads((out / "run.toml").read_text())
    assert record["config"]["knn_k"] == 10 and record["config"]["modality_weights"] == [2.0, 5.0]
    assert record["config"]["epochs"] == 15 and record["config"]["seed"] == 7
    assert record["versions"]["torch"].startswith("2.13") and set(record["inputs"]) == {"RNA", "ADT"}
    assert record["ground_truth"]["sha256"] == metrics["ground_truth"]["sha256"]
    assert record["timings"]["train_s"] > 0


@pytest.mark.slow
def test_a_config_file_is_read_and_flags_win(small_simulation, tmp_path):
    (tmp_path / "cfg.toml").write_text("[spamo]\nKNN_k = 8\nepochs_override = 12\ndgi_weight = 0.3\n")
    out = tmp_path / "run"
    done = spamo("run", "--data-dir", small_simulation, "--data-type", "10x", "--n-clusters", "5",
                 "--config", tmp_path / "cfg.toml", "--epochs", "5", "--no-plot", "--cluster-method", "kmeans",
                 "--out", out, "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    config = tomllib.loads((out / "run.toml").read_text())["config"]
    assert (config["knn_k"], config["epochs"], config["dgi_weight"]) == (8, 5, 0.3)


@pytest.mark.parametrize("args, where, fresh", [
    (["--n-clusters", "1"], "n_clusters", True),
    (["--n-clusters", "5", "--KNN_k", "400"], "knn_k", False),
    (["--n-clusters", "5", "--optimizer", "lbfgs"], "optimizer", False),
    (["--n-clusters", "5", "--modalities", "ATAC"], "--modalities", False),
])
def test_bad_settings_exit_2_with_one_line_and_write_nothing(small_simulation, tmp_path, monkeypatch, args, where,
                                                             fresh):
    """The first case in a fresh interpreter (nothing else reaches stderr, no import-time warning), the others in
    this process (the same command, without paying 5 s for importing torch and scikit-learn again)."""
    out = tmp_path / "run"
    argv = ["run", "--data-dir", str(small_simulation), "--data-type", "10x", "--epochs", "2", *args, "--out",
            str(out), "--quiet"]
    if fresh:
        done = spamo(*argv, cwd=tmp_path)
        code, stderr = done.returncode, done.stderr
    else:
        monkeypatch.chdir(tmp_path)
        result = CliRunner().invoke(app, argv)
        code, stderr = result.exit_code, result.stderr
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and where in lines[0], stderr
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


def test_the_label_free_parts_computed_beforehand_give_the_same_scores():
    """`cluster_and_score` computes `label_free_parts` while R clusters; the scores must not change by it."""
    rng = np.random.default_rng(4)
    truth = np.repeat([0, 1, 2], 100)
    embedding = (np.eye(3, 16)[truth] * 3 + rng.normal(size=(300, 16))).astype(np.float32)
    labels = np.where(rng.uniform(size=300) < 0.1, rng.integers(0, 3, 300), truth)
    coords = rng.uniform(size=(300, 2))
    for extra in ({"coords": coords, "truth": truth}, {"coords": coords}, {"truth": truth}, {}):
        parts = label_free_parts(embedding, seed=3, **extra)
        assert clustering_scores(labels, embedding, seed=3, parts=parts, **extra) == \
            clustering_scores(labels, embedding, seed=3, **extra)
    with pytest.raises(SpamoInputError, match="299 labels but the embedding has 300 rows"):
        clustering_scores(labels[:-1], embedding, seed=3, parts=label_free_parts(embedding, seed=3))


@pytest.mark.r
@pytest.mark.skipif(not r_available(), reason="R, rpy2 or the mclust package is not installed")
def test_what_is_computed_beside_r_equals_what_is_computed_after_it(small_simulation, tmp_path):
    """mclust's labels and every score as computed in place, the picture's layout as `place_embedding` computes
    it, and the run folder's picture byte for byte the one drawn without the layout computed beforehand."""
    data = pipeline.load_data(data_dir=small_simulation, data_type="10x", n_clusters=5)
    prepared, config = pipeline.prepare(data, SpamoConfig(cluster_method="mclust", n_clusters=5))
    fused = prepared.features[0][:, :20] / np.linalg.norm(prepared.features[0][:, :20], axis=1, keepdims=True)
    labels, scores, placement = pipeline.cluster_and_score(prepared, fused, config, picture_layout="graph")
    alone = cluster(fused, 5, method="mclust", n_pcs=config.n_pcs, coords=prepared.coords)
    assert np.array_equal(labels, alone)
    assert scores == clustering_scores(alone, fused, coords=prepared.coords, truth=prepared.truth, seed=config.seed)
    assert np.array_equal(placement.xy, place_embedding(fused, "graph", config.seed).xy)
    assert pipeline.cluster_and_score(prepared, fused, config)[2] is None  # no picture asked, none computed
    gmm = config.replace(cluster_method="gmm")
    assert pipeline.cluster_and_score(prepared, fused, gmm, picture_layout="graph")[2] is None  # no R, no helper
    result = pipeline.RunResult(prepared=prepared, config=config, fused=fused, per_modality=[fused, fused],
                                labels=labels, scores=scores, history=[], data=data, placement=placement)
    with_placement = result.write(tmp_path / "beside")
    result.placement = None
    without = result.write(tmp_path / "after")
    for name in ("domains.png", "labels.txt", "metrics.json", "embedding.h5ad"):
        assert (with_placement / name).read_bytes() == (without / name).read_bytes(), name
