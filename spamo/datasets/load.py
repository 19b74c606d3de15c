"""The loaders of datasets on disk: a dataset key, a folder in a known layout or of the user's own (docs/data.md
section 1), and `load`, the one entry point every command uses (it also dispatches a `.h5mu` file to
`spamo.datasets.memory`).

A benchmark key reads `<data_root>/<folder>`; `sim` without its folder, and a simulation preset of the selection
benchmark, are generated there first (docs/data.md section 3). The table's K is the default number of clusters
unless the files are simulated (their number of domains).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spamo.data import MultiOmicsData
from spamo.dataset_table import DatasetSpec, dataset_registry, get_dataset_spec
from spamo.datasets.assemble import _assemble
from spamo.datasets.files import _conventional_file, _conventional_truth, _under, detect_layout, parse_modality_files
from spamo.datasets.memory import _h5mu_truth_source, load_h5mu
from spamo.datatypes import get_data_type
from spamo.errors import SpamoInputError
from spamo.simulate import get_preset, is_preset, load_presets, write_simulation


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
    if isinstance(source, str) and source not in dataset_registry() and is_preset(source):
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
    if key not in dataset_registry() and is_preset(key):
        return _load_preset(key, data_root, n_clusters, layer, truth_file)
    spec = get_dataset_spec(key)
    folder = spec.path(data_root)
    if key == "sim" and not folder.exists():
        write_simulation(folder, n_spots=1296, seed=0, layout="sim")
    return load_layout(folder, spec, n_clusters, layer=layer, truth_file=truth_file)


def check_dataset_key(key: str) -> None:
    """Refuse a --dataset that is neither a dataset of configs/datasets.toml nor a simulation preset (one line)."""
    if key in dataset_registry() or is_preset(key):
        return
    raise SpamoInputError("--dataset", f"unknown dataset '{key}' (known: {', '.join(dataset_registry())}; "
                                       f"simulation presets: {', '.join(load_presets())})")


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
