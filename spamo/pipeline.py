"""The user-facing SPAMO run: prepare -> graphs -> train -> cluster -> score, and the files a run writes.

Each stage is its own function so the tuner can share the expensive ones (preprocessing once per search, feature
graphs cached per KNN_k) and call only `fit_and_cluster` per trial.
"""

from __future__ import annotations

import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spamo.gc_control import imports_without_gc, no_cycle_search_at_exit, thaw

with imports_without_gc():  # torch, scikit-learn, pandas: half a million objects the collector need not walk
    from spamo import datasets, run_folder
    from spamo.clustering import cluster
    from spamo.clustering.mclust import clusters_in_r, start_r_in_background
    from spamo.config import SpamoConfig
    from spamo.data import MultiOmicsData, PreparedData
    from spamo.datasets import check_n_clusters
    from spamo.errors import SpamoInputError
    from spamo.graphs import build_graphs
    from spamo.io import atomic_dir, file_sha256
    from spamo.metrics import clustering_scores, label_free_parts
    from spamo.preprocessing import preprocess
    from spamo.training import train

if TYPE_CHECKING:
    from spamo.plots import Placement

VERSIONED_PACKAGES = ("spamo", "torch", "numpy", "scipy", "scikit-learn", "scanpy", "anndata", "ray", "optuna")


DOMAIN_KEY = "spamo_domain"  # obs column that RunResult.annotate writes (a run folder's embedding.h5ad says 'domain')


@dataclass
class RunResult:
    """Everything one run produced, in memory (what `spamo.fit` returns).

    `embedding` (= `fused`) is the fused, L2-normalised embedding, one row per kept spot in the order of
    `spot_names`; `per_modality` the embedding of each modality (same rows); `labels` the domain of each kept spot;
    `scores` the machine-named scores (`spamo.metrics.SCORES`: truth scores only with a ground truth); `config` the
    resolved configuration. Preprocessing may drop spots (the Stereo-CITE-seq filters): `spot_names` lists those kept.
    """

    prepared: PreparedData
    config: SpamoConfig  # resolved
    fused: np.ndarray  # N_kept x d, L2-normalised
    per_modality: list[np.ndarray]
    labels: np.ndarray  # N_kept cluster labels
    scores: dict  # ground-truth scores (if truth) + label-free scores
    history: list[dict]
    timings: dict = field(default_factory=dict)
    device: str = "cpu"
    data: MultiOmicsData | None = None  # the loaded data it was trained on (for write(): provenance, label order)
    placement: Placement | None = None  # the picture's layout, when computed beside the clustering

    @property
    def embedding(self) -> np.ndarray:
        return self.fused

    @property
    def spot_names(self) -> np.ndarray:
        return np.asarray(self.prepared.spot_names).astype(str)

    @property
    def modality_names(self) -> list[str]:
        return list(self.prepared.modality_names)

    def annotate(self, target) -> None:
        """Write the result into an AnnData or MuData, in place, matched by `obs_names`:

        - ``obsm['X_spamo']``: the fused embedding (float32, n_obs x latent_dim);
        - ``obsm['X_spamo_<modality>']``: each modality's embedding (``X_spamo_RNA``, ``X_spamo_ADT``, ...);
        - ``obs['spamo_domain']``: the domain of each spot, categorical (categories '0', '1', ... in numeric order).

        Spots the run did not keep (dropped by preprocessing) get NaN rows and a missing domain. A MuData gets the
        keys on the MuData itself (``mdata.obsm`` / ``mdata.obs``), not on its modalities.
        """
        import pandas as pd

        if not (hasattr(target, "obs_names") and hasattr(target, "obsm") and hasattr(target, "obs")):
            raise SpamoInputError("annotate", f"expected an AnnData or a MuData, got {type(target).__name__}")
        names = pd.Index(np.asarray(target.obs_names).astype(str))
        rows = pd.Index(self.spot_names).get_indexer(names)
        found = rows >= 0
        if not found.any():
            raise SpamoInputError("annotate", f"none of the {len(names)} obs_names is a spot of this result "
                                              f"(e.g. '{names[0] if len(names) else ''}')")

        def spread(matrix: np.ndarray) -> np.ndarray:
            out = np.full((len(names), matrix.shape[1]), np.nan, dtype=np.float32)
            out[found] = np.asarray(matrix, dtype=np.float32)[rows[found]]
            return out

        target.obsm[run_folder.OBSM_FUSED] = spread(self.fused)
        for name, emb in zip(self.modality_names, self.per_modality):
            target.obsm[run_folder.obsm_modality(name)] = spread(emb)
        categories = [str(v) for v in sorted(np.unique(self.labels).astype(int))]
        values = np.full(len(names), None, dtype=object)
        values[found] = [str(int(v)) for v in np.asarray(self.labels)[rows[found]]]
        target.obs[DOMAIN_KEY] = pd.Categorical(values, categories=categories)

    def embedding_anndata(self):
        """The AnnData a run folder stores as embedding.h5ad (`spamo.run_folder`), built in memory."""
        if self.data is None:
            raise SpamoInputError("result", "this result does not carry its data")
        return run_embedding(self, self.data).to_anndata()

    def write(self, out_dir: str | Path, draw: bool = True, layout: str = "graph") -> Path:
        """Write the run folder (what `spamo run --out` writes; see `spamo.run_folder`), atomically; `layout` is the
        picture's embedding panel (`spamo.plots`: "graph", the default, or "umap")."""
        if self.data is None:
            raise SpamoInputError("result", "this result does not carry its data; use pipeline.write_outputs")
        return write_outputs(self, self.data, out_dir, draw=draw, layout=layout)


