"""The clustering algorithms and the rules that choose k, as two tables.

``ALGORITHMS``: ``model.algorithm`` -> how one start is fitted in the sweep, the Spark ML estimator of
the run's model, how to read a fitted model's centres and objective, and the columns its transform adds
to the assignments (a Gaussian mixture's membership probability).

``SELECTIONS``: ``model.selection`` -> the score per k that ranks the sweep (higher wins), its bootstrap
replicates for the noise of a win, the words the manifest and the report use, and the curve the report
draws for it.

Config validation, the sweep, the assignments and the report all read these tables: adding an algorithm
or a rule is one entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyspark.sql.functions as F
from pyspark.ml.clustering import BisectingKMeans, GaussianMixture, KMeans
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import Column, SparkSession

from segspark.metrics import CLUSTER, FEATURES, knee_scores
from segspark.runtime import is_connect

if TYPE_CHECKING:
    from segspark.config import ModelSettings
    from segspark.sweep import KResult

PROBABILITY = "probability"  # a Gaussian mixture's membership probabilities
# k-means' convergence tolerance, scikit-learn's: relative to the features' mean variance (1 when
# scaled), on the squared movement of the centres
LLOYD_TOLERANCE = 1e-4


@dataclass
class Fit:
    """One start of an algorithm at k on the sweep's customers."""

    centres: np.ndarray  # k x d, in cluster-index order (a mixture's component means)
    labels: np.ndarray  # each customer's cluster index
    objective: float  # what the starts minimise: WSSSE, or a mixture's negative log-likelihood
    model: Any = None  # the Spark ML model, for the algorithms Spark fits

    @property
    def filled(self) -> int:
        return len(np.unique(self.labels))


Fitter = Callable[[np.ndarray, int, int], Fit]  # (points, k, seed) -> Fit


@dataclass(frozen=True)
class Algorithm:
    """One entry of ``ALGORITHMS``."""

    estimator: type  # the Spark ML estimator
    fitter: Callable[[ModelSettings, SparkSession | None], Fitter]  # one start of the sweep
    centres: Callable[[Any], list[list[float]]]  # a fitted Spark model's centres, in cluster order
    objective: Callable[[Any], float]  # what restarts minimise, from a fitted Spark model
    params: dict[str, str] = field(default_factory=dict)  # estimator parameters beyond the common ones
    # the transform's columns beyond the cluster -> the assignments column each becomes (same name)
    outputs: dict[str, Callable[[], Column]] = field(default_factory=dict)


def lloyd_kmeans(settings: ModelSettings) -> Fitter:
    """k-means on the driver: one k-means++ start and Lloyd iterations (scikit-learn), no Spark job."""
    from sklearn.cluster import KMeans as LloydKMeans  # see job.BACKGROUND_IMPORTS

    def fit(points: np.ndarray, k: int, seed: int) -> Fit:
        model = LloydKMeans(
            n_clusters=k,
            init="k-means++",
            n_init=1,
            max_iter=settings.max_iter,
            tol=LLOYD_TOLERANCE,
            random_state=seed,
            algorithm="lloyd",
        ).fit(points)
        return Fit(model.cluster_centers_, model.labels_, float(model.inertia_))

    return fit


def spark_ml(settings: ModelSettings, spark: SparkSession | None) -> Fitter:
    """An algorithm of Spark ML (bisecting k-means, Gaussian mixture), fitted on the points as a
    DataFrame; the labels come back in the points' order."""
    algorithm = ALGORITHMS[settings.algorithm]

    def fit(points: np.ndarray, k: int, seed: int) -> Fit:
        columns = [f"x{j}" for j in range(points.shape[1])]
        frame = spark.createDataFrame(pd.DataFrame(points, columns=columns).reset_index(names="row")).select(
            "row", array_to_vector(F.array(*columns)).alias(FEATURES)
        )
        model = make_estimator(settings, k, seed).fit(frame)
        labelled = model.transform(frame).select("row", CLUSTER).toPandas()
        labels = np.empty(len(points), dtype=int)
        labels[labelled["row"].to_numpy()] = labelled[CLUSTER].to_numpy()
        return Fit(np.array(algorithm.centres(model)), labels, algorithm.objective(model), model)

    # Over Spark Connect the active session, which model calls and the freeing of a model on the server
    # need, is per thread: the sweep fits in its own thread there.
    fit.calling_thread_only = is_connect(spark)
    return fit


def cluster_centres(model) -> list[list[float]]:
    return [np.asarray(c, dtype=float).tolist() for c in model.clusterCenters()]


def component_means(model) -> list[list[float]]:
    return [row["mean"].toArray().tolist() for row in model.gaussiansDF.collect()]


def training_cost(model) -> float:
    return float(model.summary.trainingCost)


def negative_log_likelihood(model) -> float:
    return -float(model.summary.logLikelihood)


def max_probability() -> Column:
    """A mixture's membership probability of the assigned segment."""
    return F.array_max(vector_to_array(F.col(PROBABILITY)))


