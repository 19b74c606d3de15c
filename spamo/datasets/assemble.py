"""Assembling checked modalities into one `MultiOmicsData`: every modality checked, aligned to modality 1's spot
order by name, coordinates and ground truth attached, K chosen and checked (docs/data.md section 4).

Data types that order spots by id (the Simulation layout, docs/method.md section 8) keep each row's spot id: line i
of the truth file is the label of the spot whose id is i, so the truth is reordered to the rows here and the ids
kept for the writer of labels.txt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spamo.data import MultiOmicsData
from spamo.datasets.checks import _dense, check_modality, check_n_clusters
from spamo.datasets.files import read_h5ad_checked, read_truth_file
from spamo.datatypes import get_data_type
from spamo.errors import SpamoInputError
from spamo.simulate import truth_from_spfac


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


def _simulated_domains(adata) -> int | None:
    info = adata.uns.get("spamo_simulation")
    if isinstance(info, dict) and "n_domains" in info:
        return int(info["n_domains"])
    return None


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
