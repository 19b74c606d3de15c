"""The README's settings table, generated from the declarations (tests/test_config.py checks the README holds it),
so the manual lists every setting of docs/method.md sections 2-6 with its flag, reference name, default and what it
accepts.
"""

from __future__ import annotations

from typing import Any

from spamo.config.fields import accepts, flag, kind
from spamo.config.spamo_config import PER_MODALITY_WEIGHTS, settings


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
