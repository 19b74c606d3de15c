"""Per-data-type preprocessing into model-ready features (docs/method.md section 1): `RECIPES`, one
recipe per data type, which the registry `spamo.datatypes` takes its types' recipes from.

A recipe maps each modality (by its conventional name, or its position) to a `ModalityRecipe`: feature and spot
filters on raw counts, then a chain of small steps (`normalize_total`, `keep_hvg`, `log1p`, `scale`, `clr`, `pca`,
`lsi`) turning the kept counts into `feat`, a dense float32 N x f_m matrix. Spot filters of all modalities are
intersected, so every modality keeps the same spots in the same order.

Each step is also a plain function on matrices (`clr(counts)`, `lsi(counts, n_components, seed)`, ...).
Matrices stay sparse until a step needs them dense (scaling, PCA input of small feature sets).

The package by job: `matrices` (the plain functions), `steps` (recipe steps on a `ModalityState`), `recipes` (the
published recipes and running them). Every public name is importable from `spamo.preprocessing`.
"""

from __future__ import annotations

from spamo.preprocessing.matrices import (HVG_TOP, PCA_SOLVERS, SCALE_MAX_VALUE, TARGET_SUM, clr, features_per_spot,
                                          highly_variable_features, log1p, lsi, normalize_total, pca, pca_solver,
                                          raw_counts, scale, spots_per_feature, tfidf)
from spamo.preprocessing.recipes import RECIPES, ModalityRecipe, Recipe, preprocess, run_recipe
from spamo.preprocessing.steps import (ComponentCount, ModalityState, RecipeContext, Step, adt_count, clr_step,
                                       fixed_count, hvg_step, log1p_step, lsi_step, normalize_step, pca_step,
                                       scale_step)

__all__ = ["HVG_TOP", "PCA_SOLVERS", "SCALE_MAX_VALUE", "TARGET_SUM", "clr", "features_per_spot", "highly_variable_features", "log1p",
           "lsi", "normalize_total", "pca", "pca_solver", "raw_counts", "scale", "spots_per_feature", "tfidf", "RECIPES",
           "ModalityRecipe", "Recipe", "preprocess", "run_recipe", "ComponentCount", "ModalityState",
           "RecipeContext", "Step", "adt_count", "clr_step", "fixed_count", "hvg_step", "log1p_step", "lsi_step",
           "normalize_step", "pca_step", "scale_step"]
