"""Loading datasets: the benchmark layouts (docs/data.md section 1), a user's own folder of .h5ad files, or a MuData
file.

`load(source, ...)` is the one entry point every command uses: it decides between a dataset key, a folder (in a
known layout or the user's own) and a `.h5mu` file. Every loader returns a `MultiOmicsData` whose modalities hold
the same spots in the same order, and refuses bad input (docs/data.md section 4) with a `SpamoInputError` naming the
file and the problem, before anything is written. The checks run in O(nnz) on sparse matrices (dense matrices in
row blocks), so they never densify a big matrix.

Two conventions follow the reference release (docs/method.md section 8), because its published numbers depend on them:

- The input matrix is `.X` for every modality and data type; `layer="NAME"` (`--layer NAME`) reads
  `layers['NAME']` instead. In the authors' Simulation files `.X` and `layers['counts']` are different matrices.
- Data types that order spots by id (the Simulation layout: `DataType.spot_id_order`) have spot names that are
  spot ids ('529', '478', ...) in a permuted row order: line i of the truth file is the label of the spot whose
  id is i, and labels.txt is written the same way. The loader reads each name's leading integer as its id,
  refuses names that are not a permutation of 0..N-1, aligns the truth to the rows and keeps the ids
  (`MultiOmicsData.spot_ids`) for the writer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import scipy.sparse as sp

from spamo import modalities as modality_kinds
from spamo.data import MultiOmicsData, input_matrix
from spamo.dataset_table import DATASETS_TOML, DatasetSpec, dataset_registry, get_dataset_spec
from spamo.datatypes import get_data_type
from spamo.errors import SpamoInputError
from spamo.package_data import CONFIG_DIR
from spamo.simulate import get_preset, is_preset, truth_from_spfac, write_simulation


ROW_BLOCK = 65536


# ------------------------------------------------------------------------------------------------ public loaders
def load(source: str | Path, data_type: str | None = None, modality_files: dict | str | None = None,
         truth: str | Path | None = None, layer: str | None = None, n_clusters: int | None = None,
         data_root: str | Path = "Data") -> MultiOmicsData:
    """Load anything a command may be pointed at; every command goes through here.

    `source` is a dataset key (a `str` naming a `configs/datasets.toml` entry: hln, mb, sim, read under
    `data_root`), a folder of .h5ad files, or one `.h5mu` file (pass folders and files as `Path`). A folder without
    `data_type` and `modality_files` must follow a known layout (detected from its files). `truth` overrides the
    ground truth: a label file (any source) or, for `.h5mu`, an obs column name. `layer` names the matrix to read
    instead of `.X`.
    """
    if isinstance(source, str) and source not in dataset_registry() and _is_preset(source):
        return load_dataset(source, data_root=data_root, n_clusters=n_clusters, layer=layer, truth_file=truth)
    if isinstance(source, str) and source in dataset_registry():
        if modality_files:
            raise SpamoInputError("--modality-files", f"applies to a folder of your own, not to dataset '{source}'")
        spec = get_dataset_spec(source)
        if data_type is not None and data_type != spec.data_type:
            raise SpamoInputError("--data-type", f"dataset '{source}' is {spec.data_type}, not {data_type}")
        return load_dataset(source, data_root=data_root, n_clusters=n_clusters, layer=layer, truth_file=truth)
    path = Path(source)
    if path.suffix == ".h5mu":
        if data_type is None:
            raise SpamoInputError("--data-type", "a .h5mu file needs its --data-type")
        truth_key, truth_file = _h5mu_truth_source(truth)
        return load_h5mu(path, data_type, modalities=modality_files, truth_key=truth_key, truth_file=truth_file,
                         n_clusters=n_clusters, layer=layer)
    if not path.exists():
        if isinstance(source, str) and "/" not in source and path.suffix == "":
            raise SpamoInputError("--dataset", f"unknown dataset '{source}' (known: {', '.join(dataset_registry())})"
                                               f" and no folder of that name")
        raise SpamoInputError(path, "folder not found")
    if not path.is_dir():
        raise SpamoInputError(path, "is a file: give a folder of .h5ad files or one .h5mu file")
    if data_type is None and not modality_files:
        spec = detect_layout(path)
        if spec is None:
            raise SpamoInputError(path, "no known dataset layout here; give --data-type (and --modality-files)")
        return load_layout(path, spec, n_clusters, layer=layer, truth_file=truth)
    if data_type is None:
        raise SpamoInputError("--data-type", "a folder of your own needs its --data-type")
    return load_folder(path, data_type, modality_files=modality_files, truth_file=truth, n_clusters=n_clusters,
                       layer=layer)


def load_dataset(key: str, data_root: str | Path = "./Data", n_clusters: int | None = None, layer: str | None = None,
                 truth_file: str | Path | None = None) -> MultiOmicsData:
    """Load a benchmark dataset from `<data_root>/<folder>`.

    `sim` without a `Simulation` folder is generated (default simulation: 1296 spots, seed 0) and cached there.
    `n_clusters` defaults to the number of simulated domains for simulated folders, else the table's K.
    A preset of the selection benchmark (configs/benchmarks/selection.toml) is generated into `<data_root>/<key>`
    on first use and loaded in its layout, under its own name.
    """
    if key not in dataset_registry() and _is_preset(key):
        return _load_preset(key, data_root, n_clusters, layer, truth_file)
    spec = get_dataset_spec(key)
    folder = spec.path(data_root)
    if key == "sim" and not folder.exists():
        write_simulation(folder, n_spots=1296, seed=0, layout="sim")
    return load_layout(folder, spec, n_clusters, layer=layer, truth_file=truth_file)


def check_dataset_key(key: str) -> None:
    """Refuse a --dataset that is neither a dataset of configs/datasets.toml nor a simulation preset (one line)."""
    if key in dataset_registry() or _is_preset(key):
        return
    from spamo.simulate import load_presets

    raise SpamoInputError("--dataset", f"unknown dataset '{key}' (known: {', '.join(dataset_registry())}; "
                                       f"simulation presets: {', '.join(load_presets())})")


def _is_preset(key: str) -> bool:
    return is_preset(key)


def _load_preset(key: str, data_root: str | Path, n_clusters: int | None, layer: str | None = None,
                 truth_file: str | Path | None = None) -> MultiOmicsData:
    preset = get_preset(key)
    folder = Path(data_root) / key
    if not folder.exists():
        preset.write(folder)
    data = load_layout(folder, get_dataset_spec(preset.layout), n_clusters, layer=layer, truth_file=truth_file)
    data.name = key
    return data


def load_layout(folder: str | Path, spec: DatasetSpec, n_clusters: int | None = None, layer: str | None = None,
                truth_file: str | Path | None = None) -> MultiOmicsData:
    """Load a folder in the layout of `spec` (its files, its truth file if present, its K unless simulated)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SpamoInputError(folder, "folder not found")
    modality_files = {m: folder / f for m, f in spec.modality_files.items()}
    if truth_file is not None:
        truth = _under(folder, truth_file)
        if not truth.is_file():
            raise SpamoInputError(truth, "file not found")
    else:
        truth = folder / spec.truth_file
        truth = truth if truth.exists() else None
    return _assemble(spec.key, spec.data_type, modality_files, truth, n_clusters, default_k=spec.n_clusters,
                     layer=layer)


