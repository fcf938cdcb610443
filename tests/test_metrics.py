"""Silhouette per k against scikit-learn on the same scaled rows and labels."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import Vectors
from sklearn.metrics import silhouette_score

from segspark.config import ModelSettings
from segspark.metrics import CLUSTER, silhouette
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
