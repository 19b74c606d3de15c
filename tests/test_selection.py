"""Label-free selection criteria on constructed embeddings: what they must score, and that names do not matter."""

from __future__ import annotations

import numpy as np
import pytest

from spamo.metrics import spatial_coherence
from spamo.selection import (CONSISTENCY_K, composite, consistency, consistency_per_modality, criteria, stability)


def _features(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, 12)).astype(np.float32), rng.standard_normal((n, 8)).astype(np.float32)]


def test_fused_equal_to_one_modality_scores_one_for_it_and_chance_for_the_other():
    n = 600
    features = _features(n, 0)
    per = consistency_per_modality(features[0].copy(), features)
    assert per[0] == pytest.approx(1.0)
    chance = CONSISTENCY_K / (n - 1)
    assert per[1] < 5 * chance  # an unrelated modality: near k / N, far below 1
    assert consistency(features[0], features) == pytest.approx((1.0 + per[1]) / 2)


def test_random_embedding_scores_near_k_over_n():
    n = 1500
    features = _features(n, 1)
    fused = np.random.default_rng(2).standard_normal((n, 16))
    value = consistency(fused, features)
    chance = CONSISTENCY_K / (n - 1)
    assert 0.3 * chance < value < 3 * chance


def test_sampled_queries_estimate_the_full_score():
    n = 1200
    features = _features(n, 3)
    fused = features[0] + 0.6 * np.random.default_rng(4).standard_normal(features[0].shape)
    full = consistency(fused, features, max_queries=n)
    sampled = consistency(fused, features, max_queries=300, seed=5)
    assert 0.05 < full < 0.95 and abs(sampled - full) < 0.05


def test_criteria_do_not_depend_on_label_names():
    rng = np.random.default_rng(6)
    n = 800
    coords = rng.uniform(-2, 2, size=(n, 2))
    labels = ((coords[:, 0] > 0).astype(int) + 2 * (coords[:, 1] > 0.5) + (rng.random(n) < 0.1)) % 4
    other = np.where(rng.random(n) < 0.2, rng.integers(0, 4, n), labels)
    renamed = np.array([7, 3, 11, 5])[labels]
    other_renamed = np.array([2, 9, 4, 0])[other]
    assert spatial_coherence(renamed, coords) == spatial_coherence(labels, coords)
    assert stability(renamed, other_renamed) == pytest.approx(stability(labels, other))
    features = _features(n, 7)
    fused = features[1]
    first = criteria(fused, features, spatial_coherence(labels, coords), labels, other)
    second = criteria(fused, features, spatial_coherence(renamed, coords), renamed, other_renamed)
    assert first == pytest.approx(second)
    assert stability(labels, labels) == 1.0 and np.isnan(stability(None, labels))


def test_composite_is_the_stated_mean():
    assert composite(0.5, 0.8, 0.2) == pytest.approx(0.5)
    assert composite(0.5, 0.8, -0.1) == pytest.approx(1.3 / 3)  # a negative ARI counts as 0
    assert np.isnan(composite(0.5, 0.8, float("nan")))


def test_the_label_free_default_is_the_best_criterion_of_the_measured_table():
    import re
    from pathlib import Path

    from spamo.selection import DEFAULT_LABEL_FREE, DEFAULT_REASON

    table = (Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "selection.md").read_text()
    best = re.search(r"Best median Spearman: \*\*(\w+)\*\* \(([+-]\d\.\d\d)\)", table)
    assert best and best.group(1) == DEFAULT_LABEL_FREE
    assert DEFAULT_REASON.startswith(DEFAULT_LABEL_FREE) and best.group(2) in DEFAULT_REASON
