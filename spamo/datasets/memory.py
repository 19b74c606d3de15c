"""Loading a MuData file (.h5mu) and objects in memory (a MuData, a dict or list of AnnData: the Python API's
input), with the same checks as files (docs/data.md section 4), naming `data['ADT']` or `file.h5mu[prot]` instead of a
file.

The MuData modalities are matched to the data type's by name and alias (`spamo.modalities`); coordinates stored on
the MuData are given to each modality; the ground truth is an obs column or a label file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spamo.data import MultiOmicsData
from spamo.datasets.assemble import _build
from spamo.datasets.files import _short, parse_modality_files
from spamo.datatypes import get_data_type
from spamo.errors import SpamoInputError
from spamo import modalities as modality_kinds


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
