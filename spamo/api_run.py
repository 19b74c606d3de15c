"""The Python API's single runs: `fit`, `load` and `build_run_config` (re-exported by `spamo.api` and `spamo`).

`fit(data, data_type=..., n_clusters=..., **settings) -> RunResult` trains once on a MuData, a dict modality name ->
AnnData, or a list of AnnData (RNA first), aligned by `obs_names`, coordinates in `obsm['spatial']` (docs/data.md
section 1 for the files `load` reads, section 4 for what is refused). `result.annotate(mdata)` writes
`obsm['X_spamo']`, `obsm['X_spamo_<modality>']` and `obs['spamo_domain']`; `result.write(out_dir)` writes the run
folder `spamo run` writes. `spamo run` calls exactly this, so it lives apart from the search and the analysis: a
single run imports neither Ray nor Optuna nor the analysis stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spamo import datasets, pipeline
from spamo.config import SpamoConfig
from spamo.data import MultiOmicsData
from spamo.errors import SpamoInputError, quiet_readers
from spamo.pipeline import RunResult
from spamo.training import check_device

__all__ = ["fit", "load", "RunResult", "build_run_config", "quiet_readers"]


def build_run_config(config: SpamoConfig | dict | str | Path | None = None, where: str = "spamo.fit",
                     **settings: Any) -> SpamoConfig:
    """A config from a SpamoConfig, a mapping or a TOML file, then keyword settings (spamo or reference names,
    e.g. `knn_k=10` or `KNN_k=10`, `RNA_weight=2`); `None` values mean "not given". Every value is checked here,
    before any data is read."""
    if config is None:
        base = SpamoConfig()
    elif isinstance(config, SpamoConfig):
        base = config
    elif isinstance(config, dict):
        base = SpamoConfig.from_dict(config, where=where)
    elif isinstance(config, (str, Path)):
        base = SpamoConfig.from_toml(config)
    else:
        raise SpamoInputError(where, f"config must be a SpamoConfig, a dict or a TOML path, got {type(config).__name__}")
    given = {k: v for k, v in settings.items() if v is not None}
    if not given:
        return base
    return SpamoConfig.from_dict({**base.to_dict(), **given}, where=where)


def fit(data, *, data_type: str | None = None, n_clusters: int | None = None,
        config: SpamoConfig | dict | str | Path | None = None, modalities: list[str] | None = None, truth=None,
        layer: str | None = None, progress: bool = False, picture_layout: str | None = "graph",
        **settings: Any) -> RunResult:
    """Train SPAMO once on data in memory and cluster the fused embedding into domains.

    `data` is a MuData, a dict modality name -> AnnData, or a list of AnnData in the data type's modality order
    (RNA first); the modalities are aligned by `obs_names` (refused if their spots differ) and the coordinates read
    from `obsm['spatial']`. `data_type` is one of the registry's (10x, SPOTS, Stereo-CITE-seq,
    Spatial-epigenome-transcriptome, Simulation). `n_clusters` is the number of domains. `config` (a SpamoConfig,
    a dict or a TOML file) and `**settings` (any `SpamoConfig` field or reference flag name) set the method;
    `modalities` trains on a subset (an ablation); `truth` (N labels, or an obs column name) adds ground-truth scores;
    `layer` reads `layers[layer]` instead of `.X`. `picture_layout` is the layout of the picture `.write()` draws
    (`spamo.plots`), computed while R clusters, on the core R leaves idle (None: only if a picture is drawn).
    Nothing is written to disk and the inputs are not modified.
    Returns a `RunResult`: `.embedding`, `.labels`, `.scores`, `.config`, `.annotate(mdata)`, `.write(out_dir)`.
    """
    config = build_run_config(config, data_type=data_type, n_clusters=n_clusters, **settings)
    check_device(config)
    if isinstance(data, MultiOmicsData):
        loaded = data
    else:
        if config.data_type is None:
            raise SpamoInputError("data_type", "give the data type of in-memory data (data_type=...)")
        with quiet_readers():
            loaded = datasets.from_memory(data, config.data_type, truth=truth, layer=layer)
    return pipeline.run(loaded, config, modalities=modalities, progress=progress, picture_layout=picture_layout)


def load(dataset: str | None = None, data_dir: str | Path | None = None, data_type: str | None = None,
         data_root: str | Path = "Data", modality_files: dict[str, str] | None = None,
         truth_file: str | Path | None = None, n_clusters: int | None = None,
         layer: str | None = None) -> MultiOmicsData:
    """Read a dataset from disk (a built-in key, a folder of .h5ad files or a .h5mu file), quietly; `fit` takes the
    result as its `data`."""
    with quiet_readers():
        return pipeline.load_data(dataset=dataset, data_dir=data_dir, data_type=data_type, data_root=data_root,
                                  modality_files=modality_files, truth_file=truth_file, n_clusters=n_clusters,
                                  layer=layer)
