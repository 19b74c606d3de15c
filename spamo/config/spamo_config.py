"""`SpamoConfig`: every setting of one SPAMO run, declared once with its flag, the reference release's name
(docs/method.md section 8), help and accepted values, and resolved once per entry point against the data.

`resolve()` fills the data-type defaults (learning rate, weight decay, epochs, spatial k, modality weights), merges
the per-modality weight flags and checks what depends on the data (k against the number of spots, K by the one rule
of `spamo.datasets.check_n_clusters`). `build_config` layers defaults, a published profile or a TOML file, and the
command line's options.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from spamo.choices import (ATTENTION_PRECISIONS, CLUSTER_METHODS, DGI_INITS, EMA_UPDATES, FEATURE_GRAPH_WEIGHTS,
                           KNN_TIES, OPTIMIZERS, SCHEDULERS)
from spamo.config.fields import Range, _checked, _weight, setting
from spamo.datasets import check_n_clusters
from spamo.datatypes import data_type_names, get_data_type
from spamo.errors import SpamoInputError
from spamo.io import read_toml


DEVICES = ("auto", "cpu", "cuda", "cuda:N")


SEED_MAX = 2**31 - 1  # R's set.seed (mclust) takes a 32-bit signed integer


# The reference's per-modality weight flags: position in the modality order, spamo flag, reference flag.
PER_MODALITY_WEIGHTS = ((0, "--rna-weight", "RNA_weight"), (1, "--adt-weight", "ADT_weight"),
                        (2, "--atac-weight", "ATAC_weight"))


@dataclass(frozen=True)
class SpamoConfig:
    """Every setting of one SPAMO run. `None` means "the data type's default", filled by `resolve()`."""

    # data
    data_type: str | None = setting(None, "Data type: 10x, SPOTS, Stereo-CITE-seq, Spatial-epigenome-transcriptome "
                                          "or Simulation (a --dataset knows its own).",
                                    alias="data_type", choices=data_type_names, default_text="from the dataset")
    n_clusters: int | None = setting(None, "Number of domains (a --dataset knows its own).", alias="n_clusters",
                                     range=Range(2), default_text="from the dataset")
    # graphs (docs/method.md section 2)
    knn_k: int = setting(20, "k of the feature kNN graph (smaller than the number of spots).", alias="KNN_k",
                         range=Range(1))
    spatial_k: int | None = setting(None, "k of the spatial kNN graph.", range=Range(1),
                                    default_text="data type's (3 or 6)")
    feature_graph_weight: str = setting("connectivity", "Feature-graph edge weights: connectivity or distance "
                                                        "(the reference's quirk).", choices=FEATURE_GRAPH_WEIGHTS)
    knn_ties: str = setting("sklearn", "Spatial kNN tie order: sklearn (as the reference) or index (old spamo).",
                            choices=KNN_TIES)
    # network (docs/method.md section 3)
    latent_dim: int = setting(64, "Embedding size.", flag="--latent-dim", alias="dim_output", range=Range(1))
    dropout: float = setting(0.1, "Dropout rate.", alias="dropout", range=Range(0, 1, high_open=True))
    use_cross_attn: bool = setting(True, "Cross-modal attention in the fusion.", flag="--cross-attn",
                                   alias="use_cross_attn")
    attention_block_size: int = setting(2048, "Query rows per block of the exact cross attention (memory, not "
                                              "results).", range=Range(1))
    attention_precision: str = setting("float32", "Cross-attention arithmetic: float32 (exact) or bfloat16 (CUDA "
                                                  "only: the fused kernel in bfloat16, float32 accumulation).",
                                       choices=ATTENTION_PRECISIONS)
    detach_feature_graph: bool = setting(False, "Encoders see the learnable feature graph detached (old spamo); "
                                                "default: not detached, as the reference.")
    dgi_init: str = setting("torch", "DGI discriminator initialisation: torch (as the reference) or xavier.",
                            choices=DGI_INITS)
    # loss (docs/method.md section 5)
    modality_weights: tuple[float, ...] | None = setting(
        None, "Reconstruction weight per modality, e.g. 5,5 or 1,3,3 (--rna-weight / --adt-weight / --atac-weight "
              "set one position).", range=Range(0), default_text="5,5 (1,3,3 with three modalities)")
    dgi_weight: float = setting(0.1, "DGI loss weight.", alias="dgi_weight", range=Range(0))
    spatial_weight: float = setting(0.01, "Spatial smoothness weight.", alias="spatial_weight", range=Range(0))
    smooth_degree_clamp: bool = setting(True, "Spatial-smoothness neighbour mean divides by max(row sum, 1) "
                                              "(as the reference).")
    graph_weight: float = setting(1.0, "Feature-graph (Frobenius) loss weight.", range=Range(0))
    ema_beta: float = setting(0.9, "EMA factor of the feature-graph target.", alias="alpha", range=Range(0, 1))
    ema_update: str = setting("after_step", "EMA target update: after_step or before_step.", choices=EMA_UPDATES)
    # optimisation
    optimizer: str = setting("adamw", "Optimiser.", alias="optimizer_type", choices=OPTIMIZERS)
    lr: float | None = setting(None, "Learning rate.", alias="learning_rate", range=Range(0, low_open=True),
                               default_text="0.01 (0.001 with three modalities)")
    weight_decay: float | None = setting(None, "Weight decay.", alias="weight_decay", range=Range(0),
                                         default_text="data type's")
    epochs: int | None = setting(None, "Training epochs (0 = the data type's default).", alias="epochs_override",
                                 range=Range(0, note="0 = the data type's default"),
                                 default_text="data type's (200 / 300)")
    scheduler: str = setting("none", "Learning-rate schedule.", alias="lr_scheduler_type", choices=SCHEDULERS)
    # clustering (docs/method.md section 6)
    cluster_method: str = setting("auto", "Clustering of the embedding (auto = mclust when R is there, else gmm).",
                                  choices=CLUSTER_METHODS)
    init_k: int | None = setting(None, "Initial K of split-and-merge.", alias="init_k", range=Range(2),
                                 default_text="(split-merge start)")
    smooth: bool = setting(False, "Spatial majority-vote smoothing of the labels.")
    n_pcs: int = setting(20, "Principal components the clustering sees.", range=Range(1))
    # run
    seed: int = setting(2025, "Random seed.", alias="random_seed", range=Range(0, SEED_MAX))
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.", choices=DEVICES)
    # per-modality weights given one at a time (--rna-weight, ...): merged into modality_weights by resolve()
    modality_weight_overrides: tuple[tuple[int, float], ...] = field(default=(), metadata={"internal": True})

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _checked(f, getattr(self, f.name)))

    def replace(self, **changes: Any) -> "SpamoConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists for tuples); per-modality overrides as `modality_weight_<i>` keys (from_dict's)."""
        out = dataclasses.asdict(self)
        overrides = out.pop("modality_weight_overrides")
        if out["modality_weights"] is not None:
            out["modality_weights"] = list(out["modality_weights"])
        out.update({f"modality_weight_{i}": w for i, w in overrides})
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> "SpamoConfig":
        """Build from a mapping whose keys are spamo names or the reference's flag names; refusals name `where`."""
        if not isinstance(values, dict):
            raise SpamoInputError(where, f"settings must be a table of name = value, got {values!r}")
        known = {f.name for f in fields(cls)} - {"modality_weight_overrides"}
        clean: dict[str, Any] = {}
        overrides: dict[int, float] = {}
        for key, value in values.items():
            name = REFERENCE_FLAGS.get(key, key)
            if name.startswith("modality_weight_") and name.rsplit("_", 1)[1].isdigit():
                overrides[int(name.rsplit("_", 1)[1])] = _weight(value, key, where)
                continue
            if name not in known:
                raise SpamoInputError(where, f"unknown setting '{key}'")
            clean[name] = value
        if overrides:
            clean["modality_weight_overrides"] = tuple(sorted(overrides.items()))
        try:
            return cls(**clean)
        except SpamoInputError as exc:
            written = next((k for k in reversed(list(values)) if REFERENCE_FLAGS.get(k, k) == exc.where), exc.where)
            label = written if written == exc.where else f"{written} ({exc.where})"
            raise SpamoInputError(where, f"{label} {exc.problem}") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> "SpamoConfig":
        """A TOML file of settings, at top level or under [spamo]."""
        values = read_toml(path)
        values = values.get("spamo", values)
        if not isinstance(values, dict):
            raise SpamoInputError(path, f"'spamo' must be a table of settings ([spamo]), got {values!r}")
        return cls.from_dict(values, where=str(path))

    def resolve(self, n_modalities: int, n_spots: int | None = None) -> "SpamoConfig":
        """Fill every data-type default, merge the per-modality weights, check what depends on the data.

        The result has no `None` left but `init_k`.
        """
        if self.data_type is None:
            raise SpamoInputError("data_type", "no data type given")
        dtype = get_data_type(self.data_type)
        if n_modalities < 1:
            raise SpamoInputError("modalities", "no modality selected")
        weights = list(self.modality_weights or default_modality_weights(n_modalities))
        for i, w in self.modality_weight_overrides:
            if i >= len(weights):
                if self.modality_weights is not None or i >= n_modalities:
                    raise SpamoInputError("modality_weights", f"a weight for modality {i + 1} but the data has "
                                                              f"{n_modalities} modalities")
            weights[i] = w
        if len(weights) != n_modalities:
            raise SpamoInputError("modality_weights", f"need {n_modalities} non-negative weights, got {weights}")
        if n_spots is not None and self.knn_k >= n_spots:
            raise SpamoInputError("knn_k", f"KNN_k={self.knn_k} must be smaller than the number of spots ({n_spots})")
        if self.n_clusters is not None:
            check_n_clusters(self.n_clusters, n_spots)  # the one rule for K (the loaders use it too)
        epochs = self.epochs if self.epochs else dtype.epochs
        return self.replace(
            data_type=dtype.name,
            spatial_k=self.spatial_k or dtype.spatial_k,
            modality_weights=tuple(weights),
            modality_weight_overrides=(),
            lr=self.lr if self.lr is not None else (0.01 if n_modalities <= 2 else 0.001),
            weight_decay=self.weight_decay if self.weight_decay is not None else dtype.weight_decay,
            epochs=int(epochs),
        )


