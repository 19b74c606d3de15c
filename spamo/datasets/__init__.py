"""Loading datasets: the benchmark layouts (docs/data.md section 1), a user's own folder of .h5ad files, or a MuData
file.

`load(source, ...)` is the one entry point every command uses: it decides between a dataset key, a folder (in a
known layout or the user's own) and a `.h5mu` file. Every loader returns a `MultiOmicsData` whose modalities hold
the same spots in the same order, and refuses bad input (docs/data.md section 4) with a `SpamoInputError` naming the
file and the problem, before anything is written. The checks run in O(nnz) on sparse matrices (dense matrices in
row blocks), so they never densify a big matrix.

The package by job: `load` (dataset keys and folders, the `load` dispatcher), `memory` (.h5mu files and objects in
memory), `assemble` (checked modalities -> one `MultiOmicsData`), `checks` (the refusals of bad matrices, the rule
for K), `files` (reading AnnData and label files, layouts). Every public name is importable from `spamo.datasets`.

Two conventions follow the reference release (docs/method.md section 8), because its published numbers depend on them:

- The input matrix is `.X` for every modality and data type; `layer="NAME"` (`--layer NAME`) reads
  `layers['NAME']` instead. In the authors' Simulation files `.X` and `layers['counts']` are different matrices.
- Data types that order spots by id (the Simulation layout: `DataType.spot_id_order`) have spot names that are
  spot ids ('529', '478', ...) in a permuted row order: line i of the truth file is the label of the spot whose
  id is i, and labels.txt is written the same way. The loader reads each name's leading integer as its id,
  refuses names that are not a permutation of 0..N-1, aligns the truth to the rows and keeps the ids
  (`MultiOmicsData.spot_ids`) for the writer.
"""

from __future__ import annotations

from spamo.data import input_matrix
from spamo.dataset_table import DatasetSpec, dataset_registry, get_dataset_spec
from spamo.datasets.assemble import align_modalities, spot_ids_from_names
from spamo.datasets.checks import check_modality, check_n_clusters, matrix_label, raw_counts
from spamo.datasets.files import detect_layout, parse_modality_files, read_h5ad_checked, read_truth_file
from spamo.datasets.load import check_dataset_key, dataset_summary, load, load_dataset, load_folder, load_layout
from spamo.datasets.memory import from_memory, load_h5mu

__all__ = ["DatasetSpec", "dataset_registry", "get_dataset_spec", "check_dataset_key", "load", "load_dataset",
           "load_layout", "load_folder", "load_h5mu", "from_memory", "parse_modality_files", "input_matrix",
           "matrix_label", "raw_counts", "check_modality", "align_modalities", "read_truth_file", "read_h5ad_checked",
           "spot_ids_from_names", "detect_layout", "dataset_summary", "check_n_clusters"]
