"""`spamo reproduce`: replay the reference release's run.sh on the authors' datasets and compare with its numbers.

The reference's run.sh trains `main.py` once per dataset (HLN, Mouse_Brain, Simulation) with fixed flags and scores
each labels.txt with `cal_matrics.py`. The flags it passes are not always the settings its trainers use (the
3-modality trainer ignores the weights, k, alpha and seed flags; the 2-modality one values feature edges by
correlation distance): the `[published]` profile of `configs/search/<key>.toml` holds what really ran
(docs/method.md sections 7-8). `published_config(key)` reads that profile; `reproduce(...)` runs it on a data root
and writes one ordinary run folder per dataset (labels.txt in the layout's order, metrics.txt in the reference's
exact layout, run.toml, ...), and returns our scores beside the published ones (configs/published.toml), with the
hash of the ground truth they were scored against and the clustering backend that produced them, because a number
is only comparable when both are the same.

A dataset folder that is missing is refused before anything runs, naming the command that fetches it; `sim` is
never replaced by a generated simulation here (that is `spamo data simulate`, whose numbers are not the
published ones: `Reproduced.same_data` says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from spamo import datasets, pipeline
from spamo.clustering import r_available
from spamo.config import SpamoConfig
from spamo.datasets import dataset_registry, detect_layout, get_dataset_spec
from spamo.errors import SpamoInputError
from spamo.io import atomic_write_text, dump_toml, read_toml
from spamo.package_data import CONFIG_DIR

PROFILE_DIR = CONFIG_DIR / "search"
PUBLISHED_FILE = CONFIG_DIR / "published.toml"
PROFILES = ("published",)  # the value of --reproduce
DATASET_KEYS = ("hln", "mb", "sim")  # the datasets run.sh reproduces, in its order
SHOWN = (("ari", "ARI"), ("nmi", "NMI"), ("ami", "AMI"), ("avg", "Avg."))  # the columns of the published table
SUMMARY_FILE = "reproduce.toml"


# ------------------------------------------------------------------------------------------------ profiles
def profile_path(key: str) -> Path:
    return PROFILE_DIR / f"{key}.toml"


def published_config(key: str, profile: str = "published") -> SpamoConfig:
    """The settings the reference really trained `key` with (the `[published]` table of its search space)."""
    if profile not in PROFILES:
        raise SpamoInputError("--reproduce", f"'{profile}' is not a known profile (known: {', '.join(PROFILES)})")
    path = profile_path(key)
    if not path.is_file():
        raise SpamoInputError("--reproduce", f"no published profile for '{key}' (profiles exist for "
                                             f"{', '.join(DATASET_KEYS)})")
    table = read_toml(path).get("published")
    if not table:
        raise SpamoInputError(path, "has no [published] profile")
    return SpamoConfig.from_dict(table, where=f"{path} [published]")


def profile_key(dataset: str | None = None, data_dir: str | Path | None = None, data_type: str | None = None) -> str:
    """Which dataset's profile `spamo run --reproduce published` replays: the dataset key, else the known layout
    of the folder, else the one published dataset of that data type."""

    if dataset is not None:
        get_dataset_spec(dataset)
        return dataset
    if data_dir is not None and Path(data_dir).is_dir() and data_type is None:
        spec = detect_layout(data_dir)
        if spec is not None:
            return spec.key
    matches = [key for key, spec in dataset_registry().items() if data_type is not None and spec.data_type == data_type]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(f"{key} ({spec.data_type})" for key, spec in dataset_registry().items())
    raise SpamoInputError("--reproduce", f"no published profile for data type {data_type or '(none given)'} "
                                         f"(profiles: {known})")


# ------------------------------------------------------------------------------------------------ reproducing
@dataclass
class Reproduced:
    """One dataset replayed: where its run folder is, our scores, the published ones, and what they rest on."""

    key: str
    run_dir: Path
    scores: dict  # machine-named scores (ari, nmi, ami, avg, ...)
    published: dict  # the published table entry (ari, nmi, ami, avg, spots, ...)
    truth_sha256: str | None
    truth_path: str | None
    backend: str
    n_spots: int
    same_data: bool
    note: str
    config: dict = field(default_factory=dict)


def check_folders(keys: list[str], data_root: str | Path) -> None:
    """Refuse, before any work, a dataset whose folder is missing (one line naming the fetch command)."""

    for key in keys:
        folder = get_dataset_spec(key).path(data_root)
        if not folder.is_dir():
            raise SpamoInputError(folder, f"dataset folder not found; fetch it with `spamo data download {key}` "
                                          f"(or point --data-root at the folder holding {folder.name}/)")


def selected_keys(which: str) -> list[str]:
    if which == "all":
        return list(DATASET_KEYS)
    if which not in DATASET_KEYS:
        raise SpamoInputError("dataset", f"'{which}' is not one of {', '.join(DATASET_KEYS)} or all")
    return [which]


def reproduce(keys: list[str], data_root: str | Path = "Data", out: str | Path = "results/reproduce",
              epochs: int | None = None, cluster_method: str | None = None, draw: bool = True,
              progress: bool = False, log: Callable[[str], None] | None = None) -> list[Reproduced]:
    """Run each dataset's published profile and write `<out>/<folder>/` (a run folder) and `<out>/reproduce.toml`.

    `epochs` and `cluster_method` depart from the profile (short checks; machines without R): the summary and
    each run.toml say what was used.
    """

    check_folders(keys, data_root)
    published = read_toml(PUBLISHED_FILE)
    configs = {}
    for key in keys:  # every profile is read and checked before the first training starts
        config = published_config(key)
        if epochs:
            config = config.replace(epochs=int(epochs))
        if cluster_method:
            config = config.replace(cluster_method=cluster_method)
        configs[key] = config
    out = Path(out)
    done: list[Reproduced] = []
    for key in keys:
        spec = datasets.get_dataset_spec(key)
        if log:
            log(f"{key}: loading {spec.path(data_root)}")
        data = datasets.load(key, data_root=data_root)
        result = pipeline.run(data, configs[key], progress=progress)
        run_dir = pipeline.write_outputs(result, data, out / spec.folder, draw=draw)
        truth = pipeline.provenance(data)["ground_truth"] or {}
        entry = dict(published.get(key, {}))
        same, note = same_data(data, result.prepared.n_spots, entry)
        done.append(Reproduced(
            key=key, run_dir=Path(run_dir), scores=dict(result.scores), published=entry,
            truth_sha256=truth.get("sha256"), truth_path=truth.get("path"), backend=backend_name(result.config),
            n_spots=result.prepared.n_spots, same_data=same, note=note, config=result.config.to_dict()))
        if log:
            log(f"{key}: ARI {result.scores.get('ari', float('nan')):.6f} -> {run_dir}")
    atomic_write_text(out / SUMMARY_FILE, dump_toml(summary_record(done)))
    return done


def same_data(data, n_spots: int, entry: dict) -> tuple[bool, str]:
    """Whether the published numbers are about this data: not spamo's simulation, and the published spot count."""
    if any("spamo_simulation" in adata.uns for adata in data.modalities.values()):
        return False, "spamo's simulated stand-in, not the authors' data: the published numbers do not apply"
    if entry and int(entry.get("spots", -1)) != int(n_spots):
        return False, f"{n_spots} spots here, {entry.get('spots')} published: not the same data"
    return True, "the authors' dataset (same spot count)"


