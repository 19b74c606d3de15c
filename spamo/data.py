"""The two data containers every stage passes along.

`MultiOmicsData` is what loaders return: raw AnnData per modality, aligned by spot, plus ground truth.
`PreparedData` is what preprocessing returns: dense feature matrices per modality (`feat`), coordinates and the
spots kept. The model and the search layer only ever see `PreparedData`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spamo.errors import SpamoInputError


@dataclass
class MultiOmicsData:
    """Raw modalities of one dataset, aligned to the same spots in the same order."""

    name: str  # dataset key ("hln", "mb", "sim") or the folder's name
    data_type: str  # a key of the data-type registry (spamo.datatypes)
    modalities: dict  # modality name -> AnnData; insertion order is modality order (RNA first)
    coords: np.ndarray  # N x 2 float64, obsm['spatial'] of the first modality
    truth: np.ndarray | None = None  # N integer labels in spot order, or None
    n_clusters: int | None = None
    sources: dict = field(default_factory=dict)  # modality name -> Path of the file it came from
    truth_path: Path | None = None
    # The input matrix every modality was read from: None = `.X` (as the reference reads), else a layer's name.
    layer: str | None = None
    # Spot id of each row when the layout orders spots by id (the Simulation layout, docs/data.md section 1): the truth
    # file's line i and labels.txt's line i belong to the spot whose id is i. None = row order.
    spot_ids: np.ndarray | None = None

    @property
    def matrix_label(self) -> str:
        """Which matrix the features come from, as run.toml records it."""
        return ".X" if self.layer is None else f"layers['{self.layer}']"

    @property
    def label_order(self) -> str:
        """How truth and labels.txt are ordered: 'spot_id' or 'rows'."""
        return "rows" if self.spot_ids is None else "spot_id"

    @property
    def n_spots(self) -> int:
        return int(self.coords.shape[0])

    @property
    def modality_names(self) -> list[str]:
        return list(self.modalities)

    @property
    def spot_names(self) -> np.ndarray:
        first = next(iter(self.modalities.values()))
        return np.asarray(first.obs_names)


@dataclass
class PreparedData:
    """Model-ready features: one dense float32 N x f_m matrix per modality over the kept spots."""

    name: str
    data_type: str
    modality_names: list[str]
    features: list[np.ndarray]  # per modality, float32, N_kept x f_m
    coords: np.ndarray  # N_kept x 2 float64
    spot_names: np.ndarray  # N_kept names
    kept_index: np.ndarray  # positions of the kept spots in the loaded (original) order
    n_spots_original: int
    truth: np.ndarray | None = None  # labels of the kept spots
    # no n_clusters here: K belongs to the resolved SpamoConfig (the loaded data only suggests one)

    @property
    def n_spots(self) -> int:
        return int(self.coords.shape[0])

    @property
    def n_modalities(self) -> int:
        return len(self.features)

    def subset_modalities(self, names: list[str]) -> "PreparedData":
        """The same spots with only the named modalities (single-modality ablations use this)."""
        idx = [self.modality_names.index(n) for n in names]
        return PreparedData(
            name=self.name,
            data_type=self.data_type,
            modality_names=[self.modality_names[i] for i in idx],
            features=[self.features[i] for i in idx],
            coords=self.coords,
            spot_names=self.spot_names,
            kept_index=self.kept_index,
            n_spots_original=self.n_spots_original,
            truth=self.truth,
        )


def input_matrix(adata, layer: str | None = None, where: Path | str = "--layer"):
    """The matrix every stage reads: `.X` (as the reference does), or `layers[layer]` when a layer is named."""
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        have = ", ".join(adata.layers.keys()) or "none"
        raise SpamoInputError(where, f"has no layers['{layer}'] (layers here: {have})")
    return adata.layers[layer]
