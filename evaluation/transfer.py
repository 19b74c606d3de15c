"""A configuration chosen on one dataset, made to run on another (the cross-dataset table).

The hyper-parameters travel (loss weights, KNN_k, optimiser, learning rate, weight decay, scheduler, epochs, dropout,
cross-attention, latent size, EMA, clustering method); what describes the data is the target's: data type,
n_clusters, spatial_k (the data type's) and init_k. Per-modality reconstruction weights are mapped by position
(weight i of the source goes to modality i of the target); when the target has more modalities, the extra ones take
the published defaults for the target's modality count (`spamo.config.default_modality_weights`); when it has fewer,
the surplus weights are dropped.
"""

from __future__ import annotations

from spamo.config import SpamoConfig, default_modality_weights

# settings that describe the data, never carried from one dataset to another (None = the target's default)
TARGET_SETTINGS = ("data_type", "n_clusters", "spatial_k", "init_k")


def map_modality_weights(weights, n_target: int) -> tuple[float, ...]:
    """Source weights by position; missing positions take the target's defaults."""
    defaults = default_modality_weights(n_target)
    weights = list(weights or ())
    return tuple(float(weights[i]) if i < len(weights) else defaults[i] for i in range(n_target))


def config_for(source: dict, prepared, seed: int, same_dataset: bool, n_clusters: int) -> SpamoConfig:
    """The resolved config of `source` (a trial's config dict) for `prepared`'s data with `seed`.

    On its own dataset the trial's config is kept as it is (only the seed changes); on another dataset it is
    transferred as described in the module docstring, with the target's K `n_clusters` (its own resolved config's).
    """
    values = dict(source)
    values["seed"] = int(seed)
    if not same_dataset:
        for name in TARGET_SETTINGS:
            values[name] = None
        values["data_type"] = prepared.data_type
        values["n_clusters"] = int(n_clusters)
        values["modality_weights"] = list(map_modality_weights(source.get("modality_weights"),
                                                               prepared.n_modalities))
    config = SpamoConfig.from_dict(values, where=f"configuration for {prepared.name}")
    return config.resolve(prepared.n_modalities, prepared.n_spots)
