"""Search spaces: a TOML file of distributions, fixed settings and the published configuration.

A space file has three tables (see `configs/search/*.toml`):

- ``[space]``: one entry per searched setting, ``name = { type = "...", ... }`` with the types of `DISTRIBUTIONS`
  (``loguniform``/``uniform`` with ``low``/``high``, ``int``/``logint`` with inclusive ``low``/``high`` and an optional
  ``step``, ``choice`` with ``values``). Names are `SpamoConfig` names (or the reference's flag names);
  per-modality reconstruction weights are ``modality_weight_0``, ``modality_weight_1``, ...
- ``[fixed]`` (optional): settings every trial shares.
- ``[published]`` (optional): the published configuration, evaluated as the first trial; a searched setting it
  leaves out takes the data type's default (so the generic space starts from the published defaults). Values
  outside a searched range are allowed (Optuna evaluates them as given).

The space becomes a dict of Optuna distributions, which Ray Tune's `OptunaSearch` samples from. Reading and checking
a file needs no Optuna: each searched setting is first a plain `Distribution`, turned into Optuna's only when the
search asks for `SearchSpace.distributions`, so that `spamo tune` refuses a bad space file before Ray, Optuna and
torch are imported (seconds; cli.py, benchmarks/results/cli_startup.md).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from spamo.config import REFERENCE_FLAGS, SpamoConfig
from spamo.errors import SpamoInputError
from spamo.io import read_toml
from spamo.package_data import CONFIG_DIR

SPACE_DIR = CONFIG_DIR / "search"
DEFAULT_SPACE = "default"


@dataclass(frozen=True)
class Distribution:
    """One searched setting, checked: a float or integer range (`low`, `high` inclusive, `step`, `log`) or a choice
    among `values`. `to_optuna()` is the Optuna distribution the sampler gets."""

    kind: str  # "float", "int" or "choice": a key of OPTUNA_KINDS
    low: float | int | None = None
    high: float | int | None = None
    step: int = 1
    log: bool = False
    values: tuple = ()

    def to_optuna(self):
        return OPTUNA_KINDS[self.kind](self)


def _optuna():
    # imported on first use: a space is read and checked before Optuna is loaded (see the module docstring)
    import optuna.distributions

    return optuna.distributions


# Distribution.kind -> the Optuna distribution of the same values
OPTUNA_KINDS: dict[str, Callable[[Distribution], Any]] = {
    "float": lambda d: _optuna().FloatDistribution(d.low, d.high, log=d.log),
    "int": lambda d: _optuna().IntDistribution(d.low, d.high, step=d.step, log=d.log),
    "choice": lambda d: _optuna().CategoricalDistribution(d.values),
}


def _float_range(spec: dict, where: str, log: bool) -> Distribution:
    low, high = float(_need(spec, "low", where)), float(_need(spec, "high", where))
    if not low < high or (log and low <= 0):
        raise SpamoInputError(where, f"needs 0 < low < high for a log scale (got {low}, {high})" if log
                              else f"needs low < high (got {low}, {high})")
    return Distribution("float", low, high, log=log)


def _int_range(spec: dict, where: str, log: bool) -> Distribution:
    low, high, step = int(_need(spec, "low", where)), int(_need(spec, "high", where)), int(spec.get("step", 1))
    if not low <= high or step < 1 or (log and (low < 1 or step != 1)):
        raise SpamoInputError(where, f"needs low <= high, step >= 1 (and low >= 1, step 1 on a log scale); "
                                     f"got low={low}, high={high}, step={step}")
    return Distribution("int", low, high, step=step, log=log)


def _choice(spec: dict, where: str) -> Distribution:
    values = _need(spec, "values", where)
    if not isinstance(values, list) or not values:
        raise SpamoInputError(where, "'values' must be a non-empty list")
    return Distribution("choice", values=tuple(values))


# distribution type name -> builder (spec table, where) -> Distribution
DISTRIBUTIONS: dict[str, Callable[[dict, str], Distribution]] = {
    "loguniform": lambda spec, where: _float_range(spec, where, log=True),
    "uniform": lambda spec, where: _float_range(spec, where, log=False),
    "int": lambda spec, where: _int_range(spec, where, log=False),
    "logint": lambda spec, where: _int_range(spec, where, log=True),
    "choice": _choice,
}


def _need(spec: dict, key: str, where: str) -> Any:
    if key not in spec:
        raise SpamoInputError(where, f"missing '{key}'")
    return spec[key]


@dataclass
class SearchSpace:
    """Searched settings, fixed settings and the first point, all keyed by spamo setting names."""

    path: Path
    searched: dict[str, Distribution]
    fixed: dict[str, Any] = field(default_factory=dict)
    published: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def distributions(self) -> dict:
        """The searched settings as Optuna distributions (what the sampler asks), in the file's order."""
        return {name: dist.to_optuna() for name, dist in self.searched.items()}

    def discrete_values(self, name: str, base: SpamoConfig) -> set:
        """The values a trial's `name` setting can take when they are few: a choice's, the fixed one, else the base
        config's; empty for a numeric range."""
        dist = self.searched.get(name)
        if dist is not None:
            return set(dist.values) if dist.kind == "choice" else set()
        return {self.fixed.get(name, getattr(base, name))}

    def first_points(self, base: SpamoConfig) -> list[dict]:
        """The published configuration over the searched names; a name it leaves out takes the resolved base
        config's value (the data type's published default)."""
        point = {}
        for name, dist in self.searched.items():
            if name in self.published:
                value = self.published[name]
            elif name.startswith("modality_weight_"):
                value = base.modality_weights[int(name.rsplit("_", 1)[1])]
            else:
                value = getattr(base, name)
            if dist.kind == "choice" and value not in dist.values:
                return []  # the default lies outside the user's choices: let the sampler start
            point[name] = value
        return [point]

    def for_data(self, n_modalities: int, epochs: int | None) -> "SearchSpace":
        """Drop weights of modalities the data lacks; an epoch budget given on the command line fixes `epochs`."""
        def keep(name: str) -> bool:
            if name.startswith("modality_weight_"):
                return int(name.rsplit("_", 1)[1]) < n_modalities
            return not (epochs and name == "epochs")

        fixed = {k: v for k, v in self.fixed.items() if keep(k)}
        if epochs:
            fixed["epochs"] = int(epochs)
        return SearchSpace(self.path, {k: v for k, v in self.searched.items() if keep(k)}, fixed,
                           {k: v for k, v in self.published.items() if keep(k)})

    def max_epochs(self, default: int) -> int:
        """The largest epoch count any trial can train for (ASHA's budget)."""
        if "epochs" in self.fixed:
            return int(self.fixed["epochs"])
        dist = self.searched.get("epochs")
        if dist is not None and dist.kind == "int":
            return int(dist.high)
        if dist is not None and dist.kind == "choice":
            return int(max(dist.values))
        return int(self.published.get("epochs", default))


