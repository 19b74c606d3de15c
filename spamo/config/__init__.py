"""The one typed configuration of a SPAMO run, and the one declaration of every setting.

Each `SpamoConfig` field carries its command-line flag, the reference release's flag name, its help text and what
it accepts (a numeric range, or the allowed values: data types from `spamo.datatypes`, every other choice from
`spamo.choices`, the light list of names that the implementations take theirs from - optimisers and schedulers of
`spamo.training`, feature-graph weights and kNN tie orders of `spamo.graphs`, EMA timings of
`spamo.model.feature_graph`, DGI initialisations of `spamo.model.losses`, clustering methods of `spamo.clustering`
(built in, or added by `register_backend`) -
so that reading the settings, `spamo --help` included, imports no torch or scikit-learn). From these declarations come the `spamo run` options (cli.py),
`REFERENCE_FLAGS` and the README's settings table (`settings_table_markdown`, checked by a test), so a setting is
added by adding one field.

A config checks every value when it is built (`__post_init__`): a wrong type (a TOML string where a number belongs),
a value out of range or an unknown choice is one `SpamoInputError` naming the setting and what it accepts, before any
data is read. `resolve()` then runs once per entry point against the data type, the number of modalities and the
number of spots, filling the data-type defaults (learning rate, weight decay, epochs, spatial k, modality weights) and
merging the per-modality weight flags. Everything downstream receives the resolved config.

The package by job: `fields` (declaring and checking one setting), `spamo_config` (`SpamoConfig`, `resolve`,
`build_config`, `REFERENCE_FLAGS`), `table` (the README table). Every public name is importable from `spamo.config`.
"""

from __future__ import annotations

from spamo.config.fields import Range, accepts, choices, flag, kind, optional, setting
from spamo.config.spamo_config import (DEVICES, PER_MODALITY_WEIGHTS, REFERENCE_FLAGS, SEED_MAX, SpamoConfig,
                                       build_config, default_modality_weights, parse_weights, settings)
from spamo.config.table import settings_table_markdown

__all__ = ["DEVICES", "PER_MODALITY_WEIGHTS", "REFERENCE_FLAGS", "SEED_MAX", "Range", "SpamoConfig", "accepts",
           "build_config", "choices", "default_modality_weights", "flag", "kind", "optional", "parse_weights",
           "setting", "settings", "settings_table_markdown"]
