"""The built-in simulator: determinism, layout, planted features, and that integration beats any one modality."""

from __future__ import annotations

import itertools

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.metrics import adjusted_rand_score
from typer.testing import CliRunner

from cli import app
from spamo.simulate import (LAYOUT_MODALITIES, MODALITY_MODELS, domain_groups, simulate, truth_from_spfac,
                            write_simulation)

SMALL = {"RNA": 200, "ADT": 100, "ATAC": 300}


def _assert_same(a: ad.AnnData, b: ad.AnnData) -> None:
    assert list(a.obs_names) == list(b.obs_names) and list(a.var_names) == list(b.var_names)
    assert (a.layers["counts"] != b.layers["counts"]).nnz == 0
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])


def test_same_seed_same_data_different_seed_different_data(tmp_path):
    first = simulate(400, seed=7, n_features=SMALL)
    second = simulate(400, seed=7, n_features=SMALL)
    other = simulate(400, seed=8, n_features=SMALL)
    for name in LAYOUT_MODALITIES["sim"]:
        _assert_same(first.modalities[name], second.modalities[name])
        assert (first.modalities[name].layers["counts"] != other.modalities[name].layers["counts"]).nnz > 0
    np.testing.assert_array_equal(first.truth, second.truth)

    # the files written twice hold the same arrays
    write_simulation(tmp_path / "a", n_spots=400, seed=7, n_features=SMALL)
    write_simulation(tmp_path / "b", n_spots=400, seed=7, n_features=SMALL)
    for name in ("adata_RNA.h5ad", "adata_ADT.h5ad", "adata_ATAC.h5ad"):
        _assert_same(ad.read_h5ad(tmp_path / "a" / name), ad.read_h5ad(tmp_path / "b" / name))
    assert (tmp_path / "a" / "GT_1.txt").read_bytes() == (tmp_path / "b" / "GT_1.txt").read_bytes()


def test_simulation_follows_the_method_layout():
    sim = simulate(1296, seed=0)
    rna = sim.modalities["RNA"]
    assert rna.shape == (1296, 1000)
    assert sim.modalities["ADT"].shape == (1296, 100) and sim.modalities["ATAC"].shape == (1296, 1000)
    coords = rna.obsm["spatial"]
    assert coords.min() == -2.0 and coords.max() == 2.0
    assert len(np.unique(coords[:, 0])) == 36 and len(np.unique(coords[:, 1])) == 36
    assert rna.obs_names[0] == "0000_spot" and rna.obs_names[1295] == "1295_spot"
    # spfac one-hot, background rows zero, and the method's truth formula gives back the labels
    spfac = rna.obsm["spfac"]
    assert spfac.shape == (1296, 4) and set(np.unique(spfac)) == {0.0, 1.0} and spfac.sum(axis=1).max() == 1
    np.testing.assert_array_equal(truth_from_spfac(spfac), sim.truth)
    assert rna.obsm["nsfac"].shape == (1296, 3)
    counts = np.bincount(sim.truth)
    assert counts.size == 5 and counts.min() >= 100  # every domain is substantial
    for adata in sim.modalities.values():
        assert sp.issparse(adata.layers["counts"]) and adata.layers["counts"].dtype == np.int32
        assert sp.issparse(adata.X) and adata.X.dtype == np.float32
        assert (adata.X != adata.layers["counts"]).nnz == 0  # .X is the counts, as the loaders read it
        assert adata.layers["lognorm"].dtype == np.float32 and adata.layers["lognorm"].nnz == adata.X.nnz
        assert adata.layers["counts"].min() >= 0
    atac = sim.modalities["ATAC"].layers["counts"]
    assert atac.nnz / np.prod(atac.shape) < 0.2 and atac.max() <= 4  # sparse, binary-like


def test_hex_grid_and_wide_spot_names():
    sim = simulate(12_000, seed=1, layout="hln", grid="hex", n_features={"RNA": 30, "ADT": 20})
    rna = sim.modalities["RNA"]
    assert rna.obs_names[11_999] == "11999_spot"
    rows = np.unique(np.round(rna.obsm["spatial"][:, 1], 9))
    xs_row0 = rna.obsm["spatial"][np.isclose(rna.obsm["spatial"][:, 1], rows[0]), 0]
    xs_row1 = rna.obsm["spatial"][np.isclose(rna.obsm["spatial"][:, 1], rows[1]), 0]
    assert not np.isclose(xs_row0[0], xs_row1[0])  # odd rows are shifted by half a spot
    assert list(sim.modalities) == ["RNA", "ADT"]


def test_every_pair_of_domains_is_told_apart_by_some_modality_but_none_tells_all():
    for n_domains in range(4, 9):
        groups = {m: domain_groups(MODALITY_MODELS[m], n_domains) for m in LAYOUT_MODALITIES["sim"]}
        for layout, names in LAYOUT_MODALITIES.items():
            for a, b in itertools.combinations(range(n_domains), 2):
                assert any(groups[m][a] != groups[m][b] for m in names), (layout, n_domains, a, b)
        for m, g in groups.items():
            assert len(set(g)) == n_domains - 1, m