def space_path(dataset: str | None, space_file: str | Path | None) -> Path:
    """The user's `--space` file, else the dataset's default space, else the generic one."""
    if space_file is not None:
        return Path(space_file)
    named = SPACE_DIR / f"{dataset}.toml" if dataset else None
    return named if named is not None and named.is_file() else SPACE_DIR / f"{DEFAULT_SPACE}.toml"


def _canonical(name: str) -> str:
    return REFERENCE_FLAGS.get(name, name)


def _check_names(names, where: Path, table: str) -> None:
    known = set(SpamoConfig.__dataclass_fields__)
    for name in names:
        canonical = _canonical(name)
        if canonical not in known and not canonical.startswith("modality_weight_"):
            raise SpamoInputError(where, f"[{table}] has unknown setting '{name}'")


def load_space(path: str | Path) -> SearchSpace:
    """Read and check a space file; every problem is one `SpamoInputError` naming the file."""
    path = Path(path)
    raw = read_toml(path, "search space file")
    unknown_tables = set(raw) - {"space", "fixed", "published"}
    if unknown_tables:
        raise SpamoInputError(path, f"unknown table [{sorted(unknown_tables)[0]}] (use [space], [fixed], [published])")
    raw_space = raw.get("space", {})
    if not raw_space:
        raise SpamoInputError(path, "[space] is empty: nothing to search")
    for table in ("space", "fixed", "published"):
        _check_names(raw.get(table, {}), path, table)
    distributions = {}
    for name, spec in raw_space.items():
        where = f"{path}: [space] {name}"
        if not isinstance(spec, dict) or spec.get("type") not in DISTRIBUTIONS:
            raise SpamoInputError(where, f"needs type = one of {', '.join(DISTRIBUTIONS)}")
        distributions[_canonical(name)] = DISTRIBUTIONS[spec["type"]](spec, where)
    fixed = {_canonical(k): v for k, v in raw.get("fixed", {}).items()}
    published = {_canonical(k): v for k, v in raw.get("published", {}).items()}
    for name, value in published.items():
        dist = distributions.get(name)
        if dist is not None and dist.kind == "choice" and value not in dist.values:
            raise SpamoInputError(path, f"[published] {name} = {value!r} is not one of the choices {dist.values}")
    return SearchSpace(path, distributions, fixed, published)


def trial_config(base: SpamoConfig, fixed: dict, sampled: dict, n_modalities: int, n_spots: int) -> SpamoConfig:
    """The resolved config of one trial: the run's base config, then the fixed settings, then the sampled ones."""
    values = base.to_dict()
    values.update(fixed)
    values.update(sampled)
    return SpamoConfig.from_dict(values, where="search space").resolve(n_modalities, n_spots)
