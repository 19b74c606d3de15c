"""Registry of data types: each one names its modalities, its graph and training defaults, and its preprocessing.

Adding a data type means adding its recipe to `spamo.preprocessing.RECIPES` and registering one `DataType` with it;
nothing else in spamo branches on the type's name. This module imports the recipes (one way: preprocessing knows
nothing of the registry).
"""

from __future__ import annotations

from dataclasses import dataclass

from spamo.errors import SpamoInputError
from spamo.preprocessing import RECIPES, Recipe


@dataclass(frozen=True)
class DataType:
    name: str
    modalities: tuple[str, ...]  # conventional modality names, in order (RNA first)
    spatial_k: int  # k of the spatial kNN graph (docs/method.md section 2)
    weight_decay: float  # docs/method.md section 5
    epochs: int  # docs/method.md section 5
    preprocess: Recipe  # the type's preprocessing recipe (docs/method.md section 1)
    # spot names are spot ids and the truth file / labels.txt are in spot-id order (the Simulation layout,
    # docs/data.md section 1: the reference parses each name as an integer id and writes label j at line id_j)
    spot_id_order: bool = False


_REGISTRY: dict[str, DataType] = {}


def register(dtype: DataType) -> DataType:
    _REGISTRY[dtype.name] = dtype
    return dtype


def get_data_type(name: str) -> DataType:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpamoInputError("data_type", f"unknown data type '{name}' (known: {', '.join(_REGISTRY)})") from None


def data_type_names() -> list[str]:
    return list(_REGISTRY)


register(DataType("10x", ("RNA", "ADT"), spatial_k=3, weight_decay=5e-3, epochs=200,
                  preprocess=RECIPES["10x"]))
register(DataType("SPOTS", ("RNA", "ADT"), spatial_k=3, weight_decay=5e-3, epochs=200,
                  preprocess=RECIPES["SPOTS"]))
register(DataType("Stereo-CITE-seq", ("RNA", "ADT"), spatial_k=6, weight_decay=5e-2, epochs=300,
                  preprocess=RECIPES["Stereo-CITE-seq"]))
register(DataType("Spatial-epigenome-transcriptome", ("RNA", "ATAC"), spatial_k=6, weight_decay=5e-2, epochs=300,
                  preprocess=RECIPES["Spatial-epigenome-transcriptome"]))
register(DataType("Simulation", ("RNA", "ADT", "ATAC"), spatial_k=3, weight_decay=2e-2, epochs=200,
                  preprocess=RECIPES["Simulation"], spot_id_order=True))