def load_data(
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    data_type: str | None = None,
    data_root: str | Path = "Data",
    modality_files: dict[str, str] | None = None,
    truth_file: str | Path | None = None,
    n_clusters: int | None = None,
    layer: str | None = None,
) -> MultiOmicsData:
    """Load a named dataset (`hln`, `mb`, `sim`), a folder of .h5ad files, or one .h5mu file (`datasets.load`)."""

    if dataset is not None and data_dir is not None:
        raise SpamoInputError("--dataset", "give either --dataset or --data-dir, not both")
    if dataset is None and data_dir is None:
        raise SpamoInputError("--dataset", "give --dataset hln|mb|sim or --data-dir DIR --data-type TYPE")
    if dataset is not None:
        datasets.check_dataset_key(dataset)  # an unknown key is refused as a key, not looked up as a folder
    source = dataset if dataset is not None else Path(data_dir)
    return datasets.load(source, data_type=data_type, modality_files=modality_files, truth=truth_file,
                         layer=layer, n_clusters=n_clusters, data_root=data_root)


def prepare(data: MultiOmicsData, config: SpamoConfig, modalities: list[str] | None = None
            ) -> tuple[PreparedData, SpamoConfig]:
    """Preprocess the data and resolve the config against it (data type, modality count, spot count)."""

    # K is the config's; the loader's `data.n_clusters` (the registry's K, a simulation's domains) only fills a gap
    config = config.replace(data_type=data.data_type,
                            n_clusters=config.n_clusters or data.n_clusters)
    if config.n_clusters is None:
        raise SpamoInputError("--n-clusters", "the number of clusters is not known for this data: pass --n-clusters")
    check_n_clusters(config.n_clusters, data.n_spots)  # before the preprocessing, which can take a while
    unknown = [m for m in modalities or () if m not in data.modality_names]
    if unknown:
        raise SpamoInputError("--modalities", f"unknown modality {unknown[0]!r} (have {data.modality_names})")
    prepared = preprocess(data, seed=config.seed)
    if modalities:
        prepared = prepared.subset_modalities(list(modalities))
        if config.modality_weights is not None and len(config.modality_weights) != len(modalities):
            config = config.replace(modality_weights=None)
    return prepared, config.resolve(prepared.n_modalities, prepared.n_spots)


