"""The training plan: determinism, loss going down, NaN detection, optimisers/schedulers, the callback."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model_problems import planted_problem
from spamo.config import SpamoConfig
from spamo.data import PreparedData
from spamo.errors import SpamoInputError
from spamo.training import train


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _problem(n=120, dims=(10, 6), seed=0):
    features, spatial, feature, labels = planted_problem(n, list(dims), seed=seed, knn_k=8)
    prepared = PreparedData(
        name="planted", data_type="Simulation", modality_names=[f"m{i}" for i in range(len(dims))],
        features=[f.numpy() for f in features], coords=np.zeros((n, 2)), spot_names=np.arange(n).astype(str),
        kept_index=np.arange(n), n_spots_original=n, truth=labels,
    )
    return prepared, SimpleNamespace(spatial=spatial, feature=feature)


def _config(n_mod=2, **changes):
    base = dict(data_type="Simulation", epochs=15, latent_dim=16, attention_block_size=32, device="cpu")
    base.update(changes)
    return SpamoConfig(**base).resolve(n_mod, 120)


def test_fixed_seed_gives_identical_embeddings_twice():
    prepared, graphs = _problem()
    config = _config(dropout=0.2)  # dropout on: blocked attention, encoder/decoder dropout, DGI shuffle
    a = train(prepared, graphs, config, progress=False)
    b = train(prepared, graphs, config, progress=False)
    assert np.array_equal(a.fused, b.fused)
    assert all(np.array_equal(x, y) for x, y in zip(a.per_modality, b.per_modality))
    assert [h["total"] for h in a.history] == [h["total"] for h in b.history]
    c = train(prepared, graphs, config.replace(seed=1), progress=False)
    assert not np.array_equal(a.fused, c.fused)


def test_training_reduces_loss_and_returns_normalised_embeddings():
    prepared, graphs = _problem()
    result = train(prepared, graphs, _config(epochs=40), progress=False)
    totals = [h["total"] for h in result.history]
    assert len(totals) == 40
    assert np.mean(totals[-5:]) < 0.5 * totals[0]
    assert result.fused.shape == (120, 16) and len(result.per_modality) == 2
    assert np.allclose(np.linalg.norm(result.fused, axis=1), 1.0, atol=1e-5)
    assert {"recon_m0", "recon_m1", "graph", "spatial", "dgi", "total", "lr"} <= set(result.history[0])
    assert result.epoch_seconds > 0 and result.train_seconds >= result.epoch_seconds and result.device == "cpu"


def test_three_modalities_and_one_modality_train():
    prepared, graphs = _problem(dims=(10, 6, 8))
    assert train(prepared, graphs, _config(3, epochs=3), progress=False).fused.shape == (120, 16)
    single = prepared.subset_modalities(["m0"])
    graphs1 = SimpleNamespace(spatial=graphs.spatial[:1], feature=graphs.feature[:1])
    assert train(single, graphs1, _config(1, epochs=3), progress=False).fused.shape == (120, 16)


def test_nan_loss_raises_naming_epoch_and_term():
    prepared, graphs = _problem()
    prepared.features[1][5, 2] = np.nan
    with pytest.raises(FloatingPointError, match=r"epoch 1: loss term 'recon_m\d' is nan"):
        train(prepared, graphs, _config(epochs=3), progress=False)


def test_diverging_training_raises_floating_point_error():
    prepared, graphs = _problem()
    with pytest.raises(FloatingPointError, match=r"epoch \d+: loss term '\w+' is (nan|inf)"):
        train(prepared, graphs, _config(optimizer="sgd", lr=1e12, epochs=30), progress=False)


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_optimisers_are_selectable(optimizer):
    prepared, graphs = _problem()
    result = train(prepared, graphs, _config(optimizer=optimizer, epochs=4), progress=False)
    assert len(result.history) == 4


def test_schedulers_change_the_learning_rate_as_specified():
    prepared, graphs = _problem()
    none = train(prepared, graphs, _config(epochs=6), progress=False)
    assert {h["lr"] for h in none.history} == {0.01}
    cosine = train(prepared, graphs, _config(scheduler="cosine", epochs=6), progress=False)
    lrs = [h["lr"] for h in cosine.history]
    assert lrs[0] == 0.01 and all(a > b for a, b in zip(lrs, lrs[1:]))
    expected_last = 0.0001 + (0.01 - 0.0001) * (1 + np.cos(np.pi * 5 / 6)) / 2
    assert lrs[-1] == pytest.approx(expected_last)
    # a vanishing learning rate and no random or moving loss terms: the loss stalls, so plateau halves the rate
    stalled = _config(scheduler="plateau", optimizer="adam", lr=1e-7, epochs=12, dropout=0.0, dgi_weight=0.0,
                      graph_weight=0.0)
    plateau = train(prepared, graphs, stalled, progress=False)
    lrs = [h["lr"] for h in plateau.history]
    assert lrs[0] == 1e-7 and lrs[-1] == 0.5e-7


def test_callback_is_called_and_can_stop_training():
    prepared, graphs = _problem()
    seen = []

    def callback(epoch, embedding_fn, losses):
        embedding = embedding_fn()
        seen.append((epoch, embedding.shape, losses["total"]))
        return epoch >= 6

    result = train(prepared, graphs, _config(epochs=15), callback=callback, callback_every=3, progress=False)
    assert [s[0] for s in seen] == [3, 6]
    assert seen[0][1] == (120, 16)
    assert len(result.history) == 6 and result.stopped_early


def test_callback_does_not_change_the_training_path():
    prepared, graphs = _problem()
    plain = train(prepared, graphs, _config(epochs=6, dropout=0.2), progress=False)
    watched = train(prepared, graphs, _config(epochs=6, dropout=0.2), callback=lambda e, f, l: f() is None,
                    callback_every=2, progress=False)
    assert np.array_equal(plain.fused, watched.fused)


def test_unavailable_device_is_refused():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    prepared, graphs = _problem()
    with pytest.raises(SpamoInputError, match="device"):
        train(prepared, graphs, _config(device="cuda", epochs=1), progress=False)