def default_modality_weights(n_modalities: int) -> tuple[float, ...]:
    """Published defaults: 5/5 for two modalities (`RNA_weight`, `ADT_weight`), 1/3/3 for three.

    One modality (an ablation, not the published method) keeps weight 5.
    """
    if n_modalities <= 2:
        return (5.0,) * n_modalities
    return (1.0,) + (3.0,) * (n_modalities - 1)


def settings() -> list[dataclasses.Field]:
    """The declared settings, in field order (the internal per-modality overrides left out)."""
    return [f for f in fields(SpamoConfig) if not f.metadata.get("internal")]


def _reference_flags() -> dict[str, str]:
    out = {f.metadata["alias"]: f.name for f in settings() if f.metadata.get("alias")}
    out.update({alias: f"modality_weight_{i}" for i, _, alias in PER_MODALITY_WEIGHTS})
    return out


# The reference release's flag names -> the spamo setting each one sets (generated from the declarations).
REFERENCE_FLAGS: dict[str, str] = _reference_flags()


def build_config(config_file: str | Path | None = None, base: SpamoConfig | None = None,
                 **overrides: Any) -> SpamoConfig:
    """Defaults (or `base`, e.g. a published profile), then a TOML file, then the options given on the command line
    (`None` = not given).

    Per-modality weights arrive as `modality_weight_<i>` keys; an `epochs` of 0 means the data type's default.
    """
    if config_file and base is not None:
        raise SpamoInputError("--config", "give either --config or --reproduce, not both")
    config = SpamoConfig.from_toml(config_file) if config_file else (base or SpamoConfig())
    given = {k: v for k, v in overrides.items() if v is not None}
    weights = {int(k.rsplit("_", 1)[1]): given.pop(k) for k in list(given) if k.startswith("modality_weight_")}
    if weights:
        merged = dict(config.modality_weight_overrides)
        merged.update({i: _weight(w, f"modality_weight_{i}", "modality_weights") for i, w in weights.items()})
        given["modality_weight_overrides"] = tuple(sorted(merged.items()))
    return config.replace(**given)


def parse_weights(text: str | None, where: str = "--modality-weights") -> tuple[float, ...] | None:
    """'5,5' or '1,3,3' -> (5.0, 5.0)."""
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise SpamoInputError(where, f"expected comma-separated numbers, got {text!r}") from None