def cluster_and_score(prepared: PreparedData, fused: np.ndarray, config: SpamoConfig, method: str | None = None,
                      picture_layout: str | None = None) -> tuple[np.ndarray, dict, Placement | None]:
    """Cluster the fused embedding into n_clusters domains and score them (machine names, `metrics.SCORES`);
    returns (labels, scores, placement).

    While R clusters (mclust runs on one core and leaves Python's lock free meanwhile), a helper thread computes
    beside it what needs no labels: the label-free scores' parts (`metrics.label_free_parts`) and, given
    `picture_layout`, the picture's layout (`plots.place_embedding`, importing matplotlib with it). The values are
    the ones computed after the clustering, only sooner (benchmarks/results/run.md). `placement` is None without
    `picture_layout`, when another backend clusters (it would hold Python's lock and gain nothing) or when the
    layout failed (a picture then computes it itself, and reports the failure, when it is drawn).
    """
    method = method or config.cluster_method
    beside = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spamo-beside-R") if clusters_in_r(method) else None
    parts = placement = None
    try:
        if beside is not None:
            parts = beside.submit(label_free_parts, fused, coords=prepared.coords, truth=prepared.truth,
                                  seed=config.seed)
            placement = beside.submit(_place, fused, picture_layout, config.seed) if picture_layout else None
        labels = np.asarray(cluster(fused, config.n_clusters, method=method, n_pcs=config.n_pcs,
                                    coords=prepared.coords, smooth=config.smooth, init_k=config.init_k))
        scores = clustering_scores(labels, fused, coords=prepared.coords, truth=prepared.truth, seed=config.seed,
                                   parts=parts.result() if parts is not None else None)
        return labels, scores, placement.result() if placement is not None else None
    finally:
        if beside is not None:
            beside.shutdown(wait=False, cancel_futures=True)


def _place(fused: np.ndarray, layout: str, seed: int) -> Placement | None:
    """The picture's layout, or None where it fails: a picture that may never be drawn must not fail the run."""
    try:
        from spamo.plots import place_embedding  # matplotlib comes with it, so only where a picture is asked

        return place_embedding(fused, layout, seed)
    except Exception:  # noqa: BLE001 - the picture, when drawn, computes its layout again and reports this
        return None


def start_r_early(config: SpamoConfig) -> None:
    """When the clustering will ask R (mclust: named, or `auto`), start R now, beside the preprocessing and
    training (`spamo.clustering.mclust.start_r_in_background`): a second less at the end of every run."""
    if config.cluster_method in ("auto", "mclust"):
        start_r_in_background()


def fit_and_cluster(prepared: PreparedData, config: SpamoConfig, graphs=None, callback=None, callback_every: int = 10,
                    progress: bool = True, train_options: dict | None = None,
                    picture_layout: str | None = None) -> RunResult:
    """Train on prepared data (graphs built here unless given) and cluster the embedding.

    `train_options` go to `spamo.training.train` as they are (checkpoints: `start_from`, `on_checkpoint`,
    `checkpoint_every`); `picture_layout`: the picture's layout to compute beside R (`cluster_and_score`)."""

    timings: dict = {}
    start = time.perf_counter()
    start_r_early(config)
    if graphs is None:
        graphs = build_graphs(prepared, config)
    timings["graphs_s"] = time.perf_counter() - start
    start = time.perf_counter()
    trained = train(prepared, graphs, config, callback=callback, callback_every=callback_every, progress=progress,
                    **(train_options or {}))
    timings["train_s"] = time.perf_counter() - start
    timings["epoch_s"] = float(trained.epoch_seconds)
    start = time.perf_counter()
    labels, scores, placement = cluster_and_score(prepared, trained.fused, config, picture_layout=picture_layout)
    timings["cluster_s"] = time.perf_counter() - start
    return RunResult(prepared=prepared, config=config, fused=trained.fused, per_modality=trained.per_modality,
                     labels=labels, scores=scores, history=trained.history, timings=timings,
                     device=str(trained.device), placement=placement)


def run(data: MultiOmicsData, config: SpamoConfig, modalities: list[str] | None = None,
        progress: bool = True, picture_layout: str | None = "graph") -> RunResult:
    """The method's main job on loaded data. `picture_layout`: the layout of the picture `RunResult.write` draws by
    default, computed while R clusters (`cluster_and_score`; None: not computed unless a picture is drawn). The
    process exits without searching its objects for reference cycles (`spamo.gc_control.no_cycle_search_at_exit`:
    a second or two of the interpreter's shutdown). The objects there are after the preprocessing's imports are
    frozen out of the collector's walks until the run ends (`spamo.gc_control`, `imports_without_gc(freeze=True)`:
    a full walk of the whole heap less, in the middle of the preprocessing)."""
    no_cycle_search_at_exit()
    start = time.perf_counter()
    start_r_early(config)
    try:
        with imports_without_gc(freeze=True):  # the preprocessing's imports in one pause, ended by a freeze
            prepared, resolved = prepare(data, config, modalities)
        prep_s = time.perf_counter() - start
        result = fit_and_cluster(prepared, resolved, progress=progress, picture_layout=picture_layout)
    finally:
        thaw()
    result.data = data
    result.timings = {"preprocess_s": prep_s, **result.timings, "total_s": time.perf_counter() - start}
    return result


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def provenance(data: MultiOmicsData) -> dict:
    """Hashes of every input file and of the ground truth the scores were computed against."""
    files = {name: {"path": str(Path(path).resolve()), "sha256": file_sha256(path)}
             for name, path in data.sources.items() if path is not None and Path(path).is_file()}
    truth = None
    if data.truth_path is not None and Path(data.truth_path).is_file():
        truth = {"path": str(Path(data.truth_path).resolve()), "sha256": file_sha256(data.truth_path)}
    elif data.truth is not None:
        truth = {"path": "derived", "sha256": truth_sha256(data.truth)}
    return {"inputs": files, "ground_truth": truth}