def load_folder(folder: str | Path, data_type: str, modality_files: dict | str | None = None,
                truth_file: str | Path | None = None, n_clusters: int | None = None,
                layer: str | None = None) -> MultiOmicsData:
    """Load a user's own folder of .h5ad files.

    `modality_files` maps modality name -> file (relative to `folder` or absolute), as a dict or "RNA=a,ADT=b";
    by default each of the data type's modalities is its conventional file (`spamo.modalities`: ATAC is
    `adata_ATAC.h5ad` or `adata_peaks_normalized.h5ad`). Without `truth_file`, a known ground-truth file in the
    folder is used if present.
    """

    folder = Path(folder)
    if not folder.is_dir():
        raise SpamoInputError(folder, "folder not found")
    dtype = get_data_type(data_type)
    if isinstance(modality_files, str):
        modality_files = parse_modality_files(modality_files)
    if modality_files:
        files = {m: _under(folder, f) for m, f in modality_files.items()}
    else:
        files = {m: _conventional_file(folder, m) for m in dtype.modalities}
    truth = _under(folder, truth_file) if truth_file is not None else _conventional_truth(folder)
    if truth is not None and not truth.is_file():
        raise SpamoInputError(truth, "file not found")
    return _assemble(folder.name, dtype.name, files, truth, n_clusters, default_k=None, layer=layer)


