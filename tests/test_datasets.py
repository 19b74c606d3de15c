"""Loaders for every layout, a user's own folder and .h5mu, alignment by spot name, and every refusal of bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import anndata as ad
import mudata

mudata.set_options(pull_on_update=False)
import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from cli import app
from spamo import datasets
from spamo.errors import SpamoInputError
from spamo.simulate import write_simulation

SMALL = {"RNA": 60, "ADT": 30, "ATAC": 80}
N = 324


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """One small simulation written in each of the three layouts."""
    root = tmp_path_factory.mktemp("Data")
    for key in ("sim", "hln", "mb"):
        folder = root / datasets.get_dataset_spec(key).folder
        write_simulation(folder, n_spots=N, seed=4, layout=key, n_features=SMALL)
    return root


@pytest.fixture()
def sim_dir(data_root, tmp_path) -> Path:
    """A private copy of the Simulation folder that a test may damage."""
    folder = tmp_path / "Simulation"
    shutil.copytree(data_root / "Simulation", folder)
    return folder


def _listing(folder: Path) -> dict:
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*")}


def _refused(args: list[str], folder: Path, *expected: str) -> str:
    """Run `spamo` and check: exit 2, one stderr line naming what is expected, nothing written in `folder`."""
    before = _listing(folder)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert _listing(folder) == before
    return lines[0]


def _rewrite(path: Path, change) -> None:
    adata = ad.read_h5ad(path)
    changed = change(adata)
    (adata if changed is None else changed).write_h5ad(path)


# ------------------------------------------------------------------------------------------------ loaders
@pytest.mark.parametrize("key, modalities, truth_file", [
    ("sim", ["RNA", "ADT", "ATAC"], "GT_1.txt"),
    ("hln", ["RNA", "ADT"], "GT_labels.txt"),
    ("mb", ["RNA", "ATAC"], "MB_cluster.txt"),
])
def test_load_each_layout(data_root, key, modalities, truth_file):
    data = datasets.load_dataset(key, data_root=data_root)
    spec = datasets.get_dataset_spec(key)
    assert data.data_type == spec.data_type and data.modality_names == modalities
    assert data.n_spots == N and data.coords.shape == (N, 2) and data.coords.dtype == np.float64
    assert data.truth_path == data_root / spec.folder / truth_file
    assert data.truth.shape == (N,) and set(np.unique(data.truth)) == set(range(5))
    assert data.n_clusters == 5  # a simulated folder says how many domains it has
    assert data.sources[modalities[-1]] == data_root / spec.folder / spec.modality_files[modalities[-1]]
    assert datasets.load_dataset(key, data_root=data_root, n_clusters=7).n_clusters == 7


def test_registry_matches_the_spec_table():
    table = {k: (s.folder, s.data_type, list(s.modality_files.values()), s.truth_file, s.n_clusters)
             for k, s in datasets.dataset_registry().items()}
    assert table == {
        "hln": ("HLN", "10x", ["adata_RNA.h5ad", "adata_ADT.h5ad"], "GT_labels.txt", 10),
        "mb": ("Mouse_Brain", "Spatial-epigenome-transcriptome", ["adata_RNA.h5ad", "adata_peaks_normalized.h5ad"],
               "MB_cluster.txt", 14),
        "sim": ("Simulation", "Simulation", ["adata_RNA.h5ad", "adata_ADT.h5ad", "adata_ATAC.h5ad"], "GT_1.txt", 5),
    }


def test_missing_simulation_is_generated_and_cached(tmp_path):
    data = datasets.load_dataset("sim", data_root=tmp_path)
    assert data.n_spots == 1296 and data.modality_names == ["RNA", "ADT", "ATAC"] and data.n_clusters == 5
    assert sorted(p.name for p in (tmp_path / "Simulation").iterdir()) == [
        "GT_1.txt", "adata_ADT.h5ad", "adata_ATAC.h5ad", "adata_RNA.h5ad"]
    assert [p.name for p in tmp_path.iterdir()] == ["Simulation"]  # no temporary folder left behind


def test_truth_from_spfac_when_no_label_file(sim_dir):
    expected = datasets.load_folder(sim_dir, "Simulation").truth
    (sim_dir / "GT_1.txt").unlink()
    data = datasets.load_folder(sim_dir, "Simulation")
    assert data.truth_path is None
    np.testing.assert_array_equal(data.truth, expected)


def test_own_folder_with_named_files_and_truth(sim_dir):
    (sim_dir / "adata_RNA.h5ad").rename(sim_dir / "expression.h5ad")
    (sim_dir / "adata_ATAC.h5ad").rename(sim_dir / "adata_peaks_normalized.h5ad")
    (sim_dir / "GT_1.txt").rename(sim_dir / "labels.txt")
    data = datasets.load_folder(sim_dir, "Spatial-epigenome-transcriptome",
                                modality_files="RNA=expression.h5ad,ATAC=adata_peaks_normalized.h5ad",
                                truth_file="labels.txt", n_clusters=3)
    assert data.modality_names == ["RNA", "ATAC"] and data.n_clusters == 3 and data.truth.shape == (N,)
    # the conventional names: adata_RNA.h5ad is required, ATAC falls back to adata_peaks_normalized.h5ad
    (sim_dir / "expression.h5ad").rename(sim_dir / "adata_RNA.h5ad")
    data = datasets.load_folder(sim_dir, "Spatial-epigenome-transcriptome")
    assert data.sources["ATAC"].name == "adata_peaks_normalized.h5ad" and data.truth is not None


def test_h5mu(sim_dir, tmp_path):
    rna = ad.read_h5ad(sim_dir / "adata_RNA.h5ad")
    prot = ad.read_h5ad(sim_dir / "adata_ADT.h5ad")
    prot = prot[np.random.default_rng(0).permutation(prot.n_obs)].copy()
    rna.obs["domain"] = np.loadtxt(sim_dir / "GT_1.txt", dtype=int)
    for a in (rna, prot):
        a.uns.clear()
    path = tmp_path / "sample.h5mu"
    mudata.MuData({"rna": rna, "prot": prot}).write(path)
    data = datasets.load_h5mu(path, "10x", truth_key="domain", n_clusters=5)
    assert data.modality_names == ["RNA", "ADT"] and data.n_spots == N
    assert list(data.modalities["ADT"].obs_names) == list(rna.obs_names)  # realigned by name
    np.testing.assert_array_equal(data.truth, rna.obs["domain"].to_numpy())
    np.testing.assert_allclose(data.coords, rna.obsm["spatial"])
    with pytest.raises(SpamoInputError, match="no modality for ATAC"):
        datasets.load_h5mu(path, "Simulation")
    # through the one dispatcher: a truth FILE is read for .h5mu too (it used to be ignored), a name is an obs column
    shuffled = np.random.default_rng(2).permutation(rna.obs["domain"].to_numpy())
    (tmp_path / "mine.txt").write_text("".join(f"{v}\n" for v in shuffled))
    np.testing.assert_array_equal(datasets.load(path, "10x", truth=tmp_path / "mine.txt", n_clusters=5).truth, shuffled)
    np.testing.assert_array_equal(datasets.load(path, "10x", truth="domain", n_clusters=5).truth, data.truth)
    with pytest.raises(SpamoInputError, match="missing.txt: file not found"):
        datasets.load(path, "10x", truth=tmp_path / "missing.txt")


def test_shuffled_modality_is_realigned_by_name(sim_dir):
    reference = datasets.load_folder(sim_dir, "Simulation")
    order = np.random.default_rng(1).permutation(N)
    _rewrite(sim_dir / "adata_ADT.h5ad", lambda a: a[order].copy())
    data = datasets.load_folder(sim_dir, "Simulation")
    adt = data.modalities["ADT"]
    assert list(adt.obs_names) == list(data.modalities["RNA"].obs_names)
    assert (adt.layers["counts"] != reference.modalities["ADT"].layers["counts"]).nnz == 0


def test_checks_are_sparse_and_do_not_densify():
    """A 1M x 2000 sparse matrix (8 GB if dense) is checked in O(nnz)."""
    n = 1_000_000
    rows = np.arange(0, n, 1000)
    matrix = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, rows % 2000)), shape=(n, 2000))
    adata = ad.AnnData(X=matrix)
    datasets.check_modality(adata, "RNA", "big.h5ad")
    matrix.data[-1] = -1.0
    with pytest.raises(SpamoInputError, match=f"negative counts .*'{rows[-1]}'"):
        datasets.check_modality(adata, "RNA", "big.h5ad")


def test_input_matrix_is_x_unless_a_layer_is_named():
    """The reference reads .X for every modality; a layer is read only when named, and a missing one is refused."""
    x = sp.csr_matrix(np.eye(3, dtype=np.float32))
    adata = ad.AnnData(X=x)
    adata.layers["counts"] = x * 2
    assert datasets.input_matrix(adata) is adata.X
    assert datasets.input_matrix(adata, "counts") is adata.layers["counts"]
    with pytest.raises(SpamoInputError, match=r"file.h5ad: has no layers\['raw'\] \(layers here: counts\)"):
        datasets.input_matrix(adata, "raw", where="file.h5ad")


# ------------------------------------------------------------------------------------------------ refusals
def test_info_prints_the_summary(data_root):
    result = CliRunner().invoke(app, ["data", "info", str(data_root / "Mouse_Brain")])
    assert result.exit_code == 0, result.output
    assert "324 spots" in result.stdout and "ATAC" in result.stdout and "labels: 0:" in result.stdout
    result = CliRunner().invoke(app, ["data", "info", "--dataset", "hln", "--data-root", str(data_root)])
    assert result.exit_code == 0 and "ADT" in result.stdout


def test_refuses_missing_file(sim_dir):
    (sim_dir / "adata_ADT.h5ad").unlink()
    _refused(["data", "info", str(sim_dir), "--data-type", "Simulation"], sim_dir, "adata_ADT.h5ad",
             "file not found")


def test_refuses_unreadable_file(sim_dir):
    (sim_dir / "adata_ATAC.h5ad").write_bytes(b"this is not an HDF5 file")
    _refused(["data", "info", str(sim_dir)], sim_dir, "adata_ATAC.h5ad", "cannot be read as AnnData")


def test_refuses_different_spot_sets(sim_dir):
    _rewrite(sim_dir / "adata_ADT.h5ad", lambda a: a[:-5].copy())
    _refused(["data", "info", str(sim_dir)], sim_dir, "adata_ADT.h5ad", "spot names differ", "5 of its spots missing")


def _rename_one_spot(a):
    names = list(a.obs_names)
    names[3] = "stranger"
    a.obs_names = names


def test_refuses_same_count_but_different_names(sim_dir):
    _rewrite(sim_dir / "adata_ATAC.h5ad", _rename_one_spot)
    _refused(["data", "info", str(sim_dir)], sim_dir, "adata_ATAC.h5ad", "spot names differ")


def _drop_coordinates(a):
    del a.obsm["spatial"]


def test_refuses_missing_coordinates(sim_dir):
    for name in ("adata_RNA.h5ad", "adata_ADT.h5ad", "adata_ATAC.h5ad"):
        _rewrite(sim_dir / name, _drop_coordinates)
    _refused(["data", "info", str(sim_dir)], sim_dir, "adata_RNA.h5ad", "no spatial coordinates")


def _nan_coordinate(a):
    coords = a.obsm["spatial"].copy()
    coords[10, 1] = np.nan
    a.obsm["spatial"] = coords


def test_refuses_non_finite_coordinates(sim_dir):
    _rewrite(sim_dir / "adata_RNA.h5ad", _nan_coordinate)
    _refused(["data", "info", str(sim_dir)], sim_dir, "adata_RNA.h5ad", "non-finite coordinates")


def _nan_count(a):
    counts = a.layers["counts"].astype(np.float32)
    counts.data[7] = np.nan
    a.layers["counts"] = counts


def _inf_in_x(a):
    a.X.data[3] = np.inf


def test_refuses_nan_or_inf_in_counts(sim_dir):
    _rewrite(sim_dir / "adata_RNA.h5ad", _nan_count)
    _refused(["data", "info", str(sim_dir), "--layer", "counts"], sim_dir, "adata_RNA.h5ad", "NaN or infinite",
             "layers['counts']")
    assert CliRunner().invoke(app, ["data", "info", str(sim_dir)]).exit_code == 0  # .X is read: the layer is unused


def test_refuses_inf_in_x(sim_dir):
    _rewrite(sim_dir / "adata_ATAC.h5ad", _inf_in_x)
    _refused(["data", "info", str(sim_dir)], sim_dir, "adata_ATAC.h5ad", "NaN or infinite", ".X")


def _negative_count(a):
    a.layers["counts"].data[0] = -3


def _negative_x_without_counts(a):
    del a.layers["counts"]
    a.X.data[0] = -1.0


def test_refuses_negative_counts(sim_dir):
    _rewrite(sim_dir / "adata_ADT.h5ad", _negative_count)
    _refused(["data", "info", str(sim_dir), "--layer", "counts"], sim_dir, "adata_ADT.h5ad",
             "negative counts in layers['counts']")


def test_refuses_a_missing_layer(sim_dir):
    _refused(["data", "info", str(sim_dir), "--layer", "raw"], sim_dir, "adata_RNA.h5ad", "has no layers['raw']")


def test_refuses_negative_raw_x_when_no_counts_layer(sim_dir):
    _rewrite(sim_dir / "adata_RNA.h5ad", _negative_x_without_counts)
    _refused(["data", "info", str(sim_dir)], sim_dir, "adata_RNA.h5ad", "negative counts in .X")


def _fractional_x(a):
    a.X = a.X.astype(np.float32)
    a.X.data[2] = 0.5


def _three_column_coordinates(a):
    a.obsm["spatial"] = np.column_stack([a.obsm["spatial"], np.zeros(a.n_obs)])


def test_refuses_non_integer_counts_where_raw_counts_are_expected(sim_dir):
    _rewrite(sim_dir / "adata_RNA.h5ad", _fractional_x)
    _refused(["data", "info", str(sim_dir)], sim_dir, "adata_RNA.h5ad", "non-integer values in .X",
             "raw counts are expected", "--layer counts")
    assert CliRunner().invoke(app, ["data", "info", str(sim_dir), "--layer", "counts"]).exit_code == 0


def test_refuses_coordinates_that_are_not_two_columns(sim_dir):
    _rewrite(sim_dir / "adata_RNA.h5ad", _three_column_coordinates)
    _refused(["data", "info", str(sim_dir)], sim_dir, "adata_RNA.h5ad", "must be spots x 2", "3)")


def _duplicate_names(a):
    names = list(a.obs_names)
    names[5] = names[4]
    a.obs_names = names


def test_refuses_duplicated_spot_names(sim_dir):
    _rewrite(sim_dir / "adata_RNA.h5ad", _duplicate_names)
    _refused(["data", "info", str(sim_dir)], sim_dir, "adata_RNA.h5ad", "duplicated spot names")


@pytest.mark.parametrize("k", ["1", str(N + 1)])
def test_refuses_n_clusters_out_of_range(sim_dir, k):
    _refused(["data", "info", str(sim_dir), "--n-clusters", k], sim_dir, "n_clusters", f"between 2 and", str(N))


def test_refuses_truth_of_wrong_length(sim_dir):
    labels = (sim_dir / "GT_1.txt").read_text().split()
    (sim_dir / "GT_1.txt").write_text("\n".join(labels[:-3]) + "\n")
    _refused(["data", "info", str(sim_dir)], sim_dir, "GT_1.txt", f"{N - 3} labels", f"{N} spots")


def test_dense_matrices_are_checked_in_row_blocks(monkeypatch):
    monkeypatch.setattr(datasets.checks, "ROW_BLOCK", 7)
    x = np.ones((50, 4), dtype=np.float32)
    adata = ad.AnnData(X=x.copy())
    datasets.check_modality(adata, "ADT", "dense.h5ad")
    adata.X[23, 2] = np.nan
    with pytest.raises(SpamoInputError, match="NaN or infinite value in .X .*'23'"):
        datasets.check_modality(adata, "ADT", "dense.h5ad")
    adata.X[23, 2] = -2
    with pytest.raises(SpamoInputError, match="negative counts in .X .*'23'"):
        datasets.check_modality(adata, "ADT", "dense.h5ad")
    datasets.check_modality(adata, "ATAC", "dense.h5ad")  # normalised peaks may be negative