def test_planted_features_are_up_in_their_domain():
    sim = simulate(900, seed=2)
    all_names = []
    for name, adata in sim.modalities.items():
        planted = adata.uns["planted_features"]
        separated = sorted(int(k) for k in planted)
        blind = MODALITY_MODELS[name].blind_pair(5)
        assert separated == sorted(set(range(5)) - set(blind))
        assert list(adata.uns["planted_shared_features"]) == [f"{blind[0]},{blind[1]}"]
        counts = adata.layers["counts"].tocsc()
        for label, features in planted.items():
            assert 20 <= len(features) <= 50
            all_names += [(name, f) for f in features]
            cols = adata.var_names.get_indexer(features)
            inside = sim.truth == int(label)
            mean_in = np.asarray(counts[inside][:, cols].mean(axis=0)).ravel()
            mean_out = np.asarray(counts[~inside][:, cols].mean(axis=0)).ravel()
            assert (mean_in > 1.5 * mean_out).mean() > 0.9, (name, label)
    assert len(all_names) == len(set(all_names))  # distinct feature names per modality


def _log_pca(counts):
    counts = sp.csr_matrix(counts, dtype=np.float64)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    x = sp.diags(1e4 / np.maximum(totals, 1)) @ counts
    x.data = np.log1p(x.data)
    return PCA(10, random_state=0).fit_transform(x.toarray())


def _clr_pca(counts):
    x = np.asarray(counts.toarray(), dtype=np.float64)
    x = np.log1p(x / np.exp(np.log1p(x).mean(axis=1, keepdims=True)))
    return PCA(10, random_state=0).fit_transform(x)


def _lsi(counts):
    counts = sp.csr_matrix(counts, dtype=np.float64)
    tf = sp.diags(1 / np.maximum(np.asarray(counts.sum(axis=1)).ravel(), 1)) @ counts
    x = tf @ sp.diags(counts.shape[0] / np.maximum(np.asarray(counts.sum(axis=0)).ravel(), 1))
    x.data = np.log1p(x.data * 1e4)
    z = TruncatedSVD(11, random_state=0).fit_transform(x)[:, 1:]
    return (z - z.mean(axis=1, keepdims=True)) / z.std(axis=1, keepdims=True)


FEATURES = {"RNA": _log_pca, "ADT": _clr_pca, "ATAC": _lsi}


def test_integration_beats_every_single_modality():
    """k-means on each modality's features vs on all of them, for the modality sets of every layout.

    A modality's values do not depend on which others are simulated, so the `hln` (RNA+ADT) and `mb` (RNA+ATAC)
    layouts are the corresponding subsets of the `sim` simulation.
    """
    sim = simulate(900, seed=3, layout="sim")
    feats = {m: FEATURES[m](a.layers["counts"]) for m, a in sim.modalities.items()}

    def kmeans_ari(z):
        return adjusted_rand_score(sim.truth, KMeans(5, n_init=10, random_state=0).fit_predict(z))

    single = {m: kmeans_ari(z) for m, z in feats.items()}
    for layout, names in LAYOUT_MODALITIES.items():
        together = kmeans_ari(np.hstack([feats[m] / np.sqrt(feats[m].var(axis=0).sum()) for m in names]))
        assert together >= 0.95, (layout, together, single)
        for m in names:
            assert single[m] <= together - 0.15, (layout, m, single[m], together)


def test_layouts_share_each_modality():
    full = simulate(300, seed=5, layout="sim", n_features=SMALL)
    for layout in ("hln", "mb"):
        part = simulate(300, seed=5, layout=layout, n_features=SMALL)
        for name, adata in part.modalities.items():
            _assert_same(adata, full.modalities[name])