def load_h5mu(path: str | Path, data_type: str, modalities: dict | list | str | None = None,
              truth_key: str | None = None, n_clusters: int | None = None, layer: str | None = None,
              truth_file: str | Path | None = None) -> MultiOmicsData:
    """Load a MuData (.h5mu) file.

    `modalities` maps spamo modality name -> MuData modality key (dict or "RNA=rna,ADT=prot"), or lists the keys
    to use in order; by default the data type's modalities are matched to the keys case-insensitively by their
    names and aliases (`spamo.modalities`). The ground truth is `truth_key`, an obs column (of the MuData or
    modality 1), or `truth_file`, a label file (row order of modality 1, or spot-id order for such data types).
    """

    path = Path(path)
    if not path.exists():
        raise SpamoInputError(path, "file not found")
    dtype = get_data_type(data_type)
    try:
        import mudata

        mdata = mudata.read_h5mu(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the file is not usable MuData
        raise SpamoInputError(path, f"cannot be read as MuData ({_short(exc)})") from None
    mapping = _h5mu_mapping(path, mdata, dtype.modalities, modalities)
    adatas = {name: mdata.mod[key] for name, key in mapping.items()}
    for name, key in mapping.items():
        if "spatial" not in adatas[name].obsm and "spatial" in mdata.obsm:
            coords = mdata.obsm["spatial"]
            positions = mdata.obs_names.get_indexer(adatas[name].obs_names)
            adatas[name].obsm["spatial"] = np.asarray(coords)[positions]
    sources = {name: Path(f"{path}[{key}]") for name, key in mapping.items()}
    truth = None
    if truth_key is not None and truth_file is not None:
        raise SpamoInputError("--truth-file", "give either a truth file or an obs column, not both")
    if truth_key is not None:
        truth = _h5mu_truth(path, mdata, adatas[next(iter(adatas))], truth_key)
    truth_path = Path(truth_file) if truth_file is not None else None
    if truth_path is not None and not truth_path.is_file():
        raise SpamoInputError(truth_path, "file not found")
    data = _build(path.stem, dtype.name, adatas, sources, truth, truth_path, n_clusters, default_k=None, layer=layer)
    return data


def from_memory(data, data_type: str, *, truth=None, n_clusters: int | None = None, layer: str | None = None,
                name: str = "in_memory") -> MultiOmicsData:
    """The in-memory counterpart of `load` (the Python API's entry): `data` is a MuData, a dict modality name ->
    AnnData, or a list of AnnData in the data type's modality order (RNA first). The modalities are checked and
    aligned by `obs_names` exactly as files are (the same refusals, naming `data['ADT']` etc. instead of a file);
    coordinates come from `obsm['spatial']` (of a modality, or of the MuData). `truth` is N labels in row order of
    modality 1, or the name of an obs column. Nothing is read from or written to disk; the caller's objects are not
    modified.
    """

    dtype = get_data_type(data_type)
    mdata = data if hasattr(data, "mod") and hasattr(data, "obsm") else None
    if mdata is not None:
        mapping = _h5mu_mapping(Path("MuData"), mdata, dtype.modalities, None)
        adatas, sources = {}, {}
        for modality, key in mapping.items():
            adata = mdata.mod[key]
            if "spatial" not in adata.obsm and "spatial" in mdata.obsm:
                adata = adata.copy()  # the coordinates live on the MuData: give this modality its own
                positions = mdata.obs_names.get_indexer(adata.obs_names)
                adata.obsm["spatial"] = np.asarray(mdata.obsm["spatial"])[positions]
            adatas[modality], sources[modality] = adata, f"mdata.mod['{key}']"
    elif isinstance(data, dict):
        if not data:
            raise SpamoInputError("data", "no modality given (an empty dict)")
        adatas = dict(data)
        sources = {modality: f"data['{modality}']" for modality in adatas}
    elif isinstance(data, (list, tuple)):
        if not 1 <= len(data) <= len(dtype.modalities):
            raise SpamoInputError("data", f"{len(data)} AnnData objects but data type {dtype.name} has the "
                                          f"modalities {', '.join(dtype.modalities)} (give a dict to name them)")
        adatas = dict(zip(dtype.modalities, data))
        sources = {modality: f"data[{i}] ({modality})" for i, modality in enumerate(adatas)}
    else:
        raise SpamoInputError("data", f"expected a MuData, a dict of AnnData or a list of AnnData, got "
                                      f"{type(data).__name__}")
    for modality, adata in adatas.items():
        if not (hasattr(adata, "obs_names") and hasattr(adata, "obsm")):
            raise SpamoInputError(sources[modality], f"is not an AnnData ({type(adata).__name__})")
    labels = None
    if isinstance(truth, str):
        first = adatas[next(iter(adatas))]
        labels = _h5mu_truth(Path("obs"), mdata if mdata is not None else first, first, truth)
    elif truth is not None:
        labels = np.asarray(truth)
        if labels.ndim != 1:
            raise SpamoInputError("truth", f"expected one label per spot, got shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            _, labels = np.unique(labels.astype(str), return_inverse=True)
        labels = labels.astype(np.int64)
    return _build(name, dtype.name, adatas, sources, labels, None, n_clusters, default_k=None, layer=layer)


def _h5mu_truth_source(truth: str | Path | None) -> tuple[str | None, Path | None]:
    """A `truth` given with a .h5mu file: an existing file (or anything path-like) is a label file, else an obs
    column name."""
    if truth is None:
        return None, None
    text = str(truth)
    if Path(text).exists() or "/" in text or Path(text).suffix:
        return None, Path(text)
    return text, None


def parse_modality_files(text: str) -> dict[str, str]:
    """"RNA=a.h5ad,ADT=b.h5ad" -> {"RNA": "a.h5ad", "ADT": "b.h5ad"} (order kept: the first is modality 1)."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise SpamoInputError("--modalities", f"'{item}' is not of the form NAME=FILE")
        out[name.strip()] = value.strip()
    if not out:
        raise SpamoInputError("--modalities", "no modality given")
    return out


# ------------------------------------------------------------------------------------------------ assembling
def _assemble(name: str, data_type: str, files: dict, truth_path: Path | None, n_clusters: int | None,
              default_k: int | None, layer: str | None = None) -> MultiOmicsData:
    """Read every modality file, then check and align them (reading first, so a missing file is caught first)."""
    for path in files.values():
        if not Path(path).exists():
            raise SpamoInputError(path, "file not found")
    adatas = {m: read_h5ad_checked(p) for m, p in files.items()}
    return _build(name, data_type, adatas, {m: Path(p) for m, p in files.items()}, None, truth_path, n_clusters,
                  default_k, layer=layer)


def _build(name: str, data_type: str, adatas: dict, sources: dict, truth: np.ndarray | None,
           truth_path: Path | None, n_clusters: int | None, default_k: int | None,
           layer: str | None = None) -> MultiOmicsData:
    """Check every modality, align them by spot name, attach coordinates, ground truth (in row order) and K."""

    first_name = next(iter(adatas))
    first_source = sources[first_name]
    for modality, adata in adatas.items():
        check_modality(adata, modality, sources[modality], layer=layer)
    adatas = align_modalities(adatas, sources)
    coords = _coordinates(adatas, sources)
    n_spots = coords.shape[0]
    first = adatas[first_name]
    spot_ids = spot_ids_from_names(first.obs_names, first_source) if get_data_type(data_type).spot_id_order else None
    if truth is None and truth_path is not None:
        truth = read_truth_file(truth_path)
        if truth.shape[0] == n_spots and spot_ids is not None:
            truth = truth[spot_ids]  # line i is the label of the spot whose id is i
    elif truth is None and "spfac" in first.obsm:
        truth = truth_from_spfac(_dense(first.obsm["spfac"]))
    if truth is not None and truth.shape[0] != n_spots:
        where = truth_path if truth_path is not None else first_source
        raise SpamoInputError(where, f"ground truth has {truth.shape[0]} labels but there are {n_spots} spots")
    if n_clusters is None:
        n_clusters = _simulated_domains(first) or default_k
    if n_clusters is not None:
        check_n_clusters(n_clusters, n_spots)
    return MultiOmicsData(name=name, data_type=data_type, modalities=adatas, coords=coords, truth=truth,
                          n_clusters=n_clusters, sources=sources, truth_path=truth_path, layer=layer,
                          spot_ids=spot_ids)


def spot_ids_from_names(names, where: Path | str) -> np.ndarray:
    """The spot id of each row: the leading integer of its name ('529' -> 529, '0007_spot' -> 7).

    The ids must be a permutation of 0..N-1 (each line of the truth file and of labels.txt belongs to one spot);
    anything else is refused, naming the file and the first offending name.
    """
    import pandas as pd

    names = pd.Index(names).astype(str)
    n = len(names)
    digits = pd.Series(names.str.extract(r"^(\d+)", expand=False), dtype=object)
    missing = np.flatnonzero(digits.isna().to_numpy())
    if missing.size:
        raise SpamoInputError(where, f"spot names must be spot ids 0..{n - 1} in this layout (truth and labels are "
                                     f"ordered by id), but '{names[missing[0]]}' has no leading number")
    ids = np.asarray([int(d) for d in digits], dtype=np.int64)
    out_of_range = np.flatnonzero(ids >= n)
    if out_of_range.size:
        raise SpamoInputError(where, f"spot names must be spot ids 0..{n - 1} in this layout (truth and labels are "
                                     f"ordered by id), but '{names[out_of_range[0]]}' is id {ids[out_of_range[0]]}")
    seen = np.bincount(ids, minlength=n)
    if (seen != 1).any():
        dup = int(np.flatnonzero(seen > 1)[0])
        raise SpamoInputError(where, f"spot names must be spot ids 0..{n - 1} in this layout (truth and labels are "
                                     f"ordered by id), but id {dup} is used {int(seen[dup])} times")
    return ids


def check_n_clusters(n_clusters: int, n_spots: int | None = None) -> None:
    """The one rule for the number of clusters (loaders and `SpamoConfig.resolve` both call it): an integer of at
    least 2, and at most the number of spots when that is known."""
    if isinstance(n_clusters, bool) or int(n_clusters) != n_clusters:
        raise SpamoInputError("n_clusters", f"n_clusters={n_clusters!r} must be a whole number")
    if n_spots is None:
        if n_clusters < 2:
            raise SpamoInputError("n_clusters", f"n_clusters={n_clusters} must be at least 2")
        return
    if not 2 <= int(n_clusters) <= n_spots:
        raise SpamoInputError("n_clusters", f"n_clusters={n_clusters} must be between 2 and the number of "
                                            f"spots ({n_spots})")


def _simulated_domains(adata) -> int | None:
    info = adata.uns.get("spamo_simulation")
    if isinstance(info, dict) and "n_domains" in info:
        return int(info["n_domains"])
    return None


def read_h5ad_checked(path: str | Path):
    """Read an .h5ad file; any failure is a one-line refusal naming the file."""
    import anndata as ad

    path = Path(path)
    if not path.exists():
        raise SpamoInputError(path, "file not found")
    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the file is not usable AnnData
        raise SpamoInputError(path, f"cannot be read as AnnData ({_short(exc)})") from None


# ------------------------------------------------------------------------------------------------ checks
def matrix_label(layer: str | None) -> str:
    return ".X" if layer is None else f"layers['{layer}']"


def raw_counts(adata, layer: str | None = None):
    """Kept for callers of the old name: the input matrix (`.X` unless a layer is named)."""
    return input_matrix(adata, layer)


def check_modality(adata, modality: str, source: Path | str, layer: str | None = None) -> None:
    """Refuse a modality with no spots/features, duplicated spot names, a missing input matrix, non-finite values
    or (for kinds that need counts, `spamo.modalities`) negative values in the matrix that will be read."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise SpamoInputError(source, f"has {adata.n_obs} spots and {adata.n_vars} features")
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()][0]
        n_dup = int(adata.obs_names.duplicated().sum())
        raise SpamoInputError(source, f"duplicated spot names ({n_dup}, e.g. '{dup}')")
    label = matrix_label(layer)
    matrix = input_matrix(adata, layer, where=source)
    if matrix is None:
        raise SpamoInputError(source, f"has no {label} matrix")
    if not _is_numeric(matrix):
        raise SpamoInputError(source, f"{label} is not a numeric matrix (dtype {matrix.dtype})")
    bad = _first_nonfinite_row(matrix)
    if bad is not None:
        raise SpamoInputError(source, f"NaN or infinite value in {label} (spot '{adata.obs_names[bad]}')")
    if modality_kinds.counts_required(modality):
        bad = _first_negative_row(matrix)
        if bad is not None:
            raise SpamoInputError(source, f"negative counts in {label} (spot '{adata.obs_names[bad]}'); raw "
                                          f"counts are expected")
        if not np.issubdtype(matrix.dtype, np.integer):
            fractional = _first_bad_row(matrix, lambda v: v != np.round(v))
            if fractional is not None:  # HVG selection (Seurat v3) and the CLR are defined on raw counts
                hint = ("; pass --layer counts to read layers['counts']" if layer is None and "counts" in adata.layers
                        else "; pass --layer NAME to read a layer of raw counts")
                raise SpamoInputError(source, f"non-integer values in {label} (spot '{adata.obs_names[fractional]}') "
                                              f"where raw counts are expected{hint}")


def _first_bad_row(matrix, is_bad) -> int | None:
    """Index of the first row holding a value where `is_bad(values)` is true, in O(nnz) for sparse input."""
    if hasattr(matrix, "to_memory"):  # backed sparse dataset
        matrix = matrix.to_memory()
    if sp.issparse(matrix):
        csr = sp.csr_matrix(matrix) if matrix.format != "csr" else matrix
        bad = np.flatnonzero(is_bad(csr.data))
        if bad.size == 0:
            return None
        return int(np.searchsorted(csr.indptr, bad[0], side="right") - 1)
    n = matrix.shape[0]
    for start in range(0, n, ROW_BLOCK):
        block = np.asarray(matrix[start:start + ROW_BLOCK])
        rows = np.flatnonzero(is_bad(block).any(axis=tuple(range(1, block.ndim))))
        if rows.size:
            return start + int(rows[0])
    return None


def _is_numeric(matrix) -> bool:
    return np.issubdtype(matrix.dtype, np.number) or matrix.dtype == bool


def _first_nonfinite_row(matrix) -> int | None:
    if np.issubdtype(matrix.dtype, np.integer) or matrix.dtype == bool:
        return None  # integers cannot hold NaN or inf
    return _first_bad_row(matrix, lambda v: ~np.isfinite(v))


def _first_negative_row(matrix) -> int | None:
    if np.issubdtype(matrix.dtype, np.unsignedinteger) or matrix.dtype == bool:
        return None
    return _first_bad_row(matrix, lambda v: v < 0)


def align_modalities(adatas: dict, sources: dict) -> dict:
    """Put every modality in the spot order of modality 1; refuse modalities whose spot sets differ."""
    names = list(adatas)
    reference = adatas[names[0]].obs_names
    out = {names[0]: adatas[names[0]]}
    for name in names[1:]:
        adata = adatas[name]
        if adata.obs_names.equals(reference):
            out[name] = adata
            continue
        positions = adata.obs_names.get_indexer(reference)
        missing = int((positions < 0).sum())
        extra = adata.n_obs - (reference.size - missing)
        if missing or extra:
            raise SpamoInputError(sources[name], f"spot names differ from {sources[names[0]]} ({missing} of its "
                                                 f"spots missing here, {extra} spots only here)")
        out[name] = adata[positions].copy()
    return out


def _coordinates(adatas: dict, sources: dict) -> np.ndarray:
    """`obsm['spatial']` of the first modality that has it (modality 1 normally), as finite N x 2 float64."""
    for name, adata in adatas.items():
        if "spatial" in adata.obsm:
            coords = _dense(adata.obsm["spatial"])
            source = sources[name]
            break
    else:
        raise SpamoInputError(sources[next(iter(adatas))], "no spatial coordinates (obsm['spatial'] is missing)")
    try:
        coords = np.asarray(coords, dtype=np.float64)
    except (TypeError, ValueError):
        raise SpamoInputError(source, "obsm['spatial'] is not numeric") from None
    if coords.ndim != 2 or coords.shape[1] != 2:  # a third column (z, or an index) would be silently dropped
        raise SpamoInputError(source, f"obsm['spatial'] must be spots x 2 (x, y), got shape {coords.shape}")
    coords = np.ascontiguousarray(coords)
    bad = np.flatnonzero(~np.isfinite(coords).all(axis=1))
    if bad.size:
        raise SpamoInputError(source, f"missing or non-finite coordinates in obsm['spatial'] ({bad.size} spots, "
                                      f"first at row {bad[0]})")
    return coords


def read_truth_file(path: str | Path) -> np.ndarray:
    """One label per line (blank lines ignored); integer labels are kept, other labels become integer codes."""
    path = Path(path)
    try:
        lines = [line.strip() for line in path.read_text().splitlines()]
    except FileNotFoundError:
        raise SpamoInputError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpamoInputError(path, f"cannot be read as text ({_short(exc)})") from None
    tokens = [line for line in lines if line]
    if not tokens:
        raise SpamoInputError(path, "ground-truth file is empty")
    try:
        values = np.array([float(t) for t in tokens])
        if np.isfinite(values).all() and (values == np.round(values)).all():
            return values.astype(np.int64)
    except ValueError:
        pass
    _, codes = np.unique(np.array(tokens), return_inverse=True)
    return codes.astype(np.int64)


# ------------------------------------------------------------------------------------------------ helpers
def _under(folder: Path, file: str | Path) -> Path:
    file = Path(file)
    return file if file.is_absolute() else folder / file


def _conventional_file(folder: Path, modality: str) -> Path:
    """The first of the modality's conventional file names that exists (the first one if none does)."""
    names = modality_kinds.default_files(modality)
    for name in names:
        if (folder / name).exists():
            return folder / name
    return folder / names[0]


def _conventional_truth(folder: Path) -> Path | None:
    """The ground-truth file of a known layout, if the folder has exactly one of them."""
    found = [folder / spec.truth_file for spec in dataset_registry().values() if (folder / spec.truth_file).exists()]
    return found[0] if len(found) == 1 else None


def _h5mu_mapping(path: Path, mdata, conventional: tuple, modalities) -> dict[str, str]:
    """spamo modality name -> MuData modality key."""
    keys = list(mdata.mod)
    if isinstance(modalities, str):
        modalities = parse_modality_files(modalities)
    if isinstance(modalities, dict):
        mapping = dict(modalities)
    elif modalities:
        mapping = {key: key for key in modalities}
    else:
        lower = {k.lower(): k for k in keys}
        mapping = {}
        for name in conventional:
            match = next((lower[a] for a in modality_kinds.names_for(name) if a in lower), None)
            if match is None:
                raise SpamoInputError(path, f"no modality for {name} (modalities in the file: {', '.join(keys)})")
            mapping[name] = match
    for name, key in mapping.items():
        if key not in mdata.mod:
            raise SpamoInputError(path, f"no modality '{key}' (modalities in the file: {', '.join(keys)})")
    return mapping


def _h5mu_truth(path: Path, mdata, first, truth_key: str) -> np.ndarray:
    if truth_key in first.obs:
        column = first.obs[truth_key]
    elif truth_key in mdata.obs:
        column = mdata.obs[truth_key].reindex(first.obs_names)
    else:
        raise SpamoInputError(path, f"no obs column '{truth_key}' for the ground truth")
    if column.isna().any():
        raise SpamoInputError(path, f"ground truth column '{truth_key}' has missing labels")
    values = np.asarray(column)
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64)
    _, codes = np.unique(values.astype(str), return_inverse=True)
    return codes.astype(np.int64)


