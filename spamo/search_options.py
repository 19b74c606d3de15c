"""The options of a search (`spamo tune`) and of an evaluation (`spamo evaluate --best`), checked before Ray, Optuna
and torch are imported.

Those imports take seconds (benchmarks/results/cli_startup.md), and the developer guide asks for a refusal of bad
input in one line before any expensive work (docs/data.md section 4). So everything a refusal can be decided on
without the data is decided here, in a module that imports only the light parts of spamo: the numeric options
against their ranges (`spamo.config.Range`, the words of `spamo run`'s refusals), the scheduler and metric names
(`spamo.choices`), the dataset key or folder and the data type, the run name, the search-space file (read and
checked by `search.space`, which needs no Optuna for it), the syntax of `--address` (and, for HOST:PORT, that
something listens there: a socket, no Ray), the output and storage folders, a run name already taken (or, for
`--resume` / `--rescore`, not there), the run folders to evaluate. What needs Ray or the data (`--address auto`, the
cluster's token, the data's own problems) is refused later, still before anything is written. `cli.py` calls these first; `evaluation.evaluate.check_request`
goes through `check_evaluate_options` too (`search.tuning` still checks a request's numbers itself, by the same
rules).
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Mapping

from search.ray_cluster import reachable
from search.space import load_space, space_path
from spamo.choices import TUNE_METRICS, TUNE_SCHEDULERS
from spamo.config import Range, SpamoConfig
from spamo.datasets import check_dataset_key
from spamo.errors import SpamoInputError
from spamo.io import check_output_folder

__all__ = ["TUNE_LIMITS", "EVALUATE_LIMITS", "check_tune_options", "check_named_run", "check_evaluate_options",
           "check_address"]

# The tune-run folder format, as far as a refusal needs it: the file that makes a folder a run, the default root of
# the runs, and where a run's folder is (`run_dir_of`). search.run_folder owns the format (it imports the pipeline,
# hence torch); tests/test_tune_refusals.py checks these against it.
RUN_FILE = "tune_run.toml"
RESULTS_ROOT = Path("results/tune")

# option (a TuneRequest / EvaluateRequest field) -> (its flag, the range it must be in, whether it is an integer);
# None means "not given" and is left alone
TUNE_LIMITS: dict[str, tuple[str, Range, bool]] = {
    "num_samples": ("--num-samples", Range(1), True),
    "epochs": ("--epochs", Range(1), True),
    "cpus_per_trial": ("--cpus-per-trial", Range(0, low_open=True), False),
    "gpus_per_trial": ("--gpus-per-trial", Range(0), False),
    "max_concurrent": ("--max-concurrent", Range(1), True),
    "report_every": ("--report-every", Range(1, note="epochs"), True),
    "max_retries": ("--max-retries", Range(0), True),
    "checkpoint_every": ("--checkpoint-every", Range(1, note="epochs"), True),
}
EVALUATE_LIMITS: dict[str, tuple[str, Range, bool]] = {
    "top_k": ("--top-k", Range(1), True),
    "seeds": ("--seeds", Range(1), True),
    "num_cpus": ("--num-cpus", Range(1), True),
    "cpus_per_run": ("--cpus-per-run", Range(0, low_open=True), False),
    "gpus_per_run": ("--gpus-per-run", Range(0), False),
}


def check_tune_options(options: Mapping[str, Any]) -> None:
    """Refuse, in one line, an option of a new `spamo tune` search that is wrong whatever the data holds.

    `options` are `search.run_folder.TuneRequest` fields (`name` and any others).
    """
    _check_given(options)
    name = options.get("name")
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise SpamoInputError("--name", f"'{name}' is not a usable folder name")
    run_dir = run_dir_of(name, options.get("storage"), options.get("results_root"))
    if (run_dir / RUN_FILE).exists():
        raise SpamoInputError("--name", f"a run named '{name}' exists in {run_dir}: continue it with --resume {name} "
                                        "or pick another --name")
    _check_data(options.get("dataset"), options.get("data_dir"))
    # the run's base config (search.run_folder.load_prepared): its seed, K, epochs and data type, checked as settings
    SpamoConfig(**{key: options[key] for key in ("seed", "n_clusters", "epochs", "data_type")
                   if options.get(key) is not None})
    load_space(space_path(options.get("dataset"), options.get("space")))


def check_named_run(flag: str, options: Mapping[str, Any]) -> None:
    """`spamo tune --resume NAME` or `--rescore NAME` (`flag`): the options given (`name` and any others of
    `TuneRequest`), and that a run of that name is there to continue or score again."""
    _check_given(options)
    run_dir = run_dir_of(options["name"], options.get("storage"), options.get("results_root"))
    if not (run_dir / RUN_FILE).is_file():
        raise SpamoInputError(flag, f"no tune run named '{options['name']}' in {run_dir.parent}")


def run_dir_of(name: str, storage: str | Path | None, results_root: str | Path | None = None) -> Path:
    """A run's folder: STORAGE/NAME for local storage, else (no storage, or a URI that Ray writes to) the results
    root's NAME on this machine."""
    if storage and not _is_uri(storage):
        return Path(storage).resolve() / name
    return Path(results_root or RESULTS_ROOT).resolve() / name


