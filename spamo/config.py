"""The one typed configuration of a SPAMO run.

A `SpamoConfig` is built from defaults, a TOML file and command-line flags, then `resolve()`d once against the data
type and the number of modalities (filling learning rate, weight decay, epochs, spatial k and modality weights from
the data-type registry). Everything downstream receives the resolved config and never looks up defaults itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from spamo.datasets import check_n_clusters
from spamo.datatypes import get_data_type
from spamo.errors import SpamoInputError
from spamo.graphs import KNN_TIES
from spamo.io import read_toml
from spamo.model.losses import DGI_INITS

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("none", "cosine", "plateau")
FEATURE_GRAPH_WEIGHTS = ("connectivity", "distance")
EMA_UPDATES = ("after_step", "before_step")
CLUSTER_METHODS = ("auto", "mclust", "gmm", "kmeans", "leiden", "louvain", "split-merge")


@dataclass(frozen=True)
class SpamoConfig:
    """Every setting of one SPAMO run. `None` means "the data type's default", filled by `resolve()`."""

    # data
    data_type: str | None = None
    n_clusters: int | None = None
    # graphs (docs/method.md section 2)
    knn_k: int = 20
    spatial_k: int | None = None
    feature_graph_weight: str = "connectivity"
    knn_ties: str = "sklearn"  # spatial kNN tie order (docs/method.md section 8): "sklearn" as the reference, or "index"
    # network (docs/method.md section 3)
    latent_dim: int = 64
    dropout: float = 0.1
    use_cross_attn: bool = True
    attention_block_size: int = 2048
    detach_feature_graph: bool = False  # True: encoders see G(P) detached (old spamo); the reference does not detach
    dgi_init: str = "torch"  # DGI discriminator start: "torch" (nn.Bilinear default, the reference) or "xavier"
    # loss (docs/method.md section 5)
    modality_weights: tuple[float, ...] | None = None
    dgi_weight: float = 0.1
    spatial_weight: float = 0.01
    smooth_degree_clamp: bool = True  # spatial-smoothness neighbour mean divides by max(rowsum, 1), as the reference
    graph_weight: float = 1.0
    ema_beta: float = 0.9
    ema_update: str = "after_step"
    # optimisation
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float | None = None
    epochs: int | None = None
    scheduler: str = "none"
    # clustering (docs/method.md section 6)
    cluster_method: str = "auto"
    init_k: int | None = None
    smooth: bool = False
    n_pcs: int = 20
    # run
    seed: int = 2025
    device: str = "auto"

    def replace(self, **changes: Any) -> "SpamoConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["modality_weights"] is not None:
            out["modality_weights"] = list(out["modality_weights"])
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> "SpamoConfig":
        """Build from a mapping whose keys are spamo names or the reference's flag names."""
        known = {f.name for f in fields(cls)}
        clean: dict[str, Any] = {}
        weights: dict[int, float] = {}
        for key, value in values.items():
            name = REFERENCE_FLAGS.get(key, key)
            if name.startswith("modality_weight_"):
                weights[int(name.rsplit("_", 1)[1])] = float(value)
                continue
            if name == "epochs_override":
                name, value = "epochs", (int(value) or None)
            if name not in known:
                raise SpamoInputError(where, f"unknown setting '{key}'")
            clean[name] = value
        if weights:
            base = list(clean.get("modality_weights") or [])
            for i in sorted(weights):
                while len(base) <= i:
                    base.append(float("nan"))
                base[i] = weights[i]
            clean["modality_weights"] = tuple(base)
        elif clean.get("modality_weights") is not None:
            clean["modality_weights"] = tuple(float(w) for w in clean["modality_weights"])
        return cls(**clean)

    @classmethod
    def from_toml(cls, path: str | Path) -> "SpamoConfig":
        values = read_toml(path)
        values = values.get("spamo", values)
        return cls.from_dict(values, where=str(path))

    def resolve(self, n_modalities: int, n_spots: int | None = None) -> "SpamoConfig":
        """Fill every data-type default and check every value; the result has no `None` left but `init_k`."""
        if self.data_type is None:
            raise SpamoInputError("data_type", "no data type given")
        dtype = get_data_type(self.data_type)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("scheduler", self.scheduler, SCHEDULERS)
        _check_choice("feature_graph_weight", self.feature_graph_weight, FEATURE_GRAPH_WEIGHTS)
        _check_choice("ema_update", self.ema_update, EMA_UPDATES)
        _check_choice("dgi_init", self.dgi_init, DGI_INITS)
        _check_choice("knn_ties", self.knn_ties, KNN_TIES)
        _check_choice("cluster_method", self.cluster_method, CLUSTER_METHODS)
        if n_modalities < 1:
            raise SpamoInputError("modalities", "no modality selected")
        defaults = default_modality_weights(n_modalities)
        weights = [float(w) for w in (self.modality_weights or defaults)]
        if any(w != w for w in weights):  # NaN = "not given" (per-modality flags): those take their defaults
            weights = (weights + [float("nan")] * n_modalities)[: max(n_modalities, len(weights))]
            while len(weights) > n_modalities and weights[-1] != weights[-1]:
                weights.pop()
            weights = [d if w != w else w for w, d in zip(weights, defaults)] + weights[len(defaults):]
        weights = tuple(weights)
        if len(weights) != n_modalities or any(not (w >= 0) for w in weights):
            raise SpamoInputError("modality_weights", f"need {n_modalities} non-negative weights, got {list(weights)}")
        if self.knn_k < 1:
            raise SpamoInputError("knn_k", f"KNN_k must be >= 1, got {self.knn_k}")
        if n_spots is not None and self.knn_k >= n_spots:
            raise SpamoInputError("knn_k", f"KNN_k={self.knn_k} must be smaller than the number of spots ({n_spots})")
        if self.n_clusters is not None:
            check_n_clusters(self.n_clusters, n_spots)  # the one rule for K (the loaders use it too)
        if not (0.0 <= self.dropout < 1.0):
            raise SpamoInputError("dropout", f"dropout must be in [0, 1), got {self.dropout}")
        epochs = self.epochs if self.epochs else dtype.epochs
        return self.replace(
            data_type=dtype.name,
            spatial_k=self.spatial_k or dtype.spatial_k,
            modality_weights=weights,
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


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SpamoInputError(name, f"'{value}' is not one of {', '.join(choices)}")


# The reference release's command-line flags and the spamo setting each one sets (README table).
REFERENCE_FLAGS: dict[str, str] = {
    "data_type": "data_type",
    "n_clusters": "n_clusters",
    "init_k": "init_k",
    "KNN_k": "knn_k",
    "RNA_weight": "modality_weight_0",
    "ADT_weight": "modality_weight_1",
    "ATAC_weight": "modality_weight_2",
    "dgi_weight": "dgi_weight",
    "spatial_weight": "spatial_weight",
    "dim_output": "latent_dim",
    "dropout": "dropout",
    "epochs_override": "epochs_override",
    "optimizer_type": "optimizer",
    "lr_scheduler_type": "scheduler",
    "use_cross_attn": "use_cross_attn",
    "random_seed": "seed",
    "alpha": "ema_beta",
    "learning_rate": "lr",
    "weight_decay": "weight_decay",
}


def build_config(config_file: str | Path | None = None, **overrides: Any) -> SpamoConfig:
    """Defaults, then a TOML file, then the options given on the command line (`None` = not given)."""
    config = SpamoConfig.from_toml(config_file) if config_file else SpamoConfig()
    given = {k: v for k, v in overrides.items() if v is not None}
    weights = {k: given.pop(k) for k in list(given) if k.startswith("modality_weight_")}
    if weights:
        explicit = given.get("modality_weights") or config.modality_weights
        base = list(explicit or [])
        for key, value in sorted(weights.items()):
            i = int(key.rsplit("_", 1)[1])
            while len(base) <= i:
                base.append(float("nan"))
            base[i] = float(value)
        if not explicit:
            base.append(float("nan"))  # more modalities than flags given: the rest take their defaults
        given["modality_weights"] = tuple(base)
    if "epochs" in given and not given["epochs"]:
        given["epochs"] = None  # the reference's epochs_override = 0 means "data-type default"
    return config.replace(**given)


def parse_weights(text: str | None, where: str = "--modality-weights") -> tuple[float, ...] | None:
    """'5,5' or '1,3,3' -> (5.0, 5.0)."""
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise SpamoInputError(where, f"expected comma-separated numbers, got {text!r}") from None
