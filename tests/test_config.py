"""The typed config: defaults per data type, reference flag names, TOML round trip, refusals."""

import math
import tomllib
from pathlib import Path

import numpy as np
import pytest

from spamo.config import REFERENCE_FLAGS, SpamoConfig, build_config, flag, settings, settings_table_markdown
from spamo.errors import SpamoInputError
from spamo.io import dump_toml

REPO = Path(__file__).resolve().parents[1]


def test_resolve_fills_data_type_defaults():
    two = SpamoConfig(data_type="Spatial-epigenome-transcriptome", n_clusters=14).resolve(2, 9196)
    assert (two.lr, two.weight_decay, two.epochs, two.spatial_k) == (0.01, 5e-2, 300, 6)
    assert two.modality_weights == (5.0, 5.0)
    three = SpamoConfig(data_type="Simulation", n_clusters=5).resolve(3, 1296)
    assert (three.lr, three.weight_decay, three.epochs, three.spatial_k) == (0.001, 2e-2, 200, 3)
    assert three.modality_weights == (1.0, 3.0, 3.0)
    # explicit values win over defaults
    custom = SpamoConfig(data_type="10x", lr=0.5, epochs=7, spatial_k=9).resolve(2)
    assert (custom.lr, custom.epochs, custom.spatial_k, custom.weight_decay) == (0.5, 7, 9, 5e-3)


def test_reference_flag_names_map_to_spamo_names():
    config = SpamoConfig.from_dict({"KNN_k": 15, "RNA_weight": 1, "ADT_weight": 10, "optimizer_type": "sgd",
                                    "lr_scheduler_type": "cosine", "epochs_override": 0, "random_seed": 7,
                                    "dim_output": 32, "data_type": "10x"})
    assert config.knn_k == 15 and config.resolve(2).modality_weights == (1.0, 10.0)
    assert config.optimizer == "sgd" and config.scheduler == "cosine" and config.seed == 7
    assert config.latent_dim == 32 and config.epochs is None
    assert set(REFERENCE_FLAGS) >= {"KNN_k", "RNA_weight", "ADT_weight", "dgi_weight", "spatial_weight",
                                    "dim_output", "dropout", "epochs_override", "optimizer_type",
                                    "lr_scheduler_type", "use_cross_attn", "random_seed", "n_clusters", "init_k"}


def test_one_weight_given_on_the_command_line_keeps_the_other_default():
    config = build_config(None, modality_weight_1=10.0, data_type="10x").resolve(2)
    assert config.modality_weights == (5.0, 10.0)
    assert build_config(None, epochs=0).epochs is None


@pytest.mark.parametrize("changes, where", [
    ({"optimizer": "rmsprop"}, "optimizer"),
    ({"scheduler": "step"}, "scheduler"),
    ({"knn_k": 50}, "knn_k"),
    ({"n_clusters": 1}, "n_clusters"),
    ({"n_clusters": 51}, "n_clusters"),
    ({"modality_weights": (1.0, 2.0, 3.0)}, "modality_weights"),
    ({"data_type": "Visium-HD"}, "data_type"),
])
def test_bad_settings_are_refused_naming_the_setting(changes, where):
    with pytest.raises(SpamoInputError) as info:
        SpamoConfig(data_type="10x", n_clusters=5).replace(**changes).resolve(2, n_spots=50)
    assert info.value.where == where


def test_values_are_checked_when_the_config_is_built_and_normalised():
    with pytest.raises(SpamoInputError, match=r"epochs: must be an integer >= 0 \(0 = the data type's default\)"):
        SpamoConfig(epochs=-1)
    with pytest.raises(SpamoInputError, match="lr: must be a number > 0, got nan"):
        SpamoConfig(lr=float("nan"))
    with pytest.raises(SpamoInputError, match="use_cross_attn: must be true or false"):
        SpamoConfig(use_cross_attn="yes")
    config = SpamoConfig(knn_k=np.int64(7), latent_dim=16.0, dropout=np.float32(0.25), modality_weights=[1, 2])
    assert type(config.knn_k) is int and config.latent_dim == 16 and type(config.latent_dim) is int
    assert type(config.dropout) is float and config.modality_weights == (1.0, 2.0)
    assert SpamoConfig(epochs=0).epochs is None  # 0 = the data type's default, as the reference's epochs_override


