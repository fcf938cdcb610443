"""Cluster-quality metrics, computed in Spark on the scaled features.

Only per-cluster summaries (k rows) reach the driver: counts, mean vectors, sums of squares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import reduce

import numpy as np
import pyspark.sql.functions as F
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import Column, DataFrame

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


BOOTSTRAP_REPLICATES = 30  # Poisson-weighted replicates of every sum below: the metrics' noise
# P(Poisson(1) <= w) for w = 0..7: a uniform draw below the w-th bound counts the row w times
_POISSON_BOUNDS = np.cumsum([math.exp(-1) / math.factorial(w) for w in range(8)]).tolist()


@dataclass(frozen=True)
class ClusterStats:
    """Per-cluster sums of a clustering, enough for every metric: silhouette, WSSSE, Calinski-Harabasz
    and Davies-Bouldin; with the same sums under Poisson bootstrap weights, enough for their noise."""

    clusters: list[int]  # the non-empty clusters' indices, in the order of the arrays below
    counts: np.ndarray  # n_j
    means: np.ndarray  # m_j (k x d)
    within: np.ndarray  # sum of squared distances to m_j, per cluster
    spread: np.ndarray  # mean Euclidean distance to m_j, per cluster
    silhouettes: np.ndarray  # sum of the customers' silhouette coefficients, per cluster
    # B x k each: the sums of weights, squared distances, distances and silhouettes per replicate
    replicates: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def wssse(self) -> float:
        return float(self.within.sum())

    @property
    def silhouette(self) -> float:
        """Mean silhouette with squared Euclidean distance, as Spark's ClusteringEvaluator defines it."""
        return float(self.silhouettes.sum() / self.counts.sum())

    @property
    def calinski_harabasz(self) -> float:
        """Between- over within-cluster dispersion, each per degree of freedom (Calinski & Harabasz 1974)."""
        return _calinski_harabasz(self.counts, self.means, self.wssse)

    @property
    def davies_bouldin(self) -> float:
        """Mean over clusters of the worst (s_i + s_j) / d(m_i, m_j) (Davies & Bouldin 1979); lower wins."""
        return _davies_bouldin(self.means, self.spread)

    def bootstrap(self) -> dict[str, np.ndarray]:
        """Each metric once per bootstrap replicate (B values), with this clustering's centres kept."""
        weights, within = self.replicates["weights"], self.replicates["within"]
        spread = self.replicates["distances"] / np.where(weights > 0, weights, 1.0)
        return {
            "silhouette": self.replicates["silhouettes"].sum(axis=1) / weights.sum(axis=1),
            "wssse": within.sum(axis=1),
            "calinski_harabasz": np.array(
                [_calinski_harabasz(w, self.means, s.sum()) for w, s in zip(weights, within, strict=True)]
            ),
            "davies_bouldin": np.array([_davies_bouldin(self.means, s) for s in spread]),
        }


def _calinski_harabasz(counts: np.ndarray, means: np.ndarray, wssse: float) -> float:
    n, k = counts.sum(), len(counts)
    if k < 2 or wssse == 0:
        return math.nan
    centre = (counts[:, None] * means).sum(axis=0) / n
    between = float((counts * ((means - centre) ** 2).sum(axis=1)).sum())
    return between / (k - 1) / (wssse / (n - k))


def _davies_bouldin(means: np.ndarray, spread: np.ndarray) -> float:
    k = len(means)
    if k < 2:
        return math.nan
    distance = np.linalg.norm(means[:, None, :] - means[None, :, :], axis=2)
    ratio = (spread[:, None] + spread[None, :]) / np.where(distance > 0, distance, np.inf)
    np.fill_diagonal(ratio, -np.inf)
    return float(ratio.max(axis=1).mean())


def _dot(x: Column, vector: np.ndarray) -> Column:
    """x . v for an array column x and a constant vector v."""
    return reduce(lambda total, term: total + term, [x[j] * float(v) for j, v in enumerate(vector)])


def poisson_weight(draw: Column) -> Column:
    """A Poisson(1) draw from a uniform one (a column: a random expression inside the branches below
    would be drawn only where its branch runs): how often the row appears in a bootstrap resample."""
    weight = F.lit(len(_POISSON_BOUNDS))
    for w, bound in reversed(list(enumerate(_POISSON_BOUNDS))):
        weight = F.when(draw < bound, F.lit(w)).otherwise(weight)
    return weight.cast("double")


