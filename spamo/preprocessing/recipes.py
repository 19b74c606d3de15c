"""The recipes: one per data type (`RECIPES`, the published preprocessing of docs/method.md section 1), which the
registry `spamo.datatypes` takes its types' recipes from, and `run_recipe` / `preprocess`, which run them.

Feature and spot filters run on raw counts; spot filters of all modalities are intersected, so every modality keeps
the same spots in the same order, and a filter that keeps nothing is a one-line refusal naming the file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from spamo.data import MultiOmicsData, PreparedData
from spamo.errors import SpamoInputError
from spamo.modalities import kind_of, names_for
from spamo.preprocessing.matrices import features_per_spot, raw_counts, spots_per_feature
from spamo.preprocessing.steps import (ComponentCount, ModalityState, RecipeContext, Step, adt_count, clr_step,
                                       fixed_count, hvg_step, log1p_step, lsi_step, normalize_step, pca_step,
                                       scale_step)


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModalityRecipe:
    """Filters (on raw counts, all spots) and steps turning one modality into `feat`."""

    steps: tuple[Step, ...]
    min_spots_per_feature: int = 0  # drop features positive in fewer spots
    min_features_per_spot: int = 0  # drop spots with fewer positive features (applied to every modality)


@dataclass(frozen=True)
class Recipe:
    """The preprocessing of one data type: a `ModalityRecipe` per conventional modality name, in order."""

    modalities: dict = field(default_factory=dict)  # name -> ModalityRecipe, RNA first
    adt_modality: str | None = "ADT"  # the modality whose feature count is n_ADT (else the second modality)

    def __call__(self, data: MultiOmicsData, seed: int = 2025) -> PreparedData:
        return run_recipe(self, data, seed)

    def recipe_for(self, name: str, position: int) -> ModalityRecipe:
        """Match by name or one of its kind's aliases (case-insensitive, `spamo.modalities`), else by position."""
        by_name = {k.lower(): v for k, v in self.modalities.items()}
        for alias in names_for(name):
            if alias in by_name:
                return by_name[alias]
        ordered = list(self.modalities.values())
        if position < len(ordered):
            return ordered[position]
        raise SpamoInputError(name, f"no preprocessing for a modality number {position + 1} in this data type")


def run_recipe(recipe: Recipe, data: MultiOmicsData, seed: int) -> PreparedData:
    """Filter features and spots, then run each modality's steps on the spots every modality kept."""
    names = data.modality_names
    recipes = [recipe.recipe_for(name, i) for i, name in enumerate(names)]
    counts, kept_spots = [], np.ones(data.n_spots, dtype=bool)
    for name, mod_recipe in zip(names, recipes):
        where = _where(data, name)
        raw = raw_counts(data.modalities[name], getattr(data, "layer", None))
        feature_mask = spots_per_feature(raw) >= mod_recipe.min_spots_per_feature
        if not feature_mask.any():
            raise SpamoInputError(where, f"zero features after filtering (features in fewer than "
                                  f"{mod_recipe.min_spots_per_feature} spots dropped, of {raw.shape[1]})")
        raw = raw[:, feature_mask] if not feature_mask.all() else raw
        if mod_recipe.min_features_per_spot:
            spot_mask = features_per_spot(raw) >= mod_recipe.min_features_per_spot
            if not spot_mask.any():
                raise SpamoInputError(where, f"zero spots after filtering (spots with fewer than "
                                      f"{mod_recipe.min_features_per_spot} features dropped)")
            kept_spots &= spot_mask
        counts.append(raw)
    if not kept_spots.any():
        raise SpamoInputError(data.name, "zero spots after filtering (no spot passes every modality's filter)")
    kept_index = np.flatnonzero(kept_spots)
    counts = [c[kept_index] if len(kept_index) < data.n_spots else c for c in counts]
    context = RecipeContext(n_adt=_n_adt(recipe, names, counts), seed=seed)
    features = []
    for name, mod_recipe, kept_counts in zip(names, recipes, counts):
        obsm = {key: np.asarray(value)[kept_index] for key, value in data.modalities[name].obsm.items()
                if getattr(value, "shape", (0,))[0] == data.n_spots}
        state = ModalityState(counts=kept_counts, matrix=kept_counts, obsm=obsm, context=context)
        for step in mod_recipe.steps:
            state = step(state)
        feat = state.matrix.toarray() if sp.issparse(state.matrix) else np.asarray(state.matrix)
        features.append(np.ascontiguousarray(feat, dtype=np.float32))
        log.info("%s: %d spots x %d features", name, feat.shape[0], feat.shape[1])
    return PreparedData(
        name=data.name,
        data_type=data.data_type,
        modality_names=names,
        features=features,
        coords=np.asarray(data.coords, dtype=np.float64)[kept_index],
        spot_names=np.asarray(data.spot_names)[kept_index],
        kept_index=kept_index,
        n_spots_original=data.n_spots,
        truth=None if data.truth is None else np.asarray(data.truth)[kept_index],
    )


