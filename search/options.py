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
cluster's token, the data's own problems) is refused later, still before anything is written. `cli.py` and the Python API (`spamo.api_search`) call these
first; `evaluation.evaluate.check_request` goes through `check_evaluate_options` too, and `search.tuning` checks a
request handed to it directly, or read back from a run folder, by the same rules (`check_tune_request`), so
each refusal has one wording wherever it is met.

The search layer owns these options, as it owns the tune-run folder format (`search.run_folder`, which is light too:
its names and `run_folder` come from there, not copies).
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Mapping

from search.ray_cluster import reachable
from search.run_folder import RESULTS_ROOT, RUN_FILE, TuneRequest, is_uri, read_request, run_folder
from search.space import load_space, space_path
from spamo.choices import TUNE_METRICS, TUNE_SCHEDULERS
from spamo.config import Range, SpamoConfig
from spamo.datasets import check_dataset_key
from spamo.errors import SpamoInputError
from spamo.io import check_output_folder

__all__ = ["TUNE_LIMITS", "EVALUATE_LIMITS", "check_tune_options", "check_named_run", "check_evaluate_options",
           "check_address", "check_tune_numbers", "check_tune_choices", "check_run_name", "check_tune_request",
           "check_stored_request"]

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
    check_run_name(name)
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
    check_stored_request(run_dir, check_paths=flag == "--resume")


def check_stored_request(run_dir: str | Path, check_paths: bool = True) -> TuneRequest:
    """The request a run folder records (its tune_run.toml), by the rules `spamo tune` applies to the options
    themselves: the file may have been edited by hand, or written by another spamo, and a search resumed from a
    value the command line would refuse (say `num_samples = 0`) would fail late, inside Ray. A refused value is one
    line naming the file and the field's option; `check_paths`: also that its data and space file are still there
    (`search.run_folder.read_request`)."""
    request = read_request(run_dir, check_paths=check_paths)
    try:
        check_tune_request(request)
    except SpamoInputError as exc:
        raise SpamoInputError(Path(run_dir) / RUN_FILE, f"{exc.where.lstrip('-').replace('-', '_')} "
                                                        f"{exc.problem}") from None
    return request


def check_tune_request(request: TuneRequest) -> None:
    """A whole `TuneRequest` (handed to `search.tuning` directly, or read from a run folder): its numbers, its
    choices and its name, in the words of the options' own refusals."""
    check_tune_numbers(request)
    check_tune_choices(request)
    check_run_name(request.name)


def run_dir_of(name: str, storage: str | Path | None, results_root: str | Path | None = None) -> Path:
    """A run's folder (`search.run_folder.run_folder`), the results root defaulting when the option is not given."""
    return run_folder(name, storage, results_root or RESULTS_ROOT)


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
    check_tune_numbers(options)
    check_tune_choices(options)
    check_address(options.get("address"))
    storage = options.get("storage")
    if storage and not is_uri(storage):  # a URI (s3://, gs://) is Ray's to check
        check_output_folder(storage, option="--storage")


def check_tune_numbers(request: Any) -> None:
    """The numeric options of a search (`TUNE_LIMITS`), each against its range; `request` is a `TuneRequest` or a
    mapping of some of its fields (an option not given, or None, is left alone)."""
    _check_numbers(_fields(request, TUNE_LIMITS), TUNE_LIMITS)


def check_tune_choices(request: Any) -> None:
    """The scheduler and the metric of a search (a `TuneRequest` or a mapping of its fields), when given, by name."""
    fields = _fields(request, ("scheduler", "metric"))
    _check_name(fields.get("scheduler"), TUNE_SCHEDULERS, "--scheduler")
    _check_name(fields.get("metric"), TUNE_METRICS, "--metric")


def check_run_name(name: str | None) -> None:
    """A run's name is its folder's name: not empty, no path separator, not hidden."""
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise SpamoInputError("--name", f"'{name}' is not a usable folder name")


def _fields(request: Any, keys) -> dict[str, Any]:
    """The given `keys` of a mapping of options or of a request object (its attributes)."""
    if isinstance(request, Mapping):
        return {key: request.get(key) for key in keys}
    return {key: getattr(request, key, None) for key in keys}


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
