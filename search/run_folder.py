"""The tune-run folder format, in one place: what `spamo tune` writes and `spamo tune --resume` and `spamo evaluate`
read.

    <run folder>/tune_run.toml       the request ([tune]: a TuneRequest), paths absolute and resolved
                 trials.parquet      one row per trial (search.results.trials_frame)
                 best_config.toml    the best finished trial as a `spamo run --config` file
                 optuna.db           the Optuna study (SQLite)
                 ledger/<id>.json    one record per ended trial (search.ledger)

Everything that reads a request goes through `read_request` (a typed `TuneRequest`, refused in one line if the data
it names has moved) and loads the data through `load_prepared`, so a field added to `TuneRequest` reaches the search,
its resume and the evaluation alike.

The module itself stays light (no torch, Ray or Optuna): `search.options` takes the format's names and `run_folder`
from here to refuse a run name before those imports (seconds). Only the two functions that load data import the
pipeline, when they are called.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from spamo.config import SpamoConfig
from spamo.errors import SpamoInputError
from spamo.io import atomic_write_text, dump_toml, read_toml

if TYPE_CHECKING:
    import pandas as pd

RESULTS_ROOT = Path("results/tune")
RUN_FILE = "tune_run.toml"
TRIALS_FILE = "trials.parquet"
STUDY_FILE = "optuna.db"
BEST_FILE = "best_config.toml"
LEDGER_DIR = "ledger"
# Request fields that name local paths: stored absolute, checked to still exist when read back.
PATH_FIELDS = ("data_dir", "data_root", "space", "storage", "results_root")


@dataclass
class TuneRequest:
    """Everything `spamo tune` was asked for (saved in tune_run.toml, so a resume repeats it exactly)."""

    name: str
    num_samples: int
    dataset: str | None = None
    data_dir: str | None = None
    data_type: str | None = None
    data_root: str = "Data"
    n_clusters: int | None = None
    epochs: int | None = None
    space: str | None = None
    metric: str | None = None
    scheduler: str = "asha"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.25
    max_concurrent: int | None = None
    storage: str | None = None
    address: str | None = None
    report_every: int = 10
    seed: int = 2025
    results_root: str = str(RESULTS_ROOT)
    max_retries: int = 3  # retries of a trial lost for a system reason (worker or node died)
    checkpoint_every: int | None = None  # epochs between trial checkpoints (None: about every 60 s of training)
    reuse_workers: bool = True  # trials run one after another in the same Ray worker process
    layer: str | None = None  # read layers[layer] instead of .X (spamo.datasets.load)
    keep_embeddings: bool = True  # each finished trial keeps found.npz (domains, float16 fused embedding)

    def to_toml(self) -> dict:
        return {"tune": {k: v for k, v in dataclasses.asdict(self).items() if v is not None}}

    def resolved(self) -> "TuneRequest":
        """The same request with every local path absolute and resolved (a resume works from any folder)."""
        changes = {}
        for name in PATH_FIELDS:
            value = getattr(self, name)
            if value is not None and not is_uri(value):
                changes[name] = str(Path(value).expanduser().resolve())
        return dataclasses.replace(self, **changes)


def is_uri(storage: str | None) -> bool:
    return bool(storage) and "://" in str(storage)


def run_folder(name: str, storage: str | None, results_root: str | Path = RESULTS_ROOT) -> Path:
    """Local storage: the run folder is STORAGE/NAME (Ray's experiment folder too). URI storage: Ray writes there,
    the run's own files stay in results/tune/NAME on the driver."""
    if storage and not is_uri(storage):
        return Path(storage).resolve() / name
    return Path(results_root).resolve() / name


def ray_storage_path(storage: str | None, results_root: str | Path) -> str:
    if is_uri(storage):
        return str(storage)
    return str(Path(storage or results_root).resolve())


def experiment_path(request: TuneRequest, segment: int = 1) -> str:
    """Where Ray keeps the experiment state and the trial folders (checkpoints included) of one segment of the
    search (search.segments): the first at STORAGE/NAME (where a search of one segment, and every search before
    segments, always kept it), segment k > 1 inside it, at STORAGE/NAME/segment_00k."""
    first = f"{ray_storage_path(request.storage, request.results_root).rstrip('/')}/{request.name}"
    return first if segment == 1 else f"{first}/segment_{segment:03d}"


def write_request(run_dir: Path, request: TuneRequest) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / RUN_FILE, dump_toml(request.resolved().to_toml()))