def test_allowed_values_come_from_their_owning_registries():
    from spamo.clustering import available_methods
    from spamo.config import choices
    from spamo.graphs import KNN_TIES, WEIGHTS
    from spamo.model.feature_graph import EMA_UPDATES
    from spamo.optim import OPTIMIZERS, SCHEDULERS

    declared = {f.name: choices(f) for f in settings()}
    assert declared["optimizer"] == tuple(OPTIMIZERS) and declared["scheduler"] == tuple(SCHEDULERS)
    assert declared["feature_graph_weight"] == WEIGHTS and declared["knn_ties"] == KNN_TIES
    assert declared["ema_update"] == EMA_UPDATES and declared["cluster_method"] == available_methods()


def test_per_modality_weights_merge_once_in_resolve():
    config = SpamoConfig.from_dict({"ADT_weight": 10, "data_type": "Simulation"})
    assert config.modality_weights is None and config.modality_weight_overrides == ((1, 10.0),)
    assert config.resolve(3).modality_weights == (1.0, 10.0, 3.0)
    explicit = SpamoConfig(data_type="10x", modality_weights=(2.0, 2.0), modality_weight_overrides=((0, 7.0),))
    assert explicit.resolve(2).modality_weights == (7.0, 2.0)
    assert SpamoConfig.from_dict(explicit.to_dict()) == explicit  # the overrides round-trip through a dict
    with pytest.raises(SpamoInputError, match="modality 3 but the data has 2"):
        SpamoConfig(data_type="10x", modality_weight_overrides=((2, 1.0),)).resolve(2)


def test_every_setting_has_exactly_one_run_option_and_one_readme_row():
    import typer

    from cli import app

    command = typer.main.get_command(app).commands["run"]
    options = {p.name: p for p in command.params if getattr(p, "opts", None)}
    for f in settings():
        assert f.name in options, f"setting {f.name} has no `spamo run` option"
        assert flag(f) in options[f.name].opts, (f.name, options[f.name].opts)
        others = [name for name, p in options.items() if name != f.name and flag(f) in p.opts]
        assert not others, (f.name, others)
    readme = (REPO / "README.md").read_text()
    start, end = readme.index("<!-- settings-table:start"), readme.index("<!-- settings-table:end -->")
    table = readme[readme.index("\n", start) + 1:end]
    assert table == settings_table_markdown(), "README settings table is stale: paste settings_table_markdown()"
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    for f in settings():
        assert sum(f"| `{f.name}` |" in row for row in rows) == 1, f.name
    assert set(REFERENCE_FLAGS.values()) <= {f.name for f in settings()} | {f"modality_weight_{i}" for i in range(3)}


def test_toml_file_round_trip_and_refusals(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[spamo]\nKNN_k = 12\nmodality_weights = [1.0, 3.0, 3.0]\ndropout = 0.2\n')
    config = SpamoConfig.from_toml(path)
    assert config.knn_k == 12 and config.modality_weights == (1.0, 3.0, 3.0) and config.dropout == 0.2
    text = dump_toml({"config": config.to_dict(), "scores": {"ari": 0.5, "bad": math.nan}})
    back = tomllib.loads(text)
    assert back["config"]["knn_k"] == 12 and back["config"]["modality_weights"] == [1.0, 3.0, 3.0]
    assert math.isnan(back["scores"]["bad"]) and "n_clusters" not in back["config"]  # None is left out
    (tmp_path / "bad.toml").write_text("KNN_k = = 3\n")
    with pytest.raises(SpamoInputError, match="not valid TOML"):
        SpamoConfig.from_toml(tmp_path / "bad.toml")
    (tmp_path / "unknown.toml").write_text("learning_speed = 3\n")
    with pytest.raises(SpamoInputError, match="unknown setting 'learning_speed'"):
        SpamoConfig.from_toml(tmp_path / "unknown.toml")
