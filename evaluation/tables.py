"""The five Arrow tables of an evaluation, their schemas, and how they are written (all or nothing).

Schemas are fixed (`SCHEMAS`): a score a dataset cannot have (ARI without ground truth) is null, never a missing
column, so tables of different evaluations always concatenate. Each table is written as Parquet and as an Arrow IPC
file; every file is first written under a temporary name and all are renamed into place only when all are written,
so an interrupted or failed evaluation leaves no table with its final name half-written or missing beside the rest.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq

from spamo.io import atomic_path
from spamo.metrics import SCORE_NAMES
from spamo.pipeline import VERSIONED_PACKAGES

# score columns: the machine names of the one score table, spamo.metrics.SCORES, in its order
SCORES = SCORE_NAMES
SPLIT_MERGE_PREFIX = "sm_"
ALL_SCORES = SCORES + tuple(SPLIT_MERGE_PREFIX + s for s in SCORES)
# the scores the cross-dataset and published tables show
MAIN_SCORES = ("ari", "nmi", "ami", "avg", "asw", "spatial_coherence", "sm_ari", "sm_nmi")
TIMES = ("graphs_s", "train_s", "epoch_s", "cluster_s", "split_merge_s", "wall_s")
VERSIONS = tuple(f"version_{name}" for name in ("python", *VERSIONED_PACKAGES))
# configuration settings shown as their own columns (the full resolved config is in config_json)
CONFIG_COLUMNS = (("knn_k", pa.int64()), ("modality_weights", pa.list_(pa.float64())), ("dgi_weight", pa.float64()),
                  ("spatial_weight", pa.float64()), ("optimizer", pa.string()), ("lr", pa.float64()),
                  ("weight_decay", pa.float64()), ("scheduler", pa.string()), ("epochs", pa.int64()),
                  ("dropout", pa.float64()), ("use_cross_attn", pa.bool_()), ("latent_dim", pa.int64()),
                  ("cluster_method", pa.string()))

F64, I64, I32, STR, BOOL = pa.float64(), pa.int64(), pa.int32(), pa.string(), pa.bool_()


def _fields(*groups) -> list[pa.Field]:
    out = []
    for group in groups:
        out += [pa.field(name, kind) for name, kind in group]
    return out


def _spread(names) -> list[tuple[str, pa.DataType]]:
    return [(f"{name}_{stat}", F64) for name in names for stat in ("mean", "sd")]


SCHEMAS: dict[str, pa.Schema] = {
    "seed_runs": pa.schema(_fields(
        [("key", STR), ("dataset", STR), ("config_from", STR), ("config_rank", I32), ("transferred", BOOL),
         ("seed", I64), ("n_spots", I64), ("n_modalities", I32), ("n_clusters", I32)],
        [(s, F64) for s in ALL_SCORES],
        [("sm_init_k", I32), ("sm_estimated_k", I32), ("epochs_run", I64), ("final_loss", F64)],
        [(t, F64) for t in TIMES],
        [("device", STR), ("hostname", STR), ("config_json", STR), ("ground_truth_sha256", STR)],
        [(v, STR) for v in VERSIONS])),
    "best_configs": pa.schema(_fields(
        [("dataset", STR), ("rank", I32), ("run", STR), ("trial_id", STR), ("trial_number", I64), ("metric", STR),
         ("selection", STR), ("selected_against_annotation", BOOL), ("tune_value", F64), ("n_seeds", I32),
         ("seeds", pa.list_(I64)), ("config_json", STR)],
        list(CONFIG_COLUMNS),
        _spread(ALL_SCORES),
        [("sm_estimated_k_mean", F64), ("train_s_mean", F64)])),
    "split_merge": pa.schema(_fields(
        [("key", STR), ("dataset", STR), ("config_from", STR), ("config_rank", I32), ("seed", I64),
         ("n_clusters", I32), ("init_k", I32), ("estimated_k", I32), ("step", I32), ("action", STR), ("k", I32),
         ("criterion", F64), ("pair_a", I32), ("pair_b", I32), ("merge_index", I32), ("settled", BOOL),
         ("at_target", BOOL), ("ari", F64), ("nmi", F64)])),
    "cross_dataset": pa.schema(_fields(
        [("config_from", STR), ("dataset", STR), ("transferred", BOOL), ("n_seeds", I32), ("rank_metric", STR)],
        _spread(MAIN_SCORES),
        [("overall_mean", F64), ("overall_rank", I32), ("config_json", STR)])),
    "published": pa.schema(_fields(
        [("dataset_key", STR), ("published_name", STR), ("published_spots", I64), ("published_n_clusters", I32),
         ("published_ari", F64), ("published_nmi", F64), ("published_ami", F64), ("published_avg", F64),
         ("published_configuration", STR), ("dataset", STR), ("our_rank", I32), ("our_spots", I64),
         ("our_n_clusters", I32), ("our_n_seeds", I32)],
        _spread(("ari", "nmi", "ami", "avg")),
        [("same_data", BOOL), ("data_note", STR)])),
}
TABLE_NAMES = ("best_configs", "seed_runs", "split_merge", "cross_dataset", "published")


def to_arrow(name: str, rows: list[dict]) -> pa.Table:
    """Rows (dicts) as a table of the fixed schema: missing values are null, extra keys an error (a schema bug)."""
    schema = SCHEMAS[name]
    extra = {k for row in rows for k in row} - set(schema.names)
    if extra:
        raise KeyError(f"{name}: columns not in the schema: {sorted(extra)}")
    columns = {field.name: [_cell(row.get(field.name)) for row in rows] for field in schema}
    return pa.Table.from_pydict(columns, schema=schema)


def _cell(value):
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def write_tables(tables: dict[str, pa.Table], out_dir: str | Path, ipc: bool = True) -> list[Path]:
    """Write every table (Parquet, and Arrow IPC when `ipc`) under temporary names, then rename them all."""

    out_dir = Path(out_dir)
    written = []
    with contextlib.ExitStack() as stack:
        for name, table in tables.items():
            path = out_dir / f"{name}.parquet"
            tmp = stack.enter_context(atomic_path(path))
            pq.write_table(table, tmp)
            tmp.chmod(0o644)  # a result file, readable like any other (temporary files are private)
            written.append(path)
            if ipc:
                path = out_dir / f"{name}.arrow"
                tmp = stack.enter_context(atomic_path(path))
                feather.write_feather(table, tmp, compression="uncompressed")
                tmp.chmod(0o644)
                written.append(path)
    return written


def read_table(out_dir: str | Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(Path(out_dir) / f"{name}.parquet")


def config_columns(config: dict) -> dict:
    """The configuration settings shown as columns."""
    out = {}
    for name, _ in CONFIG_COLUMNS:
        value = config.get(name)
        out[name] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1) of the finite values; sd is NaN with fewer than two."""
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else float("nan")


def canonical_json(text: str) -> str:
    return json.dumps(json.loads(text), sort_keys=True)
