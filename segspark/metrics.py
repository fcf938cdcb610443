"""Cluster-quality metrics, computed in Spark on the scaled features.

Only per-cluster summaries (k rows) reach the driver: counts, mean vectors, sums of squares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyspark.sql.functions as F
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame

from segspark.prepare import FEATURES

CLUSTER = "cluster"  # the clustering's own cluster index
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


@dataclass(frozen=True)
class ClusterStats:
    """Per-cluster summaries of a clustering, enough for WSSSE, Calinski-Harabasz and Davies-Bouldin."""

    clusters: list[int]  # the non-empty clusters' indices, in the order of the arrays below
    counts: np.ndarray  # n_j
    means: np.ndarray  # m_j (k x d)
    within: np.ndarray  # sum of squared distances to m_j, per cluster
    spread: np.ndarray  # mean Euclidean distance to m_j, per cluster

    @property
    def wssse(self) -> float:
        return float(self.within.sum())

    @property
    def calinski_harabasz(self) -> float:
        """Between- over within-cluster dispersion, each per degree of freedom (Calinski & Harabasz 1974)."""
        n, k = self.counts.sum(), len(self.counts)
        centre = (self.counts[:, None] * self.means).sum(axis=0) / n
        between = float((self.counts * ((self.means - centre) ** 2).sum(axis=1)).sum())
        if k < 2 or self.wssse == 0:
            return math.nan
        return between / (k - 1) / (self.wssse / (n - k))

    @property
    def davies_bouldin(self) -> float:
        """Mean over clusters of the worst (s_i + s_j) / d(m_i, m_j) (Davies & Bouldin 1979); lower wins."""
        k = len(self.counts)
        if k < 2:
            return math.nan
        distance = np.linalg.norm(self.means[:, None, :] - self.means[None, :, :], axis=2)
        ratio = (self.spread[:, None] + self.spread[None, :]) / np.where(distance > 0, distance, np.inf)
        np.fill_diagonal(ratio, -np.inf)
        return float(ratio.max(axis=1).mean())


def cluster_stats(
    predictions: DataFrame, features_col: str = FEATURES, prediction_col: str = CLUSTER
) -> ClusterStats:
    """Two passes over the data: counts, means and sums of squares; then distances to the means."""
    squares = F.aggregate(vector_to_array(F.col(features_col)), F.lit(0.0), lambda total, x: total + x * x)
    rows = (
        predictions.groupBy(prediction_col)
        .agg(
            F.count(F.lit(1)).alias("n"),
            Summarizer.mean(F.col(features_col)).alias("mean"),
            F.sum(squares).alias("squares"),
        )
        .orderBy(prediction_col)
        .collect()
    )
    clusters = [r[prediction_col] for r in rows]
    counts = np.array([r["n"] for r in rows], dtype=float)
    means = np.array([r["mean"].toArray() for r in rows])
    # sum ||x - m||^2 = sum ||x||^2 - n ||m||^2: exact in the scaled space, where values are O(1)
    within = np.maximum(np.array([r["squares"] for r in rows]) - counts * (means**2).sum(axis=1), 0.0)
    table = F.create_map(
        *[
            p
            for c, m in zip(clusters, means, strict=True)
            for p in (F.lit(c), F.array(*map(F.lit, m.tolist())))
        ]
    )
    centre = F.element_at(table, F.col(prediction_col))
    distance = F.sqrt(
        F.aggregate(
            F.zip_with(vector_to_array(F.col(features_col)), centre, lambda x, m: (x - m) * (x - m)),
            F.lit(0.0),
            lambda total, x: total + x,
        )
    )
    mean_distance = dict(
        predictions.groupBy(prediction_col)
        .agg(F.avg(distance).alias("d"))
        .select(prediction_col, "d")
        .collect()
    )
    spread = np.array([mean_distance[c] for c in clusters])
    return ClusterStats(clusters, counts, means, within, spread)


def knee_scores(ks: list[int], values: list[float]) -> np.ndarray:
    """Kneedle (Satopää et al. 2011) for a decreasing curve such as WSSSE: after scaling both axes to
    [0, 1], how far each point lies below the straight line from the first point to the last. The
    elbow is the k with the highest score."""
    if len(ks) < 3:
        return np.zeros(len(ks))
    x = (np.array(ks, dtype=float) - ks[0]) / (ks[-1] - ks[0])
    y = np.array(values, dtype=float)
    span = y.max() - y.min()
    y = (y - y.min()) / span if span > 0 else np.zeros_like(y)
    return (1 - x) - y


def adjusted_rand(predictions: DataFrame, a: str, b: str) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985) of two labelings, from their contingency table."""
    table = np.array([r["n"] for r in predictions.groupBy(a, b).agg(F.count(F.lit(1)).alias("n")).collect()])
    rows = np.array([r["n"] for r in predictions.groupBy(a).agg(F.count(F.lit(1)).alias("n")).collect()])
    cols = np.array([r["n"] for r in predictions.groupBy(b).agg(F.count(F.lit(1)).alias("n")).collect()])

    def pairs(counts: np.ndarray) -> float:
        return float((counts * (counts - 1) / 2).sum())

    n = rows.sum()
    index, expected = pairs(table), pairs(rows) * pairs(cols) / (n * (n - 1) / 2)
    maximum = (pairs(rows) + pairs(cols)) / 2
    return 1.0 if maximum == expected else (index - expected) / (maximum - expected)


@dataclass(frozen=True)
class Gap:
    gap: float
    sd: float  # s_k = sd of the reference log(W) * sqrt(1 + 1/B)


def reference_sets(
    prepared: DataFrame, references: int, seed: int, features_col: str = FEATURES
) -> list[DataFrame]:
    """B data sets drawn uniformly over the bounding box of the scaled features, each of the same size."""
    bounds = prepared.agg(
        Summarizer.min(F.col(features_col)).alias("lo"), Summarizer.max(F.col(features_col)).alias("hi")
    ).first()
    low, high = bounds["lo"].toArray(), bounds["hi"].toArray()
    rows = prepared.count()
    partitions = max(1, prepared.rdd.getNumPartitions())
    sets = []
    for b in range(references):
        draws = [
            F.rand(seed + 1000 * b + j) * float(high[j] - low[j]) + float(low[j]) for j in range(len(low))
        ]
        sets.append(
            prepared.sparkSession.range(0, rows, numPartitions=partitions).select(
                array_to_vector(F.array(*draws)).alias(features_col)
            )
        )
    return sets


def gap_statistic(log_w: float, reference_log_w: list[float]) -> Gap:
    """Gap(k) = mean_b log(W*_kb) - log(W_k) (Tibshirani, Walther & Hastie 2001)."""
    reference = np.array(reference_log_w)
    b = len(reference)
    return Gap(float(reference.mean() - log_w), float(reference.std(ddof=0) * math.sqrt(1 + 1 / b)))
