"""The user-facing SPAMO run: prepare -> graphs -> train -> cluster -> score, and the files a run writes.

Each stage is its own function so the tuner can share the expensive ones (preprocessing once per search, feature
graphs cached per KNN_k) and call only `fit_and_cluster` per trial.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from spamo.config import SpamoConfig
from spamo.data import MultiOmicsData, PreparedData
from spamo.errors import SpamoInputError
from spamo.io import atomic_dir, file_sha256, write_h5ad

VERSIONED_PACKAGES = ("spamo", "torch", "numpy", "scipy", "scikit-learn", "scanpy", "anndata", "ray", "optuna")


@dataclass
class RunResult:
    """Everything one run produced, in memory."""

    prepared: PreparedData
    config: SpamoConfig  # resolved
    fused: np.ndarray  # N_kept x d, L2-normalised
    per_modality: list[np.ndarray]
    labels: np.ndarray  # N_kept cluster labels
    scores: dict  # ground-truth scores (if truth) + label-free scores
    history: list[dict]
    timings: dict = field(default_factory=dict)
    device: str = "cpu"


def load_data(
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    data_type: str | None = None,
    data_root: str | Path = "Data",
    modality_files: dict[str, str] | None = None,
    truth_file: str | Path | None = None,
    n_clusters: int | None = None,
) -> MultiOmicsData:
    """Load a named dataset (`hln`, `mb`, `sim`), a folder of .h5ad files, or one .h5mu file."""
    from spamo import datasets

    if dataset is not None and data_dir is not None:
        raise SpamoInputError("--dataset", "give either --dataset or --data-dir, not both")
    if dataset is not None:
        data = datasets.load_dataset(dataset, data_root=data_root)
        if n_clusters is not None:
            data.n_clusters = n_clusters
        return data
    if data_dir is None:
        raise SpamoInputError("--dataset", "give --dataset hln|mb|sim or --data-dir DIR --data-type TYPE")
    if data_type is None:
        raise SpamoInputError("--data-type", "a --data-dir needs its --data-type")
    path = Path(data_dir)
    if path.suffix == ".h5mu":
        return datasets.load_h5mu(path, data_type=data_type, n_clusters=n_clusters)
    return datasets.load_folder(path, data_type=data_type, modality_files=modality_files, truth_file=truth_file,
                                n_clusters=n_clusters)


def prepare(data: MultiOmicsData, config: SpamoConfig, modalities: list[str] | None = None
            ) -> tuple[PreparedData, SpamoConfig]:
    """Preprocess the data and resolve the config against it (data type, modality count, spot count)."""
    from spamo.preprocessing import preprocess

    config = config.replace(data_type=data.data_type,
                            n_clusters=config.n_clusters or data.n_clusters)
    if config.n_clusters is None:
        raise SpamoInputError("--n-clusters", "the number of clusters is not known for this data: pass --n-clusters")
    prepared = preprocess(data, seed=config.seed)
    if modalities:
        unknown = [m for m in modalities if m not in prepared.modality_names]
        if unknown:
            raise SpamoInputError("--modalities", f"unknown modality {unknown[0]!r} (have {prepared.modality_names})")
        prepared = prepared.subset_modalities(list(modalities))
        if config.modality_weights is not None and len(config.modality_weights) != len(modalities):
            config = config.replace(modality_weights=None)
    prepared.n_clusters = config.n_clusters
    return prepared, config.resolve(prepared.n_modalities, prepared.n_spots)


def cluster_and_score(prepared: PreparedData, fused: np.ndarray, config: SpamoConfig,
                      method: str | None = None) -> tuple[np.ndarray, dict]:
    """Cluster the fused embedding into n_clusters domains and score them (truth scores only with truth)."""
    from spamo.clustering import cluster
    from spamo.metrics import label_free_scores, score_against_truth

    labels = cluster(fused, config.n_clusters, method=method or config.cluster_method, n_pcs=config.n_pcs,
                     coords=prepared.coords, smooth=config.smooth, init_k=config.init_k)
    labels = np.asarray(labels)
    scores: dict = {}
    if prepared.truth is not None:
        scores.update(score_against_truth(prepared.truth, labels))
    scores.update(label_free_scores(fused, labels, coords=prepared.coords, truth=prepared.truth, seed=config.seed))
    return labels, {score_key(name): float(value) for name, value in scores.items()}


def score_key(name: str) -> str:
    """The machine name of a score ('Mutual Information' -> 'mutual_information', 'Avg.' -> 'avg', 'ARI' -> 'ari').

    Results tables, Ray Tune metrics and metrics.json use these; metrics.txt keeps the reference's names.
    """
    return "_".join(name.replace(".", " ").replace("-", " ").lower().split())


def fit_and_cluster(prepared: PreparedData, config: SpamoConfig, graphs=None, callback=None, callback_every: int = 10,
                    progress: bool = True, train_options: dict | None = None) -> RunResult:
    """Train on prepared data (graphs built here unless given) and cluster the embedding.

    `train_options` go to `spamo.training.train` as they are (checkpoints: `start_from`, `on_checkpoint`,
    `checkpoint_every`)."""
    from spamo.graphs import build_graphs
    from spamo.training import train

    timings: dict = {}
    start = time.perf_counter()
    if graphs is None:
        graphs = build_graphs(prepared, config)
    timings["graphs_s"] = time.perf_counter() - start
    start = time.perf_counter()
    trained = train(prepared, graphs, config, callback=callback, callback_every=callback_every, progress=progress,
                    **(train_options or {}))
    timings["train_s"] = time.perf_counter() - start
    timings["epoch_s"] = float(trained.epoch_seconds)
    start = time.perf_counter()
    labels, scores = cluster_and_score(prepared, trained.fused, config)
    timings["cluster_s"] = time.perf_counter() - start
    return RunResult(prepared=prepared, config=config, fused=trained.fused, per_modality=trained.per_modality,
                     labels=labels, scores=scores, history=trained.history, timings=timings,
                     device=str(trained.device))


def run(data: MultiOmicsData, config: SpamoConfig, modalities: list[str] | None = None,
        progress: bool = True) -> RunResult:
    """The method's main job on loaded data."""
    start = time.perf_counter()
    prepared, resolved = prepare(data, config, modalities)
    prep_s = time.perf_counter() - start
    result = fit_and_cluster(prepared, resolved, progress=progress)
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


