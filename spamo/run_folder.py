"""The one owner of the run folder that `spamo run` (and `RunResult.write`) leaves behind.

A run folder holds:

- ``labels.txt``: one integer domain label per kept spot, in the loaded spot order;
- ``metrics.json``: machine-named scores (`spamo.metrics.SCORES`), the ground truth's hash, ``n_clusters`` and
  ``scored_against_truth``;
- ``metrics.txt``: the ground-truth scores in the reference's text format (only with a ground truth);
- ``embedding.h5ad``: an AnnData with no ``X``; ``obs['domain']`` (and ``obs['truth']``) as string categories,
  ``obsm['spatial']``, ``obsm['X_spamo']`` (the fused, L2-normalised embedding), ``obsm['X_spamo_<modality>']``
  per modality, and ``uns['spamo']`` (data type, dataset, modalities, the source file of each modality,
  n_clusters, seed);
- ``domains.png`` (optional) and ``run.toml`` (resolved config, run facts, timings, scores, versions, input hashes).

Everything that writes or reads these files goes through this module (the pipeline, the analysis, the tests, the
benchmarks), so a key renamed here is renamed everywhere. The folder appears atomically (`spamo.io.atomic_dir`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from spamo.errors import SpamoInputError
from spamo.io import dump_toml, read_toml, write_h5ad
from spamo.metrics import format_metrics_text, read_label_file, reference_named

LABELS_FILE = "labels.txt"
METRICS_JSON = "metrics.json"
METRICS_TXT = "metrics.txt"
EMBEDDING_FILE = "embedding.h5ad"
PLOT_FILE = "domains.png"
RECORD_FILE = "run.toml"

OBS_DOMAIN = "domain"
OBS_TRUTH = "truth"
OBSM_SPATIAL = "spatial"
OBSM_FUSED = "X_spamo"
OBSM_MODALITY_PREFIX = "X_spamo_"
UNS_KEY = "spamo"


def check_output_file(path: str | Path, where: str = "--out") -> Path:
    """Refuse, before any work, an output file path that cannot be written: an existing folder, a path under a
    file, or a parent folder without write permission (folders: `spamo.io.check_output_folder`)."""
    path = Path(path)
    if path.is_dir():
        raise SpamoInputError(where, f"{path} is a folder, not a file")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise SpamoInputError(where, f"{path} lies under {parent}, which is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SpamoInputError(where, f"{parent} is not writable")
    return path


def obsm_modality(name: str) -> str:
    """The obsm key of one modality's embedding (``X_spamo_RNA``)."""
    return f"{OBSM_MODALITY_PREFIX}{name}"


@dataclass
class RunEmbedding:
    """What `embedding.h5ad` holds, typed: the spots, their coordinates, embeddings, labels and provenance."""

    spot_names: np.ndarray
    coords: np.ndarray  # N x 2 float64
    fused: np.ndarray  # N x d float32
    per_modality: dict[str, np.ndarray]  # modality name -> N x d float32, in modality order
    labels: np.ndarray  # N integer domain labels
    truth: np.ndarray | None = None
    data_type: str = ""
    dataset: str = ""
    sources: dict[str, str] = field(default_factory=dict)  # modality name -> absolute path of its input file
    n_clusters: int = 0
    seed: int = 0

    @property
    def modality_names(self) -> list[str]:
        return list(self.per_modality)

    def to_anndata(self):
        """The AnnData written as embedding.h5ad (no X; everything in obs / obsm / uns)."""
        import anndata as ad
        import pandas as pd

        obs = pd.DataFrame(index=pd.Index(np.asarray(self.spot_names).astype(str), name="spot"))
        obs[OBS_DOMAIN] = pd.Categorical([str(int(v)) for v in self.labels])
        if self.truth is not None:
            obs[OBS_TRUTH] = pd.Categorical([str(int(v)) for v in self.truth])
        adata = ad.AnnData(obs=obs)
        adata.obsm[OBSM_SPATIAL] = np.asarray(self.coords, dtype=np.float64)
        adata.obsm[OBSM_FUSED] = np.asarray(self.fused, dtype=np.float32)
        for name, emb in self.per_modality.items():
            adata.obsm[obsm_modality(name)] = np.asarray(emb, dtype=np.float32)
        adata.uns[UNS_KEY] = {
            "data_type": self.data_type,
            "dataset": self.dataset,
            "modalities": list(self.per_modality),
            "sources": dict(self.sources),
            "n_clusters": int(self.n_clusters),
            "seed": int(self.seed),
        }
        return adata


