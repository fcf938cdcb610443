"""Choosing k like an expert: Calinski-Harabasz, Davies-Bouldin, the gap statistic and the elbow
against independent references, every selection rule on data where the answer is clear, and every
algorithm end to end."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import Vectors
from sklearn.cluster import KMeans as SkKMeans
from sklearn.metrics import adjusted_rand_score, calinski_harabasz_score, davies_bouldin_score

from segspark.config import ModelSettings, settings_from_dict
from segspark.job import run
from segspark.metrics import CLUSTER, adjusted_rand, cluster_stats, knee_scores
from segspark.sweep import SAMPLE_TOLERANCE, choose_k, fit_k, make_estimator, sweep_k
from tests.conftest import base_config

CENTRES = np.array([[0.0, 0.0, 0.0], [6.0, 1.0, -3.0], [-4.0, 6.0, 1.0], [3.0, -6.0, 4.0]])


def _blobs(spark, seed: int = 3, per: int = 50):
    rng = np.random.default_rng(seed)
    points = np.vstack([rng.normal(c, 0.7, size=(per, 3)) for c in CENTRES])
    rows = [(i, Vectors.dense(p.tolist())) for i, p in enumerate(points)]
    return points, spark.createDataFrame(rows, ["id", "features"]).cache()


@pytest.fixture(scope="module")
def blobs(spark):
    return _blobs(spark)


@pytest.fixture(scope="module")
def sweep(blobs):
    """One sweep with every metric (gap included), reused to test each rule."""
    return sweep_k(blobs[1], ModelSettings(k={"min": 2, "max": 7}, gap=True, gap_references=5, restarts=2))


def _labels(predictions) -> tuple[np.ndarray, np.ndarray]:
    rows = predictions.select(vector_to_array("features").alias("x"), CLUSTER).orderBy("id").collect()
    return np.array([r.x for r in rows]), np.array([r[CLUSTER] for r in rows])


@pytest.mark.parametrize("k", [2, 3, 4, 6])
def test_calinski_harabasz_davies_bouldin_and_wssse_match_scikit_learn(blobs, k):
    predictions = make_estimator(ModelSettings(), k, seed=5).fit(blobs[1]).transform(blobs[1])
    stats = cluster_stats(predictions)
    points, labels = _labels(predictions)
    assert stats.calinski_harabasz == pytest.approx(calinski_harabasz_score(points, labels), rel=1e-9)
    assert stats.davies_bouldin == pytest.approx(davies_bouldin_score(points, labels), rel=1e-9)
    within = sum(((points[labels == c] - points[labels == c].mean(axis=0)) ** 2).sum() for c in set(labels))
    assert stats.wssse == pytest.approx(within, rel=1e-9)


def test_adjusted_rand_matches_scikit_learn(spark):
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 300), rng.integers(0, 3, 300)
    b[:150] = a[:150] % 3  # partly agreeing
    df = spark.createDataFrame(pd.DataFrame({"a": a, "b": b}))
    assert adjusted_rand(df, "a", "b") == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


def test_kneedle_finds_the_elbow_worked_out_by_hand():
    # x scaled: 0 .25 .5 .75 1; y scaled: (v - 12) / 88; 1 - x - y: 0 .432 .409 .216 0
    scores = knee_scores([1, 2, 3, 4, 5], [100, 40, 20, 15, 12])
    np.testing.assert_allclose(scores, [0, 0.75 - 28 / 88, 0.5 - 8 / 88, 0.25 - 3 / 88, 0], atol=1e-12)
    assert int(np.argmax(scores)) == 1


def _numpy_gap(
    points: np.ndarray, ks: list[int], references: int, seed: int
) -> tuple[list[float], list[float]]:
    """Tibshirani et al. (2001) with numpy and scikit-learn: uniform references over the bounding box."""
    rng = np.random.default_rng(seed)
    low, high = points.min(axis=0), points.max(axis=0)
    refs = [rng.uniform(low, high, size=points.shape) for _ in range(references)]

    def log_w(x: np.ndarray, k: int) -> float:
        return math.log(SkKMeans(k, n_init=5, random_state=0).fit(x).inertia_)

    gaps, sds = [], []
    for k in ks:
        reference = np.array([log_w(r, k) for r in refs])
        gaps.append(reference.mean() - log_w(points, k))
        sds.append(reference.std() * math.sqrt(1 + 1 / references))
    return gaps, sds


def test_gap_statistic_agrees_with_a_numpy_implementation(blobs, sweep):
    ks = [r.k for r in sweep.results]
    gaps, sds = _numpy_gap(blobs[0], ks, references=5, seed=1)
    for result, gap, sd in zip(sweep.results, gaps, sds, strict=True):
        # different uniform draws: the two estimates agree within their sampling error
        assert abs(result.gap.gap - gap) < 3 * (result.gap.sd + sd) + 0.05, result.k
    chosen = next(k for i, k in enumerate(ks[:-1]) if gaps[i] >= gaps[i + 1] - sds[i + 1])
    assert chosen == 4


@pytest.mark.parametrize("selection", ["silhouette", "elbow", "gap", "calinski_harabasz", "davies_bouldin"])
def test_each_rule_picks_the_four_clear_segments(sweep, selection):
    result = choose_k(sweep.results, ModelSettings(k={"min": 2, "max": 7}, selection=selection))
    assert result.chosen.k == 4
    assert result.runner_up is not None and result.runner_up.k != 4


def test_a_preference_range_picks_the_best_k_inside_it_and_says_so(sweep):
    result = choose_k(sweep.results, ModelSettings(k={"min": 2, "max": 7}, prefer={"min": 5, "max": 7}))
    assert result.chosen.k in (5, 6, 7)
    best_inside = max((r for r in sweep.results if r.k >= 5), key=lambda r: r.silhouette)
    assert result.chosen is best_inside
    assert (
        "within the preferred k=5..7" in result.rule and "k=4 would win without the preference" in result.rule
    )


def test_restarts_keep_the_best_fit_and_report_the_gain(blobs):
    one = sweep_k(blobs[1], ModelSettings(k=6, restarts=1))
    five = sweep_k(blobs[1], ModelSettings(k=6, restarts=5))
    assert one.chosen.restart_gain == 0
    assert five.chosen.wssse <= one.chosen.wssse * (1 + 1e-9)
    # the five-start fit began with the same seed as the one-start fit: its gain is measured from there
    first = one.chosen.objectives[0]
    assert five.chosen.objectives[0] == pytest.approx(first, rel=1e-12)
    assert five.chosen.restart_gain == pytest.approx((first - min(five.chosen.objectives)) / first)


def test_stability_is_high_for_real_segments_and_low_for_noise(spark, blobs):
    settings = ModelSettings(k=4, restarts=1, stability_runs=3)
    real = sweep_k(blobs[1], settings).stability
    rng = np.random.default_rng(8)
    noise = spark.createDataFrame(
        [(Vectors.dense(p.tolist()),) for p in rng.uniform(size=(200, 3))], ["features"]
    )
    noisy = sweep_k(noise.cache(), settings).stability
    assert real["mean_ari"] > 0.95
    assert noisy["mean_ari"] < real["mean_ari"] - 0.1


@pytest.mark.parametrize("algorithm", ["bisecting_kmeans", "gaussian_mixture"])
def test_each_algorithm_runs_end_to_end(spark, demo_data, tmp_path, algorithm):
    model = {"algorithm": algorithm, "k": {"min": 4, "max": 6}, "stability_runs": 2}
    result = run(settings_from_dict(base_config(demo_data["customers"], str(tmp_path), model=model)), spark)
    assert result.manifest["k"]["algorithm"] == algorithm
    assert set(result.k_metrics["algorithm"]) == {algorithm}
    assignments = pd.read_parquet(f"{result.run_dir}/assignments")
    truth = pd.read_parquet(demo_data["truth"]).merge(assignments, on="customer_id")
    assert result.manifest["k"]["chosen"] == 5
    assert adjusted_rand_score(truth["true_segment"], truth["segment"]) >= 0.9
    stability = result.manifest["k"]["stability"]
    assert stability["runs"] == 2 and stability["mean_ari"] == pytest.approx(np.mean(stability["ari"]))
    assert 0 < stability["mean_ari"] <= 1
    if algorithm == "gaussian_mixture":
        assert assignments["probability"].between(0, 1).all() and assignments["probability"].mean() > 0.9
    else:
        assert "probability" not in assignments


def test_k_is_chosen_on_a_sample_and_the_chosen_k_fitted_on_all_rows(blobs):
    sampled = sweep_k(blobs[1], ModelSettings(k={"min": 2, "max": 6}, sample_size=120, restarts=2))
    assert sampled.chosen.k == 4
    assert 80 <= sampled.sample_rows <= 160 and sampled.rows == 200
    assert "on a uniform sample of" in sampled.rule
    assert sampled.chosen.stats.counts.sum() == 200  # the final fit and its metrics use every row
    # its first start on all rows is as good per customer as the sample's best: no more starts needed
    assert sampled.chosen.starts == 1 and all(r.starts == 2 for r in sampled.results)
    # fits on the sample only rank k and stop earlier; the final fit converges at Spark's default
    assert all(r.model.getTol() == SAMPLE_TOLERANCE for r in sampled.results)
    assert sampled.chosen.model.getTol() == 1e-4
    assert all(r.stats.counts.sum() == sampled.sample_rows for r in sampled.results)
    points, labels = _labels(sampled.chosen.model.transform(blobs[1]))
    assert sampled.chosen.stats.calinski_harabasz == pytest.approx(
        calinski_harabasz_score(points, labels), rel=1e-9
    )


def test_sampling_is_off_when_the_data_is_smaller_or_sample_size_is_0(blobs):
    for settings in (ModelSettings(k=4, sample_size=500), ModelSettings(k=4, sample_size=0)):
        result = sweep_k(blobs[1], settings)
        assert result.sample_rows is None and result.chosen.stats.counts.sum() == 200


def test_restarts_stop_at_the_first_fit_below_the_acceptance_bar(blobs):
    settings = ModelSettings(k=4, restarts=4)
    assert fit_k(blobs[1], settings, 4, accept_below=math.inf).starts == 1
    assert fit_k(blobs[1], settings, 4, accept_below=-math.inf).starts == 4
    # without a bar: at least three starts, then stop once two agree on the best (clear blobs: at once)
    unbarred = fit_k(blobs[1], settings, 4)
    assert unbarred.starts == 3 and unbarred.confirmed


def test_fitting_several_k_at_once_gives_the_same_sweep(blobs):
    one_by_one = sweep_k(blobs[1], ModelSettings(k={"min": 2, "max": 6}, parallel_fits=1, restarts=2))
    side_by_side = sweep_k(blobs[1], ModelSettings(k={"min": 2, "max": 6}, parallel_fits=3, restarts=2))
    timings = ["seconds"]
    assert (
        pd.DataFrame([r.metrics() for r in side_by_side.results])
        .drop(columns=timings)
        .equals(pd.DataFrame([r.metrics() for r in one_by_one.results]).drop(columns=timings))
    )
    assert side_by_side.chosen.k == one_by_one.chosen.k == 4
