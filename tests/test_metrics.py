"""The sweep's metrics against scikit-learn and Spark's ClusteringEvaluator on the same rows and labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.functions import array_to_vector
from sklearn.cluster import KMeans as SkKMeans
from sklearn.metrics import silhouette_samples, silhouette_score

from segspark.metrics import cluster_stats


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(3)
    centers = np.array([[0.0, 0.0, 0.0], [4.0, 1.0, -2.0], [-3.0, 5.0, 1.0]])
    return np.vstack([rng.normal(c, 0.8, size=(40, 3)) for c in centers])


def _labels(points: np.ndarray, k: int) -> np.ndarray:
    return SkKMeans(k, n_init=1, random_state=1).fit(points).labels_


@pytest.mark.parametrize("k", [2, 3, 5])
def test_the_silhouette_matches_scikit_learn_and_spark(spark, blobs, k):
    labels = _labels(blobs, k)
    stats = cluster_stats(blobs, labels)
    assert stats.silhouette == pytest.approx(silhouette_score(blobs, labels, metric="sqeuclidean"), abs=1e-9)
    frame = spark.createDataFrame(
        pd.DataFrame({"x": [p.tolist() for p in blobs], "cluster": labels.astype(int)})
    ).select(array_to_vector("x").alias("features"), "cluster")
    spark_silhouette = ClusteringEvaluator(
        predictionCol="cluster", distanceMeasure="squaredEuclidean"
    ).evaluate(frame)
    assert stats.silhouette == pytest.approx(spark_silhouette, abs=1e-9)


def test_a_customer_alone_in_its_cluster_scores_zero():
    points = np.array([[0.0], [0.2], [5.0]])
    # a(0) = 0.04, b(0) = 25: 1 - 0.04/25; a(1) = 0.04, b(1) = 23.04: 1 - 0.04/23.04; customer 2: 0
    expected = ((1 - 0.04 / 25) + (1 - 0.04 / 23.04) + 0) / 3
    assert cluster_stats(points, np.array([0, 0, 1])).silhouette == pytest.approx(expected, abs=1e-12)


def test_cluster_indices_need_not_be_dense():
    points = np.array([[0.0], [0.2], [5.0], [5.4]])
    stats = cluster_stats(points, np.array([7, 7, 2, 2]))
    assert stats.clusters == [2, 7]
    np.testing.assert_allclose(stats.means[:, 0], [5.2, 0.1])
    assert stats.wssse == pytest.approx(0.02 + 0.08, abs=1e-12)


def test_the_bootstrap_noise_matches_the_standard_error_of_the_customers(blobs):
    labels = _labels(blobs, 3)
    stats = cluster_stats(blobs, labels)
    replicated = stats.bootstrap()["silhouette"]
    samples = silhouette_samples(blobs, labels, metric="sqeuclidean")
    assert len(replicated) == 30
    assert replicated.std(ddof=1) == pytest.approx(samples.std(ddof=1) / np.sqrt(len(samples)), rel=0.35)
    assert abs(replicated.mean() - samples.mean()) < 3 * samples.std() / np.sqrt(len(samples))
    # each replicate weighs every customer by a Poisson(1) draw: about n in all
    assert stats.replicates["weights"].sum(axis=1).mean() == pytest.approx(len(blobs), rel=0.05)
    # the same seed gives the same resamples, so k values are compared on equal terms
    again = cluster_stats(blobs, _labels(blobs, 2))
    np.testing.assert_array_equal(
        again.replicates["weights"].sum(axis=1), stats.replicates["weights"].sum(axis=1)
    )