def test_cli_simulate_writes_layout_and_refuses_bad_sizes(tmp_path):
    runner = CliRunner()
    out = tmp_path / "mb"
    result = runner.invoke(app, ["data", "simulate", "--out", str(out), "--n-spots", "300", "--seed", "1",
                                 "--layout", "mb"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["MB_cluster.txt", "adata_RNA.h5ad",
                                                     "adata_peaks_normalized.h5ad"]
    assert len((out / "MB_cluster.txt").read_text().split()) == 300

    for args, where in ([["--n-spots", "10"], "--n-spots"], [["--layout", "xyz"], "--layout"],
                        [["--grid", "tri"], "--grid"]):
        bad = tmp_path / "bad"
        result = runner.invoke(app, ["data", "simulate", "--out", str(bad), *args])
        assert result.exit_code == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and where in lines[0], result.stderr
        assert not bad.exists()


# ------------------------------------------------------------------------------------------------ difficulty, presets
from spamo.errors import SpamoInputError  # noqa: E402
from spamo.simulate import DEFAULT_DIFFICULTY, Difficulty, domain_labels, get_preset, load_presets  # noqa: E402


def test_default_difficulty_is_the_original_simulation():
    plain = simulate(400, seed=3, n_features=SMALL)
    graded = simulate(400, seed=3, n_features=SMALL, difficulty=Difficulty())
    for name in LAYOUT_MODALITIES["sim"]:
        _assert_same(plain.modalities[name], graded.modalities[name])
    assert DEFAULT_DIFFICULTY == Difficulty()


def test_blind_pairs_and_the_confusable_pair_merge_domains():
    rna, adt, atac = (MODALITY_MODELS[m] for m in ("RNA", "ADT", "ATAC"))
    hard = Difficulty(blind={"RNA": [(3, 4)]}, confusable=(4, 5), confusable_modality="ATAC")
    groups = domain_groups(rna, 6, hard)
    assert groups[1] == groups[2] and groups[3] == groups[4] == groups[5]  # own pair, extra pair, confusable
    assert len(set(groups)) == 3
    atac_groups = domain_groups(atac, 6, hard)
    assert atac_groups[4] != atac_groups[5]  # the weak modality still tells the confusable pair apart
    assert atac_groups[0] == atac_groups[1]  # and keeps its own blind pair
    assert domain_groups(adt, 6, hard)[4] == domain_groups(adt, 6, hard)[5]
    with pytest.raises(SpamoInputError, match="outside"):
        domain_groups(rna, 5, Difficulty(blind={"RNA": [(3, 9)]}))
    # a pair the weak modality merges itself would be invisible to all: refused in one line
    with pytest.raises(SpamoInputError, match="invisible"):
        simulate(400, seed=1, n_domains=6, difficulty=Difficulty(confusable=(4, 5), confusable_modality="ADT"))


def test_contrast_and_irregularity_act():
    flat = simulate(400, seed=4, layout="hln", n_features={"RNA": 200, "ADT": 100}, difficulty=Difficulty(contrast=0))
    adt = np.asarray(flat.modalities["ADT"].layers["counts"].todense(), dtype=float)
    means = np.array([adt[flat.truth == d].mean(axis=0) for d in np.unique(flat.truth)])
    planted = flat.modalities["ADT"].uns["planted_features"]
    idx = [int(name[len("Protein"):]) for names in planted.values() for name in names]
    spread = means[:, idx].std(axis=0) / means[:, idx].mean(axis=0)
    assert spread.max() < 0.15  # no fold change left: planted proteins look the same in every domain
    coords = np.random.default_rng(0).uniform(-2, 2, size=(3000, 2))
    smooth = domain_labels(coords, 6, np.random.default_rng(1))
    rough = domain_labels(coords, 6, np.random.default_rng(1), irregularity=1.0, shape_rng=np.random.default_rng(2))
    assert 0.02 < np.mean(smooth != rough) < 0.5 and set(np.unique(rough)) == set(np.unique(smooth))


def test_presets_are_graded_seeded_and_written_by_the_cli(tmp_path):
    presets = load_presets()
    assert len(presets) >= 8
    assert {p.layout for p in presets.values()} >= {"hln", "mb", "sim"}
    assert all(1000 <= p.n_spots <= 10_000 for p in presets.values())
    assert len({p.seed for p in presets.values()}) == len(presets)
    name = next(n for n, p in presets.items() if p.layout == "hln")
    runner = CliRunner()
    for folder in ("a", "b"):
        result = runner.invoke(app, ["data", "simulate", "--preset", name, "--out", str(tmp_path / folder)])
        assert result.exit_code == 0, result.output
    for file in ("adata_RNA.h5ad", "adata_ADT.h5ad"):
        _assert_same(ad.read_h5ad(tmp_path / "a" / file), ad.read_h5ad(tmp_path / "b" / file))
    from spamo.datasets import get_dataset_spec

    truth_file = tmp_path / "a" / get_dataset_spec("hln").truth_file
    np.testing.assert_array_equal(get_preset(name).simulate().truth, np.loadtxt(truth_file, dtype=int))
    result = runner.invoke(app, ["data", "simulate", "--preset", "no_such_preset", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "unknown preset" in result.output and not (tmp_path / "c").exists()


def test_dataset_name_accepts_a_preset(tmp_path):
    from spamo.datasets import load_dataset

    name = next(iter(load_presets()))
    data = load_dataset(name, data_root=tmp_path)
    preset = get_preset(name)
    assert data.name == name and data.coords.shape[0] == preset.n_spots
    assert data.n_clusters == preset.n_domains and (tmp_path / name).is_dir()
    np.testing.assert_array_equal(np.sort(np.unique(data.truth)), np.arange(preset.n_domains))
    # the way every command loads (`spamo run/tune --dataset NAME`), and a name that is neither is refused
    from spamo.pipeline import load_data

    again = load_data(dataset=name, data_root=tmp_path)
    assert again.name == name and np.array_equal(again.truth, data.truth)
    with pytest.raises(SpamoInputError, match="simulation presets: .*" + name):
        load_data(dataset="no_such_set", data_root=tmp_path)
