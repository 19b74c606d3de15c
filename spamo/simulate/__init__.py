"""The built-in simulator of spatial multi-omics data (docs/data.md section 3).

A grid of spots (square, or hexagonal like Visium) carries spatial domains: background (label 0), smooth blobs
and wavy bands. Each modality draws counts from a realistic distribution (negative-binomial RNA with library-size
variation, ADT with ambient background, sparse binary-like ATAC) and is *blind* to one pair of domains: the pair
shares the same planted features in that modality. The blind pairs are chosen so every pair of domains is told
apart by some modality and none tells all apart, so integration is what recovers every domain.

Generation runs in chunks of spots with one random stream per (seed, modality, chunk), so the result depends only
on the seed and the size, and a million spots fit in memory (counts are stored as sparse CSR).

`Difficulty` grades a simulation (noise, contrast, which domains each modality merges, irregular shapes, a
"confusable" pair seen by one weak modality only); its defaults reproduce the original simulation bit for bit.
`configs/benchmarks/selection.toml` fixes the graded presets of the selection benchmark (`load_presets`).

The package by job: `difficulty` (the grading), `counts` (each modality's count model), `tissue` (positions and
domains), `generate` (simulating and writing), `presets` (the benchmark's named simulations). Every public name is
importable from `spamo.simulate`.
"""

from __future__ import annotations

from spamo.simulate.counts import CHUNK_SPOTS, MODALITY_MODELS, ModalityModel
from spamo.simulate.difficulty import DEFAULT_DIFFICULTY, Difficulty
from spamo.simulate.generate import (GRIDS, LAYOUT_MODALITIES, MAX_DOMAINS, MAX_SPOTS, MIN_DOMAINS, MIN_SPOTS, Simulation,
                                     apply_difficulty, check_difficulty, check_simulation_args, domain_groups, simulate,
                                     simulate_modality, total_steps, write_simulation)
from spamo.simulate.presets import PRESET_FILE, Preset, get_preset, is_preset, load_presets
from spamo.simulate.tissue import Tissue, domain_labels, grid_coordinates, make_tissue, truth_from_spfac

__all__ = ["CHUNK_SPOTS", "DEFAULT_DIFFICULTY", "Difficulty", "GRIDS", "LAYOUT_MODALITIES", "MAX_DOMAINS", "MAX_SPOTS",
           "MIN_DOMAINS", "MIN_SPOTS", "MODALITY_MODELS", "ModalityModel", "PRESET_FILE", "Preset", "Simulation",
           "Tissue", "apply_difficulty", "check_difficulty", "check_simulation_args", "domain_groups", "domain_labels",
           "get_preset", "grid_coordinates", "is_preset", "load_presets", "make_tissue", "simulate",
           "simulate_modality", "total_steps", "truth_from_spfac", "write_simulation"]
