"""The named, seeded simulations of the selection benchmark: one `Preset` per table of
configs/benchmarks/selection.toml (size, seed, layout and `Difficulty`, docs/data.md section 3), checked when the
file is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from spamo.errors import SpamoInputError
from spamo.io import read_toml
from spamo.package_data import CONFIG_DIR
from spamo.simulate.difficulty import DEFAULT_DIFFICULTY, Difficulty
from spamo.simulate.generate import Simulation, check_difficulty, check_simulation_args, simulate, write_simulation


PRESET_FILE = CONFIG_DIR / "benchmarks" / "selection.toml"


PRESET_KEYS = {"layout", "n_spots", "seed", "n_domains", "grid", "description"}


DIFFICULTY_KEYS = set(Difficulty.__dataclass_fields__)


@dataclass(frozen=True)
class Preset:
    """One named, seeded simulation of the selection benchmark (a table of configs/benchmarks/selection.toml)."""

    name: str
    layout: str
    n_spots: int
    seed: int
    n_domains: int = 5
    grid: str = "square"
    description: str = ""
    difficulty: Difficulty = DEFAULT_DIFFICULTY

    def simulate(self, n_features: dict | None = None) -> Simulation:
        return simulate(self.n_spots, self.seed, self.n_domains, self.layout, self.grid, n_features,
                        difficulty=self.difficulty)

    def write(self, out_dir: str | Path, progress: Callable[[int], None] | None = None) -> Path:
        return write_simulation(out_dir, self.n_spots, self.seed, self.layout, self.grid, self.n_domains,
                                progress=progress, difficulty=self.difficulty)


def _preset_from_table(name: str, table: dict, where: Path) -> Preset:
    if not isinstance(table, dict):
        raise SpamoInputError(where, f"[{name}] must be a table")
    unknown = set(table) - PRESET_KEYS - DIFFICULTY_KEYS
    if unknown:
        raise SpamoInputError(where, f"[{name}] has unknown key '{sorted(unknown)[0]}'")
    for key in ("layout", "n_spots", "seed"):
        if key not in table:
            raise SpamoInputError(where, f"[{name}] misses '{key}'")
    hard = {k: table[k] for k in DIFFICULTY_KEYS if k in table}
    if "blind" in hard:
        hard["blind"] = {m: [tuple(p) for p in pairs] for m, pairs in hard["blind"].items()}
    if hard.get("confusable") is not None:
        hard["confusable"] = tuple(hard["confusable"])
    preset = Preset(name=name, layout=table["layout"], n_spots=int(table["n_spots"]), seed=int(table["seed"]),
                    n_domains=int(table.get("n_domains", 5)), grid=table.get("grid", "square"),
                    description=table.get("description", ""), difficulty=Difficulty(**hard))
    try:
        check_simulation_args(preset.n_spots, preset.n_domains, preset.layout, preset.grid)
        check_difficulty(preset.difficulty, preset.layout, preset.n_domains)
    except SpamoInputError as exc:
        raise SpamoInputError(where, f"[{name}] {exc}") from None
    return preset


def load_presets(path: str | Path = PRESET_FILE) -> dict[str, Preset]:
    """Every preset of the benchmark file, in file order."""
    path = Path(path)
    raw = read_toml(path, "simulation preset file")
    return {name: _preset_from_table(name, table, path) for name, table in raw.items()}


def get_preset(name: str, path: str | Path = PRESET_FILE) -> Preset:
    presets = load_presets(path)
    if name not in presets:
        raise SpamoInputError("--preset", f"unknown preset '{name}' (known: {', '.join(presets)})")
    return presets[name]


def is_preset(name: str, path: str | Path = PRESET_FILE) -> bool:
    """Whether `name` is a preset of the benchmark file (False when the file is absent)."""
    return Path(path).is_file() and name in load_presets(path)