def reference_named(scores: dict) -> dict:
    """Ground-truth scores under the reference's names, in the reference's order (for metrics.txt)."""
    from spamo.metrics import TEXT_ORDER

    return {name: scores[score_key(name)] for name in TEXT_ORDER if score_key(name) in scores}


def write_outputs(result: RunResult, data: MultiOmicsData, out_dir: str | Path, draw: bool = True) -> Path:
    """Write labels.txt, metrics.json/.txt, embedding.h5ad, domains.png and run.toml into out_dir, atomically."""
    from spamo.io import dump_toml
    from spamo.metrics import format_metrics_text

    out_dir = Path(out_dir)
    prep = result.prepared
    with atomic_dir(out_dir) as tmp:
        # labels of the kept spots, in the original spot order (kept_index is increasing)
        order = np.argsort(prep.kept_index, kind="stable")
        (tmp / "labels.txt").write_text("".join(f"{int(v)}\n" for v in result.labels[order]))
        has_truth = prep.truth is not None
        metrics = {k: float(v) for k, v in result.scores.items()}
        meta = provenance(data)
        (tmp / "metrics.json").write_text(json.dumps(
            {"scores": metrics, "ground_truth": meta["ground_truth"], "n_clusters": result.config.n_clusters,
             "scored_against_truth": has_truth}, indent=2))
        if has_truth:
            (tmp / "metrics.txt").write_text(format_metrics_text(reference_named(result.scores)))
        _write_embedding(result, data, tmp / "embedding.h5ad")
        if draw:
            from spamo.plots import plot_domains

            plot_domains(prep.coords, result.fused, result.labels, tmp / "domains.png",
                         title=f"{prep.name}: {result.config.n_clusters} domains", seed=result.config.seed)
        record = {
            "config": {k: v for k, v in result.config.to_dict().items() if v is not None},
            "run": {"dataset": prep.name, "data_type": prep.data_type, "modalities": prep.modality_names,
                    "n_spots": prep.n_spots, "n_spots_loaded": prep.n_spots_original, "device": result.device,
                    "seed": result.config.seed},
            "timings": {k: round(float(v), 4) for k, v in result.timings.items()},
            "scores": metrics,
            "versions": package_versions(),
            **meta,
        }
        (tmp / "run.toml").write_text(dump_toml(record))
    return out_dir


def _write_embedding(result: RunResult, data: MultiOmicsData, path: Path) -> None:
    import anndata as ad
    import pandas as pd

    prep = result.prepared
    obs = pd.DataFrame(index=pd.Index(np.asarray(prep.spot_names).astype(str), name="spot"))
    obs["domain"] = pd.Categorical([str(int(v)) for v in result.labels])
    if prep.truth is not None:
        obs["truth"] = pd.Categorical([str(int(v)) for v in prep.truth])
    adata = ad.AnnData(obs=obs)
    adata.obsm["spatial"] = np.asarray(prep.coords, dtype=np.float64)
    adata.obsm["X_spamo"] = np.asarray(result.fused, dtype=np.float32)
    for name, emb in zip(prep.modality_names, result.per_modality):
        adata.obsm[f"X_spamo_{name}"] = np.asarray(emb, dtype=np.float32)
    adata.uns["spamo"] = {
        "data_type": prep.data_type,
        "dataset": prep.name,
        "modalities": list(prep.modality_names),
        "sources": {name: str(Path(p).resolve()) for name, p in data.sources.items()
                    if p is not None and name in prep.modality_names},
        "n_clusters": int(result.config.n_clusters),
        "seed": int(result.config.seed),
    }
    write_h5ad(adata, path)
