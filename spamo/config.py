"""The one typed configuration of a SPAMO run, and the one declaration of every setting.

Each `SpamoConfig` field carries its command-line flag, the reference release's flag name, its help text and what
it accepts (a numeric range, or the allowed values: data types from `spamo.datatypes`, every other choice from
`spamo.choices`, the light list of names that the implementations take theirs from - optimisers and schedulers of
`spamo.training`, feature-graph weights and kNN tie orders of `spamo.graphs`, EMA timings of
`spamo.model.feature_graph`, DGI initialisations of `spamo.model.losses`, clustering methods of `spamo.clustering` -
so that reading the settings, `spamo --help` included, imports no torch or scikit-learn). From these declarations come the `spamo run` options (cli.py),
`REFERENCE_FLAGS` and the README's settings table (`settings_table_markdown`, checked by a test), so a setting is
added by adding one field.

A config checks every value when it is built (`__post_init__`): a wrong type (a TOML string where a number belongs),
a value out of range or an unknown choice is one `SpamoInputError` naming the setting and what it accepts, before any
data is read. `resolve()` then runs once per entry point against the data type, the number of modalities and the
number of spots, filling the data-type defaults (learning rate, weight decay, epochs, spatial k, modality weights) and
merging the per-modality weight flags. Everything downstream receives the resolved config.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from spamo.choices import (CLUSTER_METHODS, DGI_INITS, EMA_UPDATES, FEATURE_GRAPH_WEIGHTS, KNN_TIES, OPTIMIZERS,
                           SCHEDULERS)
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
class Range:
    """A numeric range: `low`/`high` (None = unbounded), open or closed at each end; NaN and inf are never in it."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def text(self) -> str:
        low, high = _num_text(self.low), _num_text(self.high)
        if self.low is not None and self.high is not None:
            out = f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        elif self.low is not None:
            out = f"{'>' if self.low_open else '>='} {low}"
        elif self.high is not None:
            out = f"{'<' if self.high_open else '<='} {high}"
        else:
            out = "finite"
        return f"{out} ({self.note})" if self.note else out


def _num_text(value: float | None) -> str:
    return str(int(value)) if value is not None and float(value).is_integer() else f"{value:g}" if value else ""


def setting(default: Any, help: str, *, flag: str | None = None, alias: str | None = None,
            choices: tuple | Callable[[], Any] | None = None, range: Range | None = None,
            default_text: str | None = None) -> Any:
    """A `SpamoConfig` field with its declaration: CLI flag (default `--name-with-dashes`), the reference's flag name
    (`alias`), help text, and the accepted values (`choices`, a tuple or a function reading the owning registry, or a
    numeric `range`). `default_text` is how the README shows a default filled in by `resolve()`."""
    return field(default=default, metadata={"flag": flag, "alias": alias, "help": help, "choices": choices,
                                            "range": range, "default_text": default_text})


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


# ------------------------------------------------------------------------------------------------ declarations


def settings() -> list[dataclasses.Field]:
    """The declared settings, in field order (the internal per-modality overrides left out)."""
    return [f for f in fields(SpamoConfig) if not f.metadata.get("internal")]


def kind(f: dataclasses.Field) -> str:
    """'int', 'float', 'bool', 'str' or 'weights', from the field's annotation."""
    text = str(f.type).replace(" | None", "")
    return "weights" if text.startswith("tuple") else text


def optional(f: dataclasses.Field) -> bool:
    return "None" in str(f.type)


def flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def choices(f: dataclasses.Field) -> tuple | None:
    allowed = f.metadata.get("choices")
    return tuple(allowed() if callable(allowed) else allowed) if allowed is not None else None


def accepts(f: dataclasses.Field) -> str:
    """What a setting accepts, in words (the refusals and the README say the same)."""
    allowed, bounds, what = choices(f), f.metadata.get("range"), kind(f)
    if allowed is not None:
        return "one of " + ", ".join(map(str, allowed))
    if what == "bool":
        return "true or false"
    noun = {"int": "an integer", "float": "a number", "weights": "a list of numbers, each"}.get(what, "a string")
    return f"{noun} {bounds.text()}" if bounds is not None else noun


def _fail(f: dataclasses.Field, value: Any) -> SpamoInputError:
    return SpamoInputError(f.name, f"must be {accepts(f)}, got {value!r}")


def _number(f: dataclasses.Field, value: Any, integer: bool) -> int | float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(f, value)
    value = float(value) if not isinstance(value, numbers.Integral) else int(value)
    if integer:
        if isinstance(value, float):
            if not value.is_integer():
                raise _fail(f, value)
            value = int(value)
    else:
        value = float(value)
    bounds = f.metadata.get("range")
    if bounds is not None and value not in bounds:
        raise _fail(f, value)
    if not integer and not math.isfinite(value):
        raise _fail(f, value)
    return value


def _checked(f: dataclasses.Field, value: Any) -> Any:
    """The value, normalised to the field's plain Python type, or a refusal naming the setting."""
    if f.name == "modality_weight_overrides":
        return tuple((int(i), _weight(w, f"modality_weight_{i}", "modality_weights")) for i, w in value)
    if f.name == "epochs" and value == 0 and not isinstance(value, bool):
        value = None  # the reference's epochs_override = 0: the data type's default
    if value is None:
        if optional(f):
            return None
        raise SpamoInputError(f.name, f"must be given ({accepts(f)})")
    what = kind(f)
    if what == "bool":
        if not isinstance(value, bool) and type(value).__name__ != "bool_":
            raise _fail(f, value)
        return bool(value)
    if what in ("int", "float"):
        return _number(f, value, integer=what == "int")
    if what == "weights":
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise _fail(f, value)
        return tuple(_number(f, w, integer=False) for w in value)
    if not isinstance(value, str):
        raise _fail(f, value)
    allowed = choices(f)
    if f.name == "device":
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise _fail(f, value)
    if allowed is not None and value not in allowed:
        raise _fail(f, value)
    return value


def _weight(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value >= 0):
        raise SpamoInputError(where, f"{key} must be a number >= 0, got {value!r}")
    return float(value)


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


# ------------------------------------------------------------------------------------------------ README table


def settings_table_markdown() -> str:
    """The README's settings table, one row per setting (tests/test_config.py checks the README holds it)."""
    rows = ["| spamo flag | reference flag | `SpamoConfig` field | default | accepts |", "|---|---|---|---|---|"]
    for f in settings():
        name = flag(f)
        if kind(f) == "bool":
            name = f"{name}/--no-{name[2:]}"
        alias = f.metadata.get("alias")
        default = f.metadata.get("default_text") or _shown(f.default)
        rows.append(f"| `{name}` | {f'`--{alias}`' if alias else ''} | `{f.name}` | {default} | {accepts(f)} |")
    for i, name, alias in PER_MODALITY_WEIGHTS:
        rows.append(f"| `{name}` | `--{alias}` | `modality_weights[{i}]` | (see `modality_weights`) | a number >= 0 |")
    return "\n".join(rows) + "\n"


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)