ALGORITHMS: dict[str, Algorithm] = {
    "kmeans": Algorithm(KMeans, lambda settings, _: lloyd_kmeans(settings), cluster_centres, training_cost),
    "bisecting_kmeans": Algorithm(BisectingKMeans, spark_ml, cluster_centres, training_cost),
    "gaussian_mixture": Algorithm(
        GaussianMixture,
        spark_ml,
        component_means,
        negative_log_likelihood,
        params={"probabilityCol": PROBABILITY},
        outputs={PROBABILITY: max_probability},
    ),
}


def fitter_for(settings: ModelSettings, spark: SparkSession | None = None) -> Fitter:
    return ALGORITHMS[settings.algorithm].fitter(settings, spark or SparkSession.getActiveSession())


def make_estimator(settings: ModelSettings, k: int, seed: int | None = None):
    """The Spark ML estimator of ``model.algorithm`` at k."""
    algorithm = ALGORITHMS[settings.algorithm]
    return algorithm.estimator(
        k=k,
        seed=settings.seed if seed is None else seed,
        maxIter=settings.max_iter,
        featuresCol=FEATURES,
        predictionCol=CLUSTER,
        **algorithm.params,
    )


Scores = Callable[[Sequence["KResult"]], np.ndarray]


@dataclass(frozen=True)
class Selection:
    """One entry of ``SELECTIONS``: a rule that chooses k."""

    wording: str  # the rule as k.rule states it: "highest silhouette"
    metric: str  # the score's name when two k are compared
    scores: Scores  # per k, higher wins
    replicated: Scores  # the same per bootstrap replicate of the customers (B x k)
    column: str  # the k_metrics column the report draws for the rule ...
    title: str  # ... under this title
    error_column: str | None = None  # ... with these error bars
    sign: float = 1.0  # score = sign x the metric: -1 when lower is better
    rank: Callable[[list[KResult]], list[KResult]] | None = None  # default: by score, ties to the smaller k
    needs_gap: bool = False  # the sweep computes the gap statistic for it

    def ranking(self, results: list[KResult]) -> list[KResult]:
        """The results best first."""
        if self.rank is not None:
            return self.rank(results)
        scores = self.scores(results)
        return [results[i] for i in sorted(range(len(results)), key=lambda i: (-scores[i], results[i].k))]


def metric_rule(name: str, sign: float = 1.0) -> dict[str, Scores]:
    """Scores from a metric every k has (``KResult.metrics()``), and from its bootstrap replicates."""
    return {
        "scores": lambda results: sign * np.array([r.metrics()[name] for r in results], dtype=float),
        "replicated": lambda results: sign * np.array([r.stats.bootstrap()[name] for r in results]).T,
    }


def elbow_scores(results: Sequence[KResult]) -> np.ndarray:
    return knee_scores([r.k for r in results], [r.wssse for r in results])


def elbow_replicated(results: Sequence[KResult]) -> np.ndarray:
    curves = np.array([r.stats.bootstrap()["wssse"] for r in results]).T  # B x k
    return np.array([knee_scores([r.k for r in results], list(curve)) for curve in curves])


def gap_replicated(results: Sequence[KResult]) -> np.ndarray:
    # the references stay fixed; the data's log W moves with the resample
    return np.array([r.gap.gap + math.log(r.wssse) - np.log(r.stats.bootstrap()["wssse"]) for r in results]).T


def gap_ranking(results: list[KResult]) -> list[KResult]:
    """The smallest k with Gap(k) >= Gap(k+1) - s(k+1) first, then the other qualifying k by size,
    then the rest by gap."""
    qualifying = [
        r for r, nxt in zip(results, results[1:], strict=False) if r.gap.gap >= nxt.gap.gap - nxt.gap.sd
    ]
    rest = sorted((r for r in results if r not in qualifying), key=lambda r: (-r.gap.gap, r.k))
    return [*qualifying, *rest]


# in the order the report draws their curves and lists their columns
SELECTIONS: dict[str, Selection] = {
    "silhouette": Selection(
        "highest silhouette",
        "silhouette",
        column="silhouette",
        title="Silhouette (higher is better)",
        **metric_rule("silhouette"),
    ),
    "elbow": Selection(
        "elbow of the WSSSE curve (Kneedle)",
        "elbow score",
        scores=elbow_scores,
        replicated=elbow_replicated,
        column="wssse",
        title="Elbow: within-segment sum of squares",
    ),
    "calinski_harabasz": Selection(
        "highest Calinski-Harabasz",
        "Calinski-Harabasz",
        column="calinski_harabasz",
        title="Calinski-Harabasz (higher is better)",
        **metric_rule("calinski_harabasz"),
    ),
    "davies_bouldin": Selection(
        "lowest Davies-Bouldin",
        "Davies-Bouldin",
        column="davies_bouldin",
        title="Davies-Bouldin (lower is better)",
        sign=-1.0,
        **metric_rule("davies_bouldin", sign=-1.0),
    ),
    "gap": Selection(
        "smallest k with Gap(k) >= Gap(k+1) - s(k+1)",
        "gap",
        scores=lambda results: np.array([r.gap.gap for r in results]),
        replicated=gap_replicated,
        column="gap",
        title="Gap statistic (± s.e.)",
        error_column="gap_sd",
        rank=gap_ranking,
        needs_gap=True,
    ),
}
