"""How a setting is declared and checked: `setting(...)` puts a `SpamoConfig` field's flag, reference alias, help
and accepted values (a `Range`, or choices) into the field's metadata, and `_checked` normalises a value to the
field's plain type or refuses it in one line naming the setting (docs/data.md section 4: refusals before any work).

The CLI options, the reference-flag mapping and the README table are read off these declarations
(`spamo.config.spamo_config`, `spamo.config.table`), so what a setting accepts is written once.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

from spamo.errors import SpamoInputError


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
