"""Scores against scikit-learn and brute force, the metrics text format, label-free scores, and `spamo score`."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from sklearn import metrics as skm
from typer.testing import CliRunner

from cli import app
from spamo import metrics
from spamo.errors import SpamoInputError
from spamo.metrics import (TEXT_ORDER, format_metrics_text, label_free_scores, parse_metrics_text, pca_embedding,
                           score_against_truth, spatial_coherence)


def random_labels(seed: int, n: int, k_truth: int, k_pred: int):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k_truth, n)
    pred = np.where(rng.random(n) < 0.6, truth, rng.integers(0, k_pred, n))  # partly agreeing
    return truth, pred


@pytest.mark.parametrize("seed,n,k_truth,k_pred", [(0, 500, 5, 5), (1, 997, 3, 8), (2, 200, 10, 2)])
def test_scores_equal_scikit_learn(seed, n, k_truth, k_pred):
    truth, pred = random_labels(seed, n, k_truth, k_pred)
    scores = score_against_truth(truth, pred)
    expected = {
        "Mutual Information": skm.mutual_info_score(truth, pred),
        "NMI": skm.normalized_mutual_info_score(truth, pred),
        "AMI": skm.adjusted_mutual_info_score(truth, pred),
        "V-measure": skm.v_measure_score(truth, pred),
        "Homogeneity": skm.homogeneity_score(truth, pred),
        "Completeness": skm.completeness_score(truth, pred),
        "ARI": skm.adjusted_rand_score(truth, pred),
        "FMI": skm.fowlkes_mallows_score(truth, pred),
    }
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, abs=1e-12), name
    average = np.mean([scores[k] for k in ("NMI", "AMI", "ARI", "F_measure", "Jaccard")])
    assert scores["Avg."] == pytest.approx(average)
    assert list(scores) == list(TEXT_ORDER)


def brute_force_pairs(truth, pred):
    tp = fp = fn = 0
    for i, j in itertools.combinations(range(len(truth)), 2):
        same_truth, same_pred = truth[i] == truth[j], pred[i] == pred[j]
        tp += same_truth and same_pred
        fp += same_pred and not same_truth
        fn += same_truth and not same_pred
    return tp, fp, fn


@pytest.mark.parametrize("seed", range(4))
def test_pair_counting_matches_enumeration(seed):
    rng = np.random.default_rng(seed)
    truth, pred = rng.integers(0, 4, 60), rng.integers(0, 1 + seed * 2, 60)
    tp, fp, fn = brute_force_pairs(truth, pred)
    scores = score_against_truth(truth, pred)
    assert scores["Jaccard"] == pytest.approx(tp / (tp + fp + fn))
    assert scores["F_measure"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    # FMI is the geometric mean of pair precision and recall: a third check on the same counts
    assert scores["FMI"] == pytest.approx(tp / np.sqrt((tp + fp) * (tp + fn)) if tp else 0.0)


def test_identical_partitions_score_one_and_length_mismatch_refused():
    truth = np.array([3, 3, 1, 1, 7, 7, 7])
    scores = score_against_truth(truth, np.array([0, 0, 2, 2, 5, 5, 5]))
    assert all(scores[name] == pytest.approx(1.0) for name in TEXT_ORDER if name != "Mutual Information")
    with pytest.raises(SpamoInputError, match="6 labels but the truth has 7"):
        score_against_truth(truth, truth[:6])


def test_text_format_six_decimals_in_reference_order_and_round_trip():
    truth, pred = random_labels(5, 300, 4, 6)
    truth_scores = score_against_truth(truth, pred)
    scores = truth_scores | {"ASW": -0.1234567891}
    text = format_metrics_text(scores)
    lines = text.splitlines()
    # the reference's cal_matrics.py layout, label for label (its results/Simulation/metrics.txt starts
    # "Our     jaccard: 0.993396" and has "Our     (ARI): 0.995721"); label-free scores are not in it
    assert [line.split(": ")[0] for line in lines] == [
        "Our     jaccard", "Our     F_measure", "Our     Mutual Information", "Our     NMI", "Our     AMI",
        "Our     V-measure", "Our     Homogeneity", "Our     Completeness", "Our     (ARI)", "Our     (FMI)",
        "Our     Avg."]
    assert all(re.fullmatch(r"Our     [A-Za-z_.() -]+: -?\d+\.\d{6}", line) for line in lines)
    assert text.endswith("\n") and f"Our     (ARI): {truth_scores['ARI']:.6f}" in lines
    back = parse_metrics_text(text)
    assert back.keys() == truth_scores.keys()
    assert all(abs(back[k] - truth_scores[k]) <= 5e-7 for k in truth_scores)
    old = parse_metrics_text("Jaccard: 0.5\nARI: 0.25\nASW: -0.1\n")  # the older layout is still read
    assert old == {"Jaccard": 0.5, "ARI": 0.25, "ASW": -0.1}
    with pytest.raises(SpamoInputError, match="line 2"):
        parse_metrics_text("ARI: 0.5\nnonsense\n")


def test_pca_embedding_is_deterministic_and_matches_scikit_learn_up_to_sign():
    from sklearn.decomposition import PCA

    data = np.random.default_rng(0).normal(size=(300, 40)) @ np.diag(np.linspace(3, 0.1, 40))
    first, second = pca_embedding(data, 20), pca_embedding(data, 20)
    assert np.array_equal(first, second) and first.shape == (300, 20)
    reference = PCA(20, svd_solver="full").fit_transform(data)
    assert np.allclose(np.abs(first), np.abs(reference), atol=1e-8)
    assert pca_embedding(data[:, :5], 20).shape == (300, 5)  # fewer features: every component kept


def test_label_free_scores_and_subsampled_silhouette(monkeypatch):
    rng = np.random.default_rng(1)
    truth = np.repeat(np.arange(3), 100)
    embedding = rng.normal(size=(300, 30)) + 4 * np.eye(30)[truth]
    pred = np.where(rng.random(300) < 0.9, truth, (truth + 1) % 3)
    points = pca_embedding(embedding, 20)
    scores = label_free_scores(embedding, pred, truth=truth)
    assert scores["ASW"] == pytest.approx(skm.silhouette_score(points, pred))
    assert scores["ASW_gt"] == pytest.approx((skm.silhouette_score(points, truth) + 1) / 2)
    assert "Spatial coherence" not in scores
    monkeypatch.setattr(metrics, "ASW_MAX_SPOTS", 120)  # force the subsample path on small data
    once, again = label_free_scores(embedding, pred, seed=3), label_free_scores(embedding, pred, seed=3)
    assert once == again and once["ASW"] != pytest.approx(scores["ASW"], abs=1e-9)
    assert abs(once["ASW"] - scores["ASW"]) < 0.1


def test_spatial_coherence_counts_agreeing_neighbour_edges():
    grid = np.array([(x, y) for x in range(20) for y in range(20)], dtype=float)
    halves = (grid[:, 0] >= 10).astype(int)
    random = np.random.default_rng(0).integers(0, 4, grid.shape[0])
    assert spatial_coherence(np.zeros(400), grid) == 1.0
    assert 0.85 < spatial_coherence(halves, grid) < 1.0
    assert spatial_coherence(random, grid) == pytest.approx(0.25, abs=0.05)


# ------------------------------------------------------------------------------------------------ spamo score


def write_labels(path, values):
    path.write_text("".join(f"{v}\n" for v in values))
    return path


def test_score_command_prints_and_writes_metrics(tmp_path):
    truth, pred = random_labels(7, 250, 4, 5)
    gt = write_labels(tmp_path / "GT.txt", truth + 1)
    labels = write_labels(tmp_path / "labels.txt", pred)
    out = tmp_path / "res" / "metrics.txt"
    result = CliRunner().invoke(app, ["score", "--truth", str(gt), "--pred", str(labels), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == out.read_text() == format_metrics_text(score_against_truth(truth, pred))
    assert result.stdout.splitlines()[0].startswith("Our     jaccard: ")
    assert result.stdout.splitlines()[-1].startswith("Our     Avg.: ")


@pytest.mark.parametrize("case,problem", [
    ("missing", "file not found"),
    ("not_integer", "line 3 is not an integer"),
    ("short", "4 labels but the truth file"),
])
def test_score_command_refusals(tmp_path, case, problem):
    gt = write_labels(tmp_path / "GT.txt", [1, 2, 2, 1, 3])
    pred = tmp_path / "labels.txt"
    if case == "not_integer":
        pred.write_text("1\n2\n2.5\n1\n3\n")
    elif case == "short":
        write_labels(pred, [1, 2, 2, 1])
    out = tmp_path / "metrics.txt"
    result = CliRunner().invoke(app, ["score", "--truth", str(gt), "--pred", str(pred), "--out", str(out)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(pred) in lines[0] and problem in lines[0]
    assert not out.exists() and result.stdout == ""