def backend_name(config: SpamoConfig) -> str:
    """The clustering that produced the labels, with versions where R is involved (mclust's EEE fit is what the
    published numbers used; scikit-learn's tied GMM is the same model with another initialisation)."""

    method = config.cluster_method
    if method == "auto":
        method = "mclust" if r_available() else "gmm"
    text = f"{method} on PCA-{config.n_pcs}"
    if method == "mclust":
        text = f"mclust EEE on PCA-{config.n_pcs} ({_r_versions()})"
    elif method == "gmm":
        text += " (scikit-learn GaussianMixture, tied covariance; not the published mclust)"
    return text


def _r_versions() -> str:
    try:
        import rpy2.robjects as ro
        from rpy2.robjects.conversion import localconverter

        with localconverter(ro.default_converter):
            r_version = ro.r('paste(R.version$major, R.version$minor, sep=".")')[0]
            mclust_version = ro.r('as.character(utils::packageVersion("mclust"))')[0]
        return f"R {r_version}, mclust {mclust_version}"
    except Exception:  # noqa: BLE001 - the versions are information, not a requirement
        return "R versions unknown"


def summary_record(done: list[Reproduced]) -> dict:
    record: dict = {}
    for item in done:
        record[item.key] = {
            "run_dir": str(item.run_dir), "n_spots": item.n_spots, "backend": item.backend,
            "ground_truth_sha256": item.truth_sha256 or "", "ground_truth": item.truth_path or "",
            "same_data": item.same_data, "note": item.note,
            "ours": {name: float(item.scores[name]) for name, _ in SHOWN if name in item.scores},
            "published": {name: float(item.published[name]) for name, _ in SHOWN if name in item.published},
        }
    return record


def comparison_text(done: list[Reproduced]) -> str:
    """What `spamo reproduce` prints: our ARI/NMI/AMI/Avg. beside the published ones, then per dataset the ground
    truth's sha256, the clustering backend, whether the published numbers apply, and the run folder."""
    names = [label for _, label in SHOWN]
    lines = ["dataset  " + " ".join(f"{n:>8}" for n in names) + "   | published " + " ".join(f"{n:>6}" for n in names)]
    for item in done:
        ours = " ".join(f"{item.scores[k]:8.4f}" if k in item.scores else f"{'-':>8}" for k, _ in SHOWN)
        theirs = " ".join(f"{item.published[k]:6.3f}" if k in item.published else f"{'-':>6}" for k, _ in SHOWN)
        lines.append(f"{item.key:<8} {ours}   |           {theirs}")
    for item in done:
        lines.append(f"{item.key}: ground truth sha256 {item.truth_sha256 or 'none'} ({item.truth_path or 'none'})")
        lines.append(f"{item.key}: clustering {item.backend}")
        lines.append(f"{item.key}: {item.note}; run folder {item.run_dir}")
    return "\n".join(lines) + "\n"


__all__ = ["PROFILES", "DATASET_KEYS", "published_config", "profile_key", "profile_path", "Reproduced",
           "check_folders", "selected_keys", "reproduce", "backend_name", "summary_record", "comparison_text"]