def truth_sha256(labels: np.ndarray) -> str:
    import hashlib

    text = "\n".join(str(int(v)) for v in np.asarray(labels)) + "\n"
    return hashlib.sha256(text.encode()).hexdigest()


def run_embedding(result: RunResult, data: MultiOmicsData) -> run_folder.RunEmbedding:
    """The run's embedding.h5ad content (`spamo.run_folder` owns the keys)."""
    prep = result.prepared
    return run_folder.RunEmbedding(
        spot_names=np.asarray(prep.spot_names).astype(str), coords=prep.coords, fused=result.fused,
        per_modality=dict(zip(prep.modality_names, result.per_modality)), labels=result.labels, truth=prep.truth,
        data_type=prep.data_type, dataset=prep.name,
        sources={name: str(Path(p).resolve()) for name, p in data.sources.items()
                 if isinstance(p, Path) and name in prep.modality_names},  # in-memory data has no file
        n_clusters=int(result.config.n_clusters), seed=int(result.config.seed))


def write_outputs(result: RunResult, data: MultiOmicsData, out_dir: str | Path, draw: bool = True,
                  layout: str = "graph") -> Path:
    """Write the run folder (`spamo.run_folder`: labels, metrics, embedding, picture, run.toml), atomically."""
    out_dir = Path(out_dir)
    if draw:
        from spamo.plots import check_layout, plot_domains  # matplotlib only when a picture is drawn

        check_layout(layout)  # before anything is written
    prep = result.prepared
    with atomic_dir(out_dir) as tmp:
        run_folder.write_labels(labels_in_file_order(result, data), tmp / run_folder.LABELS_FILE)
        metrics = {k: float(v) for k, v in result.scores.items()}
        meta = provenance(data)
        run_folder.write_metrics(tmp, metrics, ground_truth=meta["ground_truth"], n_clusters=result.config.n_clusters,
                                 scored_against_truth=prep.truth is not None)
        run_folder.write_embedding(run_embedding(result, data), tmp / run_folder.EMBEDDING_FILE)
        if draw:
            plot_domains(prep.coords, result.fused, result.labels, tmp / run_folder.PLOT_FILE,
                         title=f"{prep.name}: {result.config.n_clusters} domains", seed=result.config.seed,
                         layout=layout, placement=result.placement)
        record = {
            "config": {k: v for k, v in result.config.to_dict().items() if v is not None},
            "run": {"dataset": prep.name, "data_type": prep.data_type, "modalities": prep.modality_names,
                    "matrix": data.matrix_label, "label_order": data.label_order,
                    "n_spots": prep.n_spots, "n_spots_loaded": prep.n_spots_original, "device": result.device,
                    "seed": result.config.seed},
            "timings": {k: round(float(v), 4) for k, v in result.timings.items()},
            "scores": metrics,
            "versions": package_versions(),
            **meta,
        }
        run_folder.write_record(tmp, record)
    return out_dir


def labels_in_file_order(result: RunResult, data: MultiOmicsData) -> np.ndarray:
    """labels.txt's lines: the kept spots in the loaded row order, or, when the layout orders spots by id
    (`data.spot_ids`, the Simulation layout), line j = the label of the spot whose id is j (-1 for a spot that
    preprocessing dropped), as the reference writes it and its cal_matrics.py reads it."""
    prep = result.prepared
    labels = np.asarray(result.labels)
    if data.spot_ids is None:
        order = np.argsort(prep.kept_index, kind="stable")  # kept_index is increasing: the original order
        return labels[order]
    out = np.full(data.n_spots, -1, dtype=np.int64)
    out[np.asarray(data.spot_ids)[prep.kept_index]] = labels
    return out
