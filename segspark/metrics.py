"""Cluster-quality metrics, computed in Spark on the scaled features."""

from __future__ import annotations

from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.sql import DataFrame

from segspark.prepare import FEATURES

CLUSTER = "cluster"  # k-means' own cluster index
SEGMENT = "segment"  # the run's segment id (see segments.py)


def silhouette(predictions: DataFrame, features_col: str = FEATURES, prediction_col: str = CLUSTER) -> float:
    """Mean silhouette with squared Euclidean distance, as Spark's ClusteringEvaluator defines it."""
    evaluator = ClusteringEvaluator(
        featuresCol=features_col,
        predictionCol=prediction_col,
        metricName="silhouette",
        distanceMeasure="squaredEuclidean",
    )
    return float(evaluator.evaluate(predictions))