def cluster_stats(
    predictions: DataFrame,
    features_col: str = FEATURES,
    prediction_col: str = CLUSTER,
    replicates: int = BOOTSTRAP_REPLICATES,
    seed: int = 0,
) -> ClusterStats:
    """Two passes over the data: counts, means and sums of squares per cluster; then, with those, each
    customer's distance to its centre and silhouette, summed per cluster, plainly and per bootstrap
    replicate.

    The silhouette is Spark's (ClusteringEvaluator, squared Euclidean): for a customer x in cluster A,
    the mean squared distance to the members of a cluster C is ||x||^2 - 2 x.m_C + mean_C ||y||^2, so
    it needs only each cluster's count, mean and mean squared norm; a excludes x itself (n_A / (n_A-1))
    and a customer alone in its cluster scores 0.
    """
    x = vector_to_array(F.col(features_col))
    squares = F.aggregate(x, F.lit(0.0), lambda total, v: total + v * v)
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
    squared_norms = np.array([r["squares"] for r in rows])
    # sum ||x - m||^2 = sum ||x||^2 - n ||m||^2: exact in the scaled space, where values are O(1)
    within = np.maximum(squared_norms - counts * (means**2).sum(axis=1), 0.0)

    own = F.col(prediction_col)
    per_row = predictions.select(own.alias(prediction_col), x.alias("x"), squares.alias("xx")).select(
        prediction_col,
        "xx",
        *[_dot(F.col("x"), m).alias(f"dot{i}") for i, m in enumerate(means)],
        *[F.rand(seed * 1_000 + b).alias(f"u{b}") for b in range(replicates)],
    )
    xx = F.col("xx")
    # mean squared distance to the members of each cluster, and to each centre
    to_members = [
        xx - 2 * F.col(f"dot{i}") + float(q / n)
        for i, (q, n) in enumerate(zip(squared_norms, counts, strict=True))
    ]
    to_centre = [xx - 2 * F.col(f"dot{i}") + float(m @ m) for i, m in enumerate(means)]

    def of_own(values: list) -> Column:
        choice = F.lit(None)
        for c, value in zip(clusters, values, strict=True):
            choice = F.when(own == c, value).otherwise(choice)
        return choice

    size = of_own([F.lit(float(n)) for n in counts])
    a = of_own(to_members) * size / (size - 1)
    b = F.least(*[F.when(own != c, v) for c, v in zip(clusters, to_members, strict=True)])
    coefficient = (
        F.when(size <= 1, 0.0).when(a < b, 1 - a / b).when(a > b, b / a - 1).otherwise(0.0)
        if len(clusters) > 1
        else F.lit(0.0)
    )
    squared = F.greatest(of_own(to_centre), F.lit(0.0))
    measures = per_row.select(
        own.alias(prediction_col),
        squared.alias("sq"),
        F.sqrt(squared).alias("d"),
        coefficient.alias("s"),
        *[poisson_weight(F.col(f"u{b}")).alias(f"w{b}") for b in range(replicates)],
    )
    sums = {
        r[prediction_col]: r
        for r in measures.groupBy(prediction_col)
        .agg(
            F.sum("d").alias("d"),
            F.sum("s").alias("s"),
            *[
                F.sum(F.col(f"w{b}") * F.col(name)).alias(f"{name}{b}")
                for b in range(replicates)
                for name in ("sq", "d", "s")
            ],
            *[F.sum(f"w{b}").alias(f"n{b}") for b in range(replicates)],
        )
        .collect()
    }
    ordered = [sums[c] for c in clusters]

    def per_replicate(name: str) -> np.ndarray:
        return np.array([[r[f"{name}{b}"] for r in ordered] for b in range(replicates)], dtype=float)

    return ClusterStats(
        clusters=clusters,
        counts=counts,
        means=means,
        within=within,
        spread=np.array([r["d"] for r in ordered]) / counts,
        silhouettes=np.array([r["s"] for r in ordered], dtype=float),
        replicates={
            "weights": per_replicate("n"),
            "within": per_replicate("sq"),
            "distances": per_replicate("d"),
            "silhouettes": per_replicate("s"),
        },
    )


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
