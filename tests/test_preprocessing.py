"""Preprocessing of docs/method.md section 1 on small generated count data (negative binomial)."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from spamo.data import MultiOmicsData
from spamo.datatypes import get_data_type
from spamo.errors import SpamoInputError
from spamo.preprocessing import (
    PCA_SOLVERS,
    Recipe,
    clr,
    features_per_spot,
    lsi,
    pca,
    pca_solver,
    preprocess,
    scale,
    spots_per_feature,
)

N = 150


def _nb(rng, n, p, mean, sparse=True):
    """Negative-binomial counts with per-feature means and per-spot library sizes."""
    mu = rng.gamma(1.0, mean, size=(1, p)) * rng.lognormal(0, 0.3, size=(n, 1))
    counts = rng.negative_binomial(2, 2 / (2 + mu)).astype(np.float32)
    return sp.csr_matrix(counts) if sparse else counts


def _dataset(data_type, names, shapes, seed=0, n=N):
    rng = np.random.default_rng(seed)
    mods = {}
    for name, (p, mean) in zip(names, shapes):
        a = ad.AnnData(_nb(rng, n, p, mean, sparse=name != "ADT"))
        a.obs_names = [f"spot{i}" for i in range(n)]
        mods[name] = a
    coords = rng.uniform(size=(n, 2))
    truth = rng.integers(0, 3, n)
    return MultiOmicsData("t", data_type, mods, coords, truth=truth, sources={k: f"/data/{k}.h5ad" for k in names})


@pytest.mark.parametrize("data_type", ["10x", "SPOTS"])
def test_rna_adt_types_give_n_adt_minus_one_components(data_type):
    data = _dataset(data_type, ["RNA", "ADT"], [(400, 0.3), (12, 40)])
    # a gene positive in fewer than 10 spots is dropped before HVG selection
    rna = data.modalities["RNA"].X.tolil()
    rna[:, 0] = 0
    rna[:5, 0] = 3
    data.modalities["RNA"].X = rna.tocsr()
    prepared = preprocess(data)
    assert [f.shape for f in prepared.features] == [(N, 11), (N, 11)]
    assert all(f.dtype == np.float32 and np.isfinite(f).all() for f in prepared.features)
    assert prepared.n_spots == N and np.array_equal(prepared.kept_index, np.arange(N))


def test_x_is_read_unless_a_layer_is_named():
    """As the reference: `.X` is the input of every modality; `data.layer` (--layer NAME) reads that layer."""
    data = _dataset("10x", ["RNA", "ADT"], [(300, 0.5), (8, 30)])
    adt = data.modalities["ADT"]
    adt.layers["counts"] = np.full(adt.shape, 7.0, dtype=np.float32)  # a matrix that would give constant CLR
    assert preprocess(data).features[1].std(axis=0).max() > 0.1  # .X read: informative features
    data.layer = "counts"
    data.modalities["RNA"].layers["counts"] = data.modalities["RNA"].X.copy()
    assert preprocess(data).features[1].std(axis=0).max() < 1e-6  # the layer read: constant CLR


def test_stereo_cite_seq_filters_genes_spots_and_proteins():
    data = _dataset("Stereo-CITE-seq", ["RNA", "ADT"], [(300, 4.0), (15, 20)], seed=1)
    rna = data.modalities["RNA"].X.tolil()
    rna[:7, :] = 0  # seven spots with almost no genes
    rna[:7, :5] = 1
    data.modalities["RNA"].X = rna.tocsr()
    adt = data.modalities["ADT"].X
    adt[:, 3] = 0
    adt[:40, 3] = 5  # a protein in only 40 spots
    prepared = preprocess(data)
    assert np.array_equal(prepared.kept_index, np.arange(7, N))
    assert np.array_equal(prepared.truth, data.truth[7:])
    assert np.array_equal(prepared.spot_names, data.spot_names[7:])
    assert np.array_equal(prepared.coords, data.coords[7:])
    # n_ADT counts the 14 proteins left, so 13 components per modality
    assert [f.shape for f in prepared.features] == [(N - 7, 13), (N - 7, 13)]


def test_epigenome_transcriptome_uses_lsi_or_given_x_lsi():
    data = _dataset("Spatial-epigenome-transcriptome", ["RNA", "ATAC"], [(600, 1.5), (500, 0.2)], seed=2, n=120)
    prepared = preprocess(data)
    assert [f.shape for f in prepared.features] == [(120, 50), (120, 50)]
    given = np.random.default_rng(0).normal(size=(120, 17))
    data.modalities["ATAC"].obsm["X_lsi"] = given
    prepared = preprocess(data)
    assert np.allclose(prepared.features[1], given.astype(np.float32))


def test_epigenome_transcriptome_drops_spots_with_few_genes():
    data = _dataset("Spatial-epigenome-transcriptome", ["RNA", "ATAC"], [(600, 1.5), (500, 0.2)], seed=3, n=120)
    rna = data.modalities["RNA"].X.tolil()
    rna[[4, 9], :] = 0
    rna[[4, 9], :150] = 2  # 150 < 200 genes
    data.modalities["RNA"].X = rna.tocsr()
    data.modalities["ATAC"].obsm["X_lsi"] = np.arange(120 * 3, dtype=float).reshape(120, 3)
    prepared = preprocess(data)
    keep = np.setdiff1d(np.arange(120), [4, 9])
    assert np.array_equal(prepared.kept_index, keep)
    assert np.allclose(prepared.features[1], data.modalities["ATAC"].obsm["X_lsi"][keep])


def test_simulation_three_modalities_and_determinism():
    data = _dataset("Simulation", ["RNA", "ADT", "ATAC"], [(200, 1.0), (10, 30), (300, 0.2)], seed=4)
    first = preprocess(data, seed=11)
    assert [f.shape for f in first.features] == [(N, 10), (N, 10), (N, 10)]
    second = preprocess(data, seed=11)
    assert all(np.array_equal(a, b) for a, b in zip(first.features, second.features))


def test_zero_features_after_filtering_is_refused_naming_the_file():
    data = _dataset("Stereo-CITE-seq", ["RNA", "ADT"], [(200, 0.6), (6, 20)], seed=5)
    adt = data.modalities["ADT"].X
    adt[:] = 0
    adt[:30] = 4  # every protein in only 30 (< 50) spots
    with pytest.raises(SpamoInputError) as err:
        preprocess(data)
    assert err.value.where == "/data/ADT.h5ad"
    assert "zero features after filtering" in err.value.problem and "\n" not in str(err.value)


def test_recipes_are_registered_on_every_data_type():
    for name in ["10x", "SPOTS", "Stereo-CITE-seq", "Spatial-epigenome-transcriptome", "Simulation"]:
        assert isinstance(get_data_type(name).preprocess, Recipe)


def test_clr_matches_direct_numpy_for_dense_and_sparse():
    rng = np.random.default_rng(6)
    x = rng.negative_binomial(3, 0.1, size=(20, 7)).astype(float)
    x[0, :3] = 0
    expected = np.empty_like(x)
    for i, row in enumerate(x):
        geo = np.exp(np.log1p(row[row > 0]).sum() / len(row))
        expected[i] = np.log1p(row / geo)
    assert np.allclose(clr(x), expected)
    assert np.allclose(clr(sp.csr_matrix(x)).toarray(), expected)


def test_lsi_standardises_spots_then_drops_first_component():
    rng = np.random.default_rng(7)
    peaks = sp.csr_matrix((rng.random((80, 200)) < 0.1).astype(float))
    full = lsi(peaks, 11, seed=3, drop_first=False)
    assert full.shape == (80, 11)
    assert np.allclose(full.mean(axis=1), 0, atol=1e-5)
    assert np.allclose(full.std(axis=1, ddof=1), 1, atol=1e-5)
    dropped = lsi(peaks, 11, seed=3)
    assert np.array_equal(dropped, full[:, 1:])
    assert np.array_equal(dropped, lsi(peaks, 11, seed=3))


def test_scale_and_pca_and_counters():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(40, 6)) * [1, 2, 3, 4, 5, 0]
    z = scale(x)
    assert np.allclose(z[:, :5].mean(0), 0) and np.allclose(z[:, :5].std(0, ddof=1), 1) and np.allclose(z[:, 5], 0)
    assert np.abs(scale(x * 100, max_value=1.5)).max() <= 1.5
    scores = pca(x, 3, seed=1)
    assert scores.shape == (40, 3) and scores.dtype == np.float32
    assert np.all(np.diff(scores.var(0)) <= 1e-6)  # decreasing variance
    assert np.allclose(pca(sp.csr_matrix(x), 3, seed=1), scores, atol=1e-4)
    counts = sp.csr_matrix(np.array([[0, 1, 2], [0, 0, 3.0]]))
    assert list(spots_per_feature(counts)) == [0, 1, 2] and list(features_per_spot(counts)) == [2, 1]


def test_pca_solvers_agree_and_the_cheapest_is_chosen():
    """The solver is chosen by cost; every exact solver gives the same scores (signs included), dense or sparse."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 520)) + rng.normal(size=(300, 1)) * np.linspace(0, 3, 520)
    x[rng.random(x.shape) < 0.5] = 0.0
    scores = {solver: pca(x, 12, seed=4, solver=solver) for solver in PCA_SOLVERS}
    for solver in PCA_SOLVERS:
        assert np.allclose(scores[solver], scores["arpack"], atol=1e-4), solver
    assert np.allclose(pca(sp.csr_matrix(x), 12, seed=4), scores["arpack"], atol=1e-4)
    assert pca_solver(2500, 1000, 99) == "covariance_eigh"  # the HLN simulation's RNA
    assert pca_solver(9000, 3000, 50) == "covariance_eigh"
    assert pca_solver(3500, 3000, 30) == "arpack"  # where the covariance's p^3 no longer pays
    assert pca_solver(100, 800, 60) == "full"
    with pytest.raises(ValueError, match="not one of"):
        pca(x, 3, solver="randomized")
    with pytest.raises(ValueError, match="blas_threads must be an integer >= 1"):
        pca(x, 3, blas_threads=0)