def read_request(run_dir: str | Path, check_paths: bool = True) -> TuneRequest:
    """The request of a run folder; unknown fields, wrong types and data that is no longer where it was are refused
    in one line (a relative path, from an older spamo, is taken relative to the current folder as it was then)."""

    run_file = Path(run_dir) / RUN_FILE
    table = read_toml(run_file, "tune run file").get("tune")
    if not isinstance(table, dict):
        raise SpamoInputError(run_file, "has no [tune] table")
    known = {f.name: f for f in dataclasses.fields(TuneRequest)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise SpamoInputError(run_file, f"unknown field(s) {', '.join(unknown)} (written by another spamo version?)")
    for required in ("name", "num_samples"):
        if required not in table:
            raise SpamoInputError(run_file, f"has no '{required}'")
    for key, value in table.items():
        expected = {"str": str, "int": int, "float": (int, float), "bool": bool}
        kind = str(known[key].type).replace(" | None", "")
        if kind in expected and not isinstance(value, expected[kind]) or (kind == "int" and isinstance(value, bool)):
            raise SpamoInputError(run_file, f"'{key}' should be a {kind}, got {value!r}")
    request = TuneRequest(**table)
    if check_paths:
        _check_paths(request, run_file)
    return request


def _check_paths(request: TuneRequest, run_file: Path) -> None:
    """The data, the space file and the storage a run names must still be where they were when it started."""
    needed = [("data_dir", request.data_dir), ("space", request.space)]
    if request.dataset and not request.data_dir:
        needed.append(("data_root", request.data_root))
    if request.storage and not is_uri(request.storage):
        needed.append(("storage", request.storage))
    for name, value in needed:
        if value is not None and not Path(value).exists():
            raise SpamoInputError(run_file, f"{name} {value} no longer exists (moved or deleted since the run "
                                            f"started): put it back, or edit '{name}' in this file")


def load_prepared(request: TuneRequest, data=None):
    """Load (unless `data` is given) and preprocess the data a request names, as the search did:
    (prepared data, base config)."""

    from spamo import pipeline  # torch: imported when data is loaded, not by the light readers of the format

    data = load_data(request) if data is None else data
    base = SpamoConfig(seed=request.seed, n_clusters=request.n_clusters, epochs=request.epochs)
    return pipeline.prepare(data, base)


def load_data(request: TuneRequest):
    """The raw data a request names (MultiOmicsData)."""
    from spamo import pipeline  # torch (see load_prepared)

    return pipeline.load_data(dataset=request.dataset, data_dir=request.data_dir, data_type=request.data_type,
                              data_root=request.data_root, n_clusters=request.n_clusters, layer=request.layer)


@dataclass
class TuneRun:
    """One tune run folder, read: its request and its trials table."""

    path: Path
    request: TuneRequest
    trials: "pd.DataFrame"

    @property
    def name(self) -> str:
        return self.request.name or self.path.name

    @property
    def metric(self) -> str:
        values = self.trials["metric"].dropna().unique() if "metric" in self.trials else []
        return str(values[0]) if len(values) else str(self.request.metric or "ari")

    @property
    def dataset(self) -> str:
        values = self.trials["dataset"].dropna().unique() if "dataset" in self.trials else []
        return str(values[0]) if len(values) else self.name

    @property
    def truth_sha256(self) -> str | None:
        column = self.trials.get("ground_truth_sha256")
        values = column.dropna().unique() if column is not None else []
        return str(values[0]) if len(values) else None


def find_runs(paths: list[str | Path] | None, root: str | Path = RESULTS_ROOT) -> list[Path]:
    """The run folders named, or every run folder under `root` when none is named."""
    if paths:
        return [Path(p) for p in paths]
    root = Path(root)
    found = sorted(p.parent for p in root.glob(f"*/{RUN_FILE}")) if root.is_dir() else []
    if not found:
        raise SpamoInputError("--runs", f"no tune runs under {root} (name run folders with --runs DIR)")
    return found


def read(path: str | Path) -> TuneRun:
    """Read one run folder; a folder that is not a finished tune run is refused with one line."""
    import pandas as pd

    path = Path(path)
    if not path.is_dir():
        raise SpamoInputError(path, "tune run folder not found")
    run_file, trials_file = path / RUN_FILE, path / TRIALS_FILE
    if not run_file.is_file():
        raise SpamoInputError(path, f"not a tune run folder (no {RUN_FILE})")
    if not trials_file.is_file():
        raise SpamoInputError(path, f"the tune run has no {TRIALS_FILE} (did it finish?)")
    request = read_request(path)
    try:
        trials = pd.read_parquet(trials_file)
    except Exception as exc:  # noqa: BLE001 - any unreadable table is one line for the user
        raise SpamoInputError(trials_file, f"cannot read the trials table ({type(exc).__name__})") from None
    missing = [c for c in ("status", "config_json", "trial_id") if c not in trials]
    if missing:
        raise SpamoInputError(trials_file, f"missing column(s) {', '.join(missing)}")
    return TuneRun(path=path.resolve(), request=request, trials=trials)
