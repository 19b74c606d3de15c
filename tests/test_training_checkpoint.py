"""Training checkpoints: a run interrupted and continued from its last checkpoint ends exactly as an uninterrupted
one (same seed, CPU): embeddings, loss history, labels and scores, bit for bit.

The interruption is real: the callback raises in the middle of training (as a killed worker would end it), the
checkpoint goes through torch.save / torch.load bytes, and the continuation runs in a fresh `train` call after the
process's random generators were disturbed, so only what the checkpoint holds can make the results equal.
"""

from __future__ import annotations

import io
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model_problems import planted_problem
from spamo.clustering import cluster
from spamo.config import SpamoConfig
from spamo.data import PreparedData
from spamo.metrics import score_against_truth
from spamo.training import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 120


class Interrupted(Exception):
    pass


def _problem():
    features, spatial, feature, labels = planted_problem(N, [10, 6], seed=0, knn_k=8)
    prepared = PreparedData(
        name="planted", data_type="Simulation", modality_names=["m0", "m1"],
        features=[f.numpy() for f in features], coords=np.zeros((N, 2)), spot_names=np.arange(N).astype(str),
        kept_index=np.arange(N), n_spots_original=N, truth=labels,
    )
    return prepared, SimpleNamespace(spatial=spatial, feature=feature)


def _config(**changes):
    base = dict(data_type="Simulation", epochs=14, latent_dim=16, attention_block_size=32, device="cpu",
                dropout=0.2)  # dropout on: blocked attention masks, encoder dropout and the DGI shuffle draw RNGs
    base.update(changes)
    return SpamoConfig(**base).resolve(2, N)


def _interrupted_at(prepared, graphs, config, stop_after: int, every: int) -> tuple[dict, list[int]]:
    """Train until the callback raises after epoch `stop_after`; the last checkpoint, saved and loaded as bytes."""
    saved: list[bytes] = []
    epochs: list[int] = []

    def keep(checkpoint):
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        saved.append(buffer.getvalue())
        epochs.append(checkpoint["trainer"]["epoch"])

    def stop(epoch, embedding_fn, losses):
        if epoch >= stop_after:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(prepared, graphs, config, callback=stop, callback_every=1, progress=False, on_checkpoint=keep,
              checkpoint_every=every)
    return torch.load(io.BytesIO(saved[-1]), weights_only=False), epochs


def _disturb_generators():
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)


def _labels_and_scores(prepared, result):
    labels = np.asarray(cluster(result.fused, 3, method="kmeans", n_pcs=10, seed=7))
    return labels, score_against_truth(prepared.truth, labels)


@pytest.mark.parametrize("changes", [
    dict(optimizer="adam", scheduler="cosine"),
    dict(optimizer="sgd", scheduler="plateau", ema_update="before_step"),
    dict(optimizer="adamw", scheduler="none", use_cross_attn=False),
])
def test_a_run_continued_from_its_checkpoint_ends_exactly_as_an_uninterrupted_one(changes):
    prepared, graphs = _problem()
    config = _config(**changes)
    whole = train(prepared, graphs, config, progress=False)
    checkpoint, epochs = _interrupted_at(prepared, graphs, config, stop_after=10, every=4)
    assert epochs == [4, 8] and checkpoint["trainer"]["epoch"] == 8 and len(checkpoint["history"]) == 8
    _disturb_generators()
    continued = train(prepared, graphs, config, progress=False, start_from=checkpoint)
    assert continued.start_epoch == 8 and whole.start_epoch == 0
    assert np.array_equal(whole.fused, continued.fused)
    assert all(np.array_equal(a, b) for a, b in zip(whole.per_modality, continued.per_modality))
    assert whole.history == continued.history  # every loss term and learning rate of all 14 epochs
    labels_whole, scores_whole = _labels_and_scores(prepared, whole)
    labels_continued, scores_continued = _labels_and_scores(prepared, continued)
    assert np.array_equal(labels_whole, labels_continued) and scores_whole == scores_continued


def test_the_checkpoint_is_what_makes_the_continuation_equal():
    """Controls: continuing with another run's random states, or from epoch 0, does not give the same run."""
    prepared, graphs = _problem()
    config = _config()
    whole = train(prepared, graphs, config, progress=False)
    checkpoint, _ = _interrupted_at(prepared, graphs, config, stop_after=9, every=3)
    other_seed, _ = _interrupted_at(prepared, graphs, config.replace(seed=1), stop_after=9, every=3)
    checkpoint_other_rng = dict(checkpoint, trainer=dict(checkpoint["trainer"], rng=other_seed["trainer"]["rng"]))
    wrong_rng = train(prepared, graphs, config, progress=False, start_from=checkpoint_other_rng)
    assert not np.array_equal(whole.fused, wrong_rng.fused)
    # the model state matters too: another seed's weights with this run's RNG states
    wrong_model = dict(checkpoint, trainer=dict(other_seed["trainer"], rng=checkpoint["trainer"]["rng"]))
    assert not np.array_equal(whole.fused, train(prepared, graphs, config, progress=False,
                                                 start_from=wrong_model).fused)


def test_checkpoints_follow_the_clock_and_never_come_after_the_last_epoch():
    prepared, graphs = _problem()
    seen = []
    train(prepared, graphs, _config(epochs=12), progress=False, checkpoint_every=4,
          on_checkpoint=lambda c: seen.append(c["trainer"]["epoch"]))
    assert seen == [4, 8]  # not 12: a finished run needs no checkpoint
    seen.clear()
    train(prepared, graphs, _config(epochs=3), progress=False, on_checkpoint=lambda c: seen.append(1))
    assert seen == []  # the default clock: 60 s of training or 50 epochs, neither reached