def check_evaluate_options(options: Mapping[str, Any]) -> None:
    """Refuse, in one line, a `spamo evaluate --best` option that is wrong whatever the tune runs hold.

    `options` are `evaluation.evaluate.EvaluateRequest` fields (any subset).
    """
    _check_numbers(options, EVALUATE_LIMITS)
    if options.get("analyze"):
        for path in options.get("gene_sets") or ():
            if not Path(path).is_file():
                raise SpamoInputError(path, "gene-set file not found")
    check_address(options.get("address"))
    if options.get("out") is not None:
        check_output_folder(options["out"])
    for path in options.get("runs") or ():
        if not Path(path).is_dir():
            raise SpamoInputError(path, "tune run folder not found")


def check_address(address: str | None) -> None:
    """`auto`, HOST:PORT or ray://HOST:PORT, and for the last two something listening there (`auto` is looked up,
    and the cluster's token tried, by `search.ray_cluster.resolve` once Ray is imported)."""
    if address is not None and address != "auto":
        reachable(address)


def _check_given(options: Mapping[str, Any]) -> None:
    """What every form of `spamo tune` checks of the options it was given."""
    _check_numbers(options, TUNE_LIMITS)
    _check_name(options.get("scheduler"), TUNE_SCHEDULERS, "--scheduler")
    _check_name(options.get("metric"), TUNE_METRICS, "--metric")
    check_address(options.get("address"))
    storage = options.get("storage")
    if storage and not _is_uri(storage):  # a URI (s3://, gs://) is Ray's to check
        check_output_folder(storage, option="--storage")


def _is_uri(storage: str | Path) -> bool:
    return "://" in str(storage)


def _check_numbers(options: Mapping[str, Any], limits: dict[str, tuple[str, Range, bool]]) -> None:
    for key, (flag, bounds, integer) in limits.items():
        value = options.get(key)
        if value is None:
            continue
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not number or (integer and not float(value).is_integer()) or value not in bounds:
            raise SpamoInputError(flag, f"must be {'an integer' if integer else 'a number'} {bounds.text()}, "
                                        f"got {value!r}")


def _check_name(value: str | None, allowed: tuple[str, ...], flag: str) -> None:
    if value is not None and value not in allowed:
        raise SpamoInputError(flag, f"'{value}' is not one of {', '.join(allowed)}")


def _check_data(dataset: str | None, data_dir: str | Path | None) -> None:
    """One source of data: a known dataset key (or simulation preset), or a folder (or .h5mu file) that exists."""
    if dataset is not None and data_dir is not None:
        raise SpamoInputError("--dataset", "give either --dataset or --data-dir, not both")
    if dataset is None and data_dir is None:
        raise SpamoInputError("--dataset", "give --dataset hln|mb|sim or --data-dir DIR --data-type TYPE")
    if dataset is not None:
        check_dataset_key(dataset)
    elif not Path(data_dir).exists():
        raise SpamoInputError(data_dir, "folder not found")