def _where(data: MultiOmicsData, name: str) -> str:
    return str(data.sources.get(name, name)) if data.sources else name


def _n_adt(recipe: Recipe, names: list[str], counts: list) -> int:
    """Feature count (after filtering) of the ADT modality, else of the second modality, else of the first."""
    if recipe.adt_modality:
        wanted = kind_of(recipe.adt_modality)
        for name, matrix in zip(names, counts):
            kind = kind_of(name)
            if name.lower() == recipe.adt_modality.lower() or (kind is not None and kind is wanted):
                return int(matrix.shape[1])
    return int(counts[min(1, len(counts) - 1)].shape[1])


def preprocess(data: MultiOmicsData, seed: int = 2025) -> PreparedData:
    """Model-ready features of a loaded dataset, by the recipe of its data type (`RECIPES`, which the data-type
    registry `spamo.datatypes` registers each type with)."""
    recipe = RECIPES.get(data.data_type)
    if recipe is None:
        raise SpamoInputError("data_type", f"data type '{data.data_type}' has no preprocessing recipe "
                                           f"(known: {', '.join(RECIPES)})")
    return recipe(data, seed)


def _rna(min_spots: int, min_genes: int, scaled: bool, components: ComponentCount) -> ModalityRecipe:
    steps = [normalize_step(), hvg_step(), log1p_step()]
    if scaled:
        steps.append(scale_step())
    steps.append(pca_step(components))
    return ModalityRecipe(tuple(steps), min_spots_per_feature=min_spots, min_features_per_spot=min_genes)


def _adt(min_spots: int, scaled: bool, components: ComponentCount) -> ModalityRecipe:
    steps = [clr_step()] + ([scale_step()] if scaled else []) + [pca_step(components)]
    return ModalityRecipe(tuple(steps), min_spots_per_feature=min_spots)


def _peaks(components: ComponentCount, precomputed: str | None) -> ModalityRecipe:
    return ModalityRecipe((lsi_step(components, precomputed),))


RECIPES: dict[str, Recipe] = {
    "10x": Recipe({"RNA": _rna(10, 0, True, adt_count(-1)), "ADT": _adt(0, True, adt_count(-1))}),
    "SPOTS": Recipe({"RNA": _rna(10, 0, True, adt_count(-1)), "ADT": _adt(0, True, adt_count(-1))}),
    "Stereo-CITE-seq": Recipe({"RNA": _rna(10, 80, False, adt_count(-1)), "ADT": _adt(50, False, adt_count(-1))}),
    "Spatial-epigenome-transcriptome": Recipe(
        {"RNA": _rna(10, 200, True, fixed_count(50)), "ATAC": _peaks(fixed_count(51), "X_lsi")}, adt_modality=None
    ),
    "Simulation": Recipe(
        {
            "RNA": _rna(0, 0, False, adt_count(0)),
            "ADT": _adt(0, False, adt_count(0)),
            "ATAC": _peaks(adt_count(+1), None),
        }
    ),
}