def _dense(matrix) -> np.ndarray:
    if sp.issparse(matrix):
        return matrix.toarray()
    if hasattr(matrix, "to_numpy"):
        return matrix.to_numpy()
    return np.asarray(matrix)


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


# ------------------------------------------------------------------------------------------------ summaries
def detect_layout(folder: str | Path) -> DatasetSpec | None:
    """The known layout a folder follows: the one named like the folder, else the one with most files present."""
    folder = Path(folder)
    candidates = [spec for spec in dataset_registry().values()
                  if all((folder / f).exists() for f in spec.modality_files.values())]
    if not candidates:
        return None
    named = [spec for spec in candidates if spec.folder == folder.name]
    if named:
        return named[0]
    return max(candidates, key=lambda spec: len(spec.modality_files))


def dataset_summary(data: MultiOmicsData) -> dict:
    """Spots, features per modality, coordinate ranges and label counts of a loaded dataset."""
    summary = {
        "name": data.name, "data_type": data.data_type, "n_spots": data.n_spots, "n_clusters": data.n_clusters,
        "modalities": {m: {"features": int(a.n_vars), "file": str(data.sources.get(m, "")),
                           "counts_layer": "counts" in a.layers}
                       for m, a in data.modalities.items()},
        "matrix": data.matrix_label, "label_order": data.label_order,
        "coords_min": data.coords.min(axis=0).tolist(), "coords_max": data.coords.max(axis=0).tolist(),
        "labels": None,
    }
    if data.truth is not None:
        values, counts = np.unique(data.truth, return_counts=True)
        summary["labels"] = {int(v): int(c) for v, c in zip(values, counts)}
    return summary


__all__ = ["DatasetSpec", "dataset_registry", "get_dataset_spec", "check_dataset_key", "load", "load_dataset", "load_layout", "load_folder",
           "load_h5mu", "from_memory", "parse_modality_files", "input_matrix", "matrix_label", "raw_counts", "check_modality",
           "align_modalities", "read_truth_file", "spot_ids_from_names", "detect_layout", "dataset_summary",
           "check_n_clusters"]
