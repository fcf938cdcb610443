"""Silhouette per k against scikit-learn on the same scaled rows and labels."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import Vectors
from sklearn.metrics import silhouette_samples, silhouette_score

from segspark.config import ModelSettings
from segspark.metrics import CLUSTER, cluster_stats, silhouette
from segspark.prepare import FEATURES
from segspark.sweep import make_estimator


@pytest.fixture(scope="module")
def blobs(spark):
    rng = np.random.default_rng(3)
    centers = np.array([[0.0, 0.0, 0.0], [4.0, 1.0, -2.0], [-3.0, 5.0, 1.0]])
    points = np.vstack([rng.normal(c, 0.8, size=(40, 3)) for c in centers])
    rows = [(i, Vectors.dense(p.tolist())) for i, p in enumerate(points)]
    return spark.createDataFrame(rows, ["id", FEATURES]).cache()


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_silhouette_matches_scikit_learn_squared_euclidean(blobs, k):
    predictions = make_estimator(ModelSettings(), k, seed=1).fit(blobs).transform(blobs)
    rows = predictions.select(vector_to_array(FEATURES).alias("x"), CLUSTER).orderBy("id").collect()
    points = np.array([r.x for r in rows])
    labels = np.array([r[CLUSTER] for r in rows])
    expected = silhouette_score(points, labels, metric="sqeuclidean")
    assert silhouette(predictions) == pytest.approx(expected, abs=1e-9)


def _points_and_labels(predictions) -> tuple[np.ndarray, np.ndarray]:
    rows = predictions.select(vector_to_array(FEATURES).alias("x"), CLUSTER).orderBy("id").collect()
    return np.array([r.x for r in rows]), np.array([r[CLUSTER] for r in rows])


@pytest.mark.parametrize("k", [2, 3, 5])
def test_the_one_pass_silhouette_matches_scikit_learn_and_spark(blobs, k):
    predictions = make_estimator(ModelSettings(), k, seed=1).fit(blobs).transform(blobs)
    points, labels = _points_and_labels(predictions)
    stats = cluster_stats(predictions)
    assert stats.silhouette == pytest.approx(silhouette_score(points, labels, metric="sqeuclidean"), abs=1e-9)
    assert stats.silhouette == pytest.approx(silhouette(predictions), abs=1e-9)


def test_a_customer_alone_in_its_cluster_scores_zero(spark):
    rows = [(0, Vectors.dense([0.0])), (1, Vectors.dense([0.2])), (2, Vectors.dense([5.0]))]
    predictions = spark.createDataFrame(
        [(i, v, 0 if i < 2 else 1) for i, v in rows], ["id", FEATURES, CLUSTER]
    )
    # a(0) = 0.04, b(0) = 25: 1 - 0.04/25; a(1) = 0.04, b(1) = 23.04: 1 - 0.04/23.04; customer 2: 0
    expected = ((1 - 0.04 / 25) + (1 - 0.04 / 23.04) + 0) / 3
    assert cluster_stats(predictions).silhouette == pytest.approx(expected, abs=1e-12)


def test_the_bootstrap_noise_matches_the_standard_error_of_the_customers(blobs):
    predictions = make_estimator(ModelSettings(), 3, seed=1).fit(blobs).transform(blobs)
    points, labels = _points_and_labels(predictions)
    stats = cluster_stats(predictions)
    replicated = stats.bootstrap()["silhouette"]
    samples = silhouette_samples(points, labels, metric="sqeuclidean")
    assert len(replicated) == 30
    assert replicated.std(ddof=1) == pytest.approx(samples.std(ddof=1) / np.sqrt(len(samples)), rel=0.35)
    assert abs(replicated.mean() - samples.mean()) < 3 * samples.std() / np.sqrt(len(samples))
    # each replicate weighs every customer by a Poisson(1) draw: about n in all
    assert stats.replicates["weights"].sum(axis=1).mean() == pytest.approx(len(points), rel=0.05)