def write_embedding(embedding: RunEmbedding, path: str | Path) -> Path:
    """Write embedding.h5ad (through `spamo.io.write_h5ad`, which copes with every pandas the project supports)."""
    path = Path(path)
    write_h5ad(embedding.to_anndata(), path)
    return path


def read_embedding_anndata(run_dir: str | Path):
    """The raw AnnData of a run folder's embedding.h5ad, with its required keys checked (one-line refusals)."""
    import anndata as ad

    run_dir = Path(run_dir)
    path = run_dir / EMBEDDING_FILE
    if not run_dir.is_dir():
        raise SpamoInputError(run_dir, "run folder not found")
    if not path.is_file():
        raise SpamoInputError(run_dir, f"no {EMBEDDING_FILE} in the run folder (is it the output of `spamo run`?)")
    try:
        adata = ad.read_h5ad(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one refusal
        raise SpamoInputError(path, f"cannot read ({type(exc).__name__})") from None
    if OBSM_FUSED not in adata.obsm:
        raise SpamoInputError(path, f"no obsm['{OBSM_FUSED}'] (fused embedding)")
    if OBSM_SPATIAL not in adata.obsm:
        raise SpamoInputError(path, f"no obsm['{OBSM_SPATIAL}'] (coordinates)")
    return adata


def read_embedding(run_dir: str | Path) -> RunEmbedding:
    """Read a run folder's embedding.h5ad back into a `RunEmbedding`."""
    adata = read_embedding_anndata(run_dir)
    meta = dict(adata.uns.get(UNS_KEY, {}))
    names = [str(m) for m in meta.get("modalities", [])]
    truth = adata.obs[OBS_TRUTH].astype(int).to_numpy() if OBS_TRUTH in adata.obs else None
    return RunEmbedding(
        spot_names=np.asarray(adata.obs_names).astype(str),
        coords=np.asarray(adata.obsm[OBSM_SPATIAL], dtype=np.float64),
        fused=np.asarray(adata.obsm[OBSM_FUSED]),
        per_modality={m: np.asarray(adata.obsm[obsm_modality(m)]) for m in names if obsm_modality(m) in adata.obsm},
        labels=adata.obs[OBS_DOMAIN].astype(int).to_numpy(),
        truth=truth,
        data_type=str(meta.get("data_type", "")),
        dataset=str(meta.get("dataset", "")),
        sources={str(k): str(v) for k, v in dict(meta.get("sources", {})).items()},
        n_clusters=int(meta.get("n_clusters", 0)),
        seed=int(meta.get("seed", 0)),
    )


def labels_text(labels: Sequence[int]) -> str:
    return "".join(f"{int(v)}\n" for v in labels)


def write_labels(labels: Sequence[int], path: str | Path) -> None:
    Path(path).write_text(labels_text(labels))


def read_labels(run_dir: str | Path) -> np.ndarray:
    return read_label_file(Path(run_dir) / LABELS_FILE)


def write_metrics(folder: str | Path, scores: Mapping[str, float], *, ground_truth: dict | None, n_clusters: int,
                  scored_against_truth: bool) -> None:
    """metrics.json (machine names) and, with a ground truth, metrics.txt (the reference's labels and format)."""
    folder = Path(folder)
    clean = {k: float(v) for k, v in scores.items()}
    (folder / METRICS_JSON).write_text(json.dumps(
        {"scores": clean, "ground_truth": ground_truth, "n_clusters": n_clusters,
         "scored_against_truth": scored_against_truth}, indent=2))
    if scored_against_truth:
        (folder / METRICS_TXT).write_text(format_metrics_text(reference_named(clean)))


def read_metrics(run_dir: str | Path) -> dict:
    path = Path(run_dir) / METRICS_JSON
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SpamoInputError(path, "file not found") from None
    except (OSError, ValueError) as exc:
        raise SpamoInputError(path, f"cannot be read ({type(exc).__name__})") from None


def write_record(folder: str | Path, record: dict) -> None:
    (Path(folder) / RECORD_FILE).write_text(dump_toml(record))


def read_record(run_dir: str | Path) -> dict:
    return read_toml(Path(run_dir) / RECORD_FILE)
