"""Choosing k like an expert: Calinski-Harabasz, Davies-Bouldin, the gap statistic and the elbow
against independent references, every selection rule on data where the answer is clear, and every
algorithm end to end."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pyspark.ml.functions import array_to_vector, vector_to_array
from sklearn.cluster import KMeans as SkKMeans
from sklearn.metrics import adjusted_rand_score, calinski_harabasz_score, davies_bouldin_score

from segspark.config import ModelSettings, settings_from_dict
from segspark.job import run
from segspark.metrics import CLUSTER, knee_scores
from segspark.prepare import FEATURES
from segspark.sweep import choose_k, fit_k, spark_model, sweep_k
from tests.conftest import base_config

CENTRES = np.array([[0.0, 0.0, 0.0], [6.0, 1.0, -3.0], [-4.0, 6.0, 1.0], [3.0, -6.0, 4.0]])


@pytest.fixture(scope="module")
def blobs() -> np.ndarray:
    rng = np.random.default_rng(3)
    return np.vstack([rng.normal(c, 0.7, size=(50, 3)) for c in CENTRES])


@pytest.fixture(scope="module")
def sweep(blobs):
    """One sweep with every metric (gap included), reused to test each rule."""
    return sweep_k(blobs, ModelSettings(k={"min": 2, "max": 7}, gap=True, gap_references=5, restarts=2))


@pytest.mark.parametrize("k", [2, 3, 4, 6])
def test_calinski_harabasz_davies_bouldin_and_wssse_match_scikit_learn(blobs, k):
    result = fit_k(blobs, ModelSettings(seed=5), k)
    labels = result.fit.labels
    assert result.stats.calinski_harabasz == pytest.approx(calinski_harabasz_score(blobs, labels), rel=1e-9)
    assert result.stats.davies_bouldin == pytest.approx(davies_bouldin_score(blobs, labels), rel=1e-9)
    within = sum(((blobs[labels == c] - blobs[labels == c].mean(axis=0)) ** 2).sum() for c in set(labels))
    assert result.stats.wssse == pytest.approx(within, rel=1e-9)
    assert result.fit.objective == pytest.approx(within, rel=1e-9)


def test_the_chosen_fit_becomes_a_spark_model_that_assigns_as_it_did(spark, blobs, sweep):
    model = spark_model(spark, sweep.chosen)
    centres = np.array(model.clusterCenters())
    assert sorted(map(tuple, centres.tolist())) == sorted(map(tuple, sweep.chosen.fit.centres.tolist()))
    frame = spark.createDataFrame(pd.DataFrame({"x": [p.tolist() for p in blobs]})).select(
        array_to_vector("x").alias(FEATURES)
    )
    assigned = model.transform(frame).select(vector_to_array(FEATURES).alias("x"), CLUSTER).toPandas()
    # the nearest centre of each customer, worked out with numpy
    points = np.stack(assigned["x"].to_numpy())
    nearest = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
    np.testing.assert_array_equal(assigned[CLUSTER].to_numpy(), nearest)
    assert adjusted_rand_score(sweep.chosen.fit.labels, nearest) == 1.0


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
    gaps, sds = _numpy_gap(blobs, ks, references=5, seed=1)
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
    one = sweep_k(blobs, ModelSettings(k=6, restarts=1))
    five = sweep_k(blobs, ModelSettings(k=6, restarts=5))
    assert one.chosen.restart_gain == 0
    assert five.chosen.wssse <= one.chosen.wssse * (1 + 1e-9)
    # the five-start fit began with the same seed as the one-start fit: its gain is measured from there
    first = one.chosen.objectives[0]
    assert five.chosen.objectives[0] == pytest.approx(first, rel=1e-12)
    assert five.chosen.restart_gain == pytest.approx((first - min(five.chosen.objectives)) / first)


def test_stability_is_high_for_real_segments_and_low_for_noise(blobs):
    settings = ModelSettings(k=4, restarts=1, stability_runs=3)
    real = sweep_k(blobs, settings).stability
    noisy = sweep_k(np.random.default_rng(8).uniform(size=(200, 3)), settings).stability
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
    # bisecting's greedy splits cannot undo an early one: here it cuts one segment and merges two
    floor = 0.8 if algorithm == "bisecting_kmeans" else 0.9
    assert adjusted_rand_score(truth["true_segment"], truth["segment"]) >= floor
    stability = result.manifest["k"]["stability"]
    assert stability["runs"] == 2 and stability["mean_ari"] == pytest.approx(np.mean(stability["ari"]))
    assert 0.75 < stability["mean_ari"] <= 1
    if algorithm == "gaussian_mixture":
        assert assignments["probability"].between(0, 1).all() and assignments["probability"].mean() > 0.9
    else:
        assert "probability" not in assignments


def test_k_and_the_preparation_come_from_a_sample_and_every_customer_is_assigned(spark, demo_data, tmp_path):
    config = base_config(demo_data["customers"], str(tmp_path), model={"sample_size": 1000})
    result = run(settings_from_dict(config), spark)
    k = result.manifest["k"]
    assert 900 <= k["sweep_rows"] <= 1100 and "on a uniform sample of" in k["rule"]
    assert k["chosen"] == 5 and result.rows["assigned"] == 3000
    customers = pd.read_parquet(demo_data["customers"])
    features = result.manifest["space"]["vector_columns"]
    # the scaler was fitted on the sample: near the table's mean and sd, yet not equal to them
    mean, sd = customers[features].mean(), customers[features].std()
    assert np.allclose(result.manifest["space"]["scaler_mean"], mean, atol=0.15 * sd.max())
    assert not np.allclose(result.manifest["space"]["scaler_mean"], mean, rtol=1e-9)
    truth = pd.read_parquet(demo_data["truth"]).merge(pd.read_parquet(f"{result.run_dir}/assignments"))
    assert adjusted_rand_score(truth["true_segment"], truth["segment"]) >= 0.95


def test_starts_stop_once_two_agree_on_the_best(blobs):
    # clear blobs: the first three starts agree at once
    result = fit_k(blobs, ModelSettings(k=4, restarts=4), 4)
    assert result.starts == 3 and result.confirmed
    lone = fit_k(blobs, ModelSettings(k=4, restarts=1), 4)
    assert lone.starts == 1 and not lone.confirmed


def test_fitting_several_k_at_once_gives_the_same_sweep(blobs):
    one_by_one = sweep_k(blobs, ModelSettings(k={"min": 2, "max": 6}, parallel_fits=1, restarts=2))
    side_by_side = sweep_k(blobs, ModelSettings(k={"min": 2, "max": 6}, parallel_fits=3, restarts=2))
    timings = ["seconds"]
    assert (
        pd.DataFrame([r.metrics() for r in side_by_side.results])
        .drop(columns=timings)
        .equals(pd.DataFrame([r.metrics() for r in one_by_one.results]).drop(columns=timings))
    )
    assert side_by_side.chosen.k == one_by_one.chosen.k == 4
