"""Fitting each k (and algorithm), collecting the metrics per k, and choosing k.

Per k: ``model.restarts`` fits from different seeds (k-means|| initialisation for k-means), keeping
the best (lowest WSSSE; highest log-likelihood for a Gaussian mixture); then silhouette, WSSSE,
Calinski-Harabasz, Davies-Bouldin and, when asked, the gap statistic. k is chosen by
``model.selection``, inside ``model.prefer`` when given.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyspark.sql.functions as F
from pyspark.ml.clustering import BisectingKMeans, GaussianMixture, KMeans
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame

from segspark.config import ModelSettings
from segspark.errors import InputDataError
from segspark.metrics import (
    CLUSTER,
    ClusterStats,
    Gap,
    adjusted_rand,
    cluster_stats,
    gap_statistic,
    knee_scores,
    reference_sets,
    silhouette,
)
from segspark.prepare import FEATURES

log = logging.getLogger(__name__)

PROBABILITY = "probability"  # a Gaussian mixture's membership probabilities
STABILITY_CLUSTER = "stability_cluster"
STABILITY_SEED_OFFSET = 1000  # seeds of the stability refits, apart from those of the restarts
GOOD_START_TOLERANCE = 0.02  # see _good_enough
# k-means' convergence tolerance (centre movement) on the sample: ~25% fewer iterations than Spark's
# default 1e-4, with the same best WSSSE to 5 digits at every k of the benchmark
SAMPLE_TOLERANCE = 1e-3

Label = Callable[[str], AbstractContextManager]


@dataclass
class KResult:
    k: int
    model: Any  # KMeansModel | BisectingKMeansModel | GaussianMixtureModel
    silhouette: float
    stats: ClusterStats
    clusters: int  # non-empty clusters: k, unless bisecting or a mixture left some empty
    seconds: float
    restart_gain: float  # relative improvement of the objective by the restarts over the first fit
    gap: Gap | None = None
    starts: int = 1  # fits made at this k: model.restarts, or fewer when the first was good enough

    @property
    def wssse(self) -> float:
        return self.stats.wssse

    def metrics(self) -> dict[str, float | int]:
        return {
            "k": self.k,
            "clusters": self.clusters,
            "silhouette": self.silhouette,
            "wssse": self.wssse,
            "calinski_harabasz": self.stats.calinski_harabasz,
            "davies_bouldin": self.stats.davies_bouldin,
            "gap": self.gap.gap if self.gap else math.nan,
            "gap_sd": self.gap.sd if self.gap else math.nan,
            "restart_gain": self.restart_gain,
            "seconds": self.seconds,
        }


@dataclass
class SweepResult:
    algorithm: str
    results: list[KResult]
    chosen: KResult
    rule: str
    runner_up: KResult | None
    stability: dict[str, Any] = field(default_factory=dict)
    rows: int = 0  # customers the chosen model was fitted on
    sample_rows: int | None = None  # customers k was chosen on, when a sample


def make_estimator(settings: ModelSettings, k: int, seed: int | None = None, coarse: bool = False):
    """The estimator of ``model.algorithm`` at k. ``coarse``: k-means stops at SAMPLE_TOLERANCE, for
    fits on the sample that only rank k (the final fit on all rows converges fully)."""
    common = {
        "k": k,
        "seed": settings.seed if seed is None else seed,
        "maxIter": settings.max_iter,
        "featuresCol": FEATURES,
        "predictionCol": CLUSTER,
    }
    if settings.algorithm == "bisecting_kmeans":
        return BisectingKMeans(**common)
    if settings.algorithm == "gaussian_mixture":
        return GaussianMixture(**common, probabilityCol=PROBABILITY)
    # "auto" never picks the block solver on dense vectors; it is faster for the same result
    estimator = KMeans(**common, solver="block")
    return estimator.setTol(SAMPLE_TOLERANCE) if coarse else estimator


def centers_of(model) -> list[list[float]]:
    """Cluster centres (a mixture's component means) as lists, in cluster-index order."""
    if hasattr(model, "clusterCenters"):
        return [np.asarray(c, dtype=float).tolist() for c in model.clusterCenters()]
    return [row["mean"].toArray().tolist() for row in model.gaussiansDF.collect()]


def _fit(estimator, data: DataFrame):
    try:
        return estimator.fit(data)
    except Exception:
        if not (isinstance(estimator, KMeans) and estimator.getSolver() == "block"):
            raise
        # Spark's block solver fails when k-means|| finds fewer distinct centres than k (fewer distinct
        # customers than k); the row solver then leaves clusters empty, which the sweep handles
        log.info("k=%d: the block solver failed; fitting with the row solver", estimator.getK())
        return estimator.setSolver("row").fit(data)


def _objective(model) -> float:
    """What restarts minimise: k-means' cost, or a mixture's negative log-likelihood."""
    summary = model.summary
    return -float(summary.logLikelihood) if hasattr(summary, "logLikelihood") else float(summary.trainingCost)


def sweep_k(
    prepared: DataFrame, settings: ModelSettings, label: Label = lambda _: nullcontext()
) -> SweepResult:
    """Fit every k in the range on ``prepared`` (cache it first) and choose k.

    With more rows than ``model.sample_size``, k is chosen on a uniform sample of that size and the
    chosen k is then fitted (and its silhouette measured) on all rows. ``label(description)`` wraps
    each fit, so the caller can name the Spark jobs it starts.
    """
    rows = prepared.count()
    sampled = bool(settings.sample_size) and rows > settings.sample_size
    data = _sample(prepared, settings.sample_size / rows, settings.seed).persist() if sampled else prepared
    try:
        sweep = _sweep(data, settings, label, coarse=sampled)
        sweep.rows = rows
        if sampled:
            sweep.sample_rows = data.count()
            with label(f"final fit k={sweep.chosen.k} on all customers"):
                good = _good_enough(sweep.chosen.model, sweep.sample_rows, rows)
                final, _ = fit_k(prepared, settings, sweep.chosen.k, accept_below=good)
            if final is not None:
                sweep.chosen = final
            sweep.rule += f" (on a uniform sample of {sweep.sample_rows} of {rows} customers)"
        if settings.stability_runs:
            with label(f"stability k={sweep.chosen.k}"):
                sweep.stability = stability(data, sweep.chosen, settings)
    finally:
        if sampled:
            data.unpersist()
    return sweep


def _sample(prepared: DataFrame, fraction: float, seed: int) -> DataFrame:
    """A uniform sample in as many partitions as Spark has cores: the sweep runs hundreds of small jobs,
    and each partition is a task to schedule in every one of them."""
    cores = prepared.sparkSession.sparkContext.defaultParallelism
    return prepared.sample(fraction=fraction, seed=seed).coalesce(max(1, cores))


def _good_enough(sample_model, sample_rows: int, rows: int) -> float:
    """The objective below which a fit on all rows needs no more restarts: the sample's best per
    customer, with GOOD_START_TOLERANCE of slack for sampling noise. A start stuck in a poor local
    optimum (two centres in one group) is worse by far more than that."""
    per_row = _objective(sample_model) / sample_rows
    return (per_row + GOOD_START_TOLERANCE * abs(per_row)) * rows


def _sweep(data: DataFrame, settings: ModelSettings, label: Label, coarse: bool = False) -> SweepResult:
    with_gap = settings.gap or settings.selection == "gap"
    references = reference_sets(data, settings.gap_references, settings.seed) if with_gap else []

    def fit(k: int) -> tuple[KResult | None, int]:
        with label(f"sweep k={k}"):
            return fit_k(data, settings, k, references, coarse=coarse)

    # Each k is dozens of small Spark jobs: several k side by side keep the cores busy while the driver
    # plans the next job. The results do not depend on it (every fit has its own seed).
    with ThreadPoolExecutor(max_workers=settings.parallel_fits, thread_name_prefix="sweep") as pool:
        outcomes = list(pool.map(fit, settings.k_values))
    results: list[KResult] = []
    found = 0
    for k, (result, found) in zip(settings.k_values, outcomes, strict=True):
        if result is None:
            _clip_warning(found, k, settings)
            break
        log.info(
            "k=%d silhouette=%.4f wssse=%.1f CH=%.1f DB=%.3f%s (%.1fs)",
            k,
            result.silhouette,
            result.wssse,
            result.stats.calinski_harabasz,
            result.stats.davies_bouldin,
            f" gap={result.gap.gap:.3f}±{result.gap.sd:.3f}" if result.gap else "",
            result.seconds,
        )
        results.append(result)
    if not results:
        raise InputDataError(
            f"the usable customers have only {found} distinct feature values, fewer than "
            f"model.k.min={settings.k.min}. Lower model.k, or check the features and the rejects."
        )
    return choose_k(results, settings)


def fit_k(
    data: DataFrame,
    settings: ModelSettings,
    k: int,
    references: list[DataFrame] | None = None,
    accept_below: float | None = None,
    coarse: bool = False,
) -> tuple[KResult | None, int]:
    """The best of ``model.restarts`` fits at k with its metrics, and its non-empty clusters; None
    when k-means left clusters empty (fewer distinct customers than k). With ``accept_below``, the
    restarts stop at the first fit whose objective is below it."""
    started = time.perf_counter()
    fits, objectives = [], []
    for restart in range(settings.restarts):
        fits.append(_fit(make_estimator(settings, k, settings.seed + restart, coarse), data))
        objectives.append(_objective(fits[-1]))
        if accept_below is not None and objectives[-1] <= accept_below:
            break
    filled = [sum(1 for size in m.summary.clusterSizes if size > 0) for m in fits]
    # a fit that leaves clusters empty is worse than any that fills all k, whatever its cost
    best = min(range(len(fits)), key=lambda i: (filled[i] < k, objectives[i]))
    model, found = fits[best], filled[best]
    if found < k and (settings.algorithm == "kmeans" or found < 2):
        return None, found  # k-means leaves clusters empty only with fewer distinct customers than k
    if found < k:
        log.warning(
            "k=%d: %s left clusters empty in every start; the run has %d segments at this k",
            k,
            settings.algorithm,
            found,
        )
    predictions = model.transform(data)
    first = objectives[0]
    result = KResult(
        k=k,
        model=model,
        silhouette=silhouette(predictions),
        stats=cluster_stats(predictions),
        clusters=found,
        seconds=0.0,
        restart_gain=(first - min(objectives)) / abs(first) if first else 0.0,
        starts=len(fits),
    )
    if references:
        result.gap = _gap(result, references, settings)
    result.seconds = time.perf_counter() - started
    return result, found


def _gap(result: KResult, references: list[DataFrame], settings: ModelSettings) -> Gap:
    """One fit per reference set at the same k; log W of the data against the references'."""
    reference_log_w = []
    for data in references:
        model = make_estimator(settings, result.k).fit(data)
        reference_log_w.append(math.log(cluster_stats(model.transform(data)).wssse))
    return gap_statistic(math.log(result.wssse), reference_log_w)


def _clip_warning(found: int, k: int, settings: ModelSettings) -> None:
    if found < 2:
        raise InputDataError(
            "all usable customers have the same feature values: there is nothing to segment. "
            "Check the features (features.numeric / features.categorical) and the rejects."
        )
    log.warning(
        "k=%d found only %d distinct groups of customers: the k range %d..%d is clipped at k=%d",
        k,
        found,
        settings.k.min,
        settings.k.max,
        k - 1,
    )


def _ranking(results: list[KResult], selection: str) -> tuple[list[KResult], str]:
    """The results best first by the rule, and the rule's wording."""
    ks = [r.k for r in results]
    if selection == "calinski_harabasz":
        return sorted(results, key=lambda r: (-r.stats.calinski_harabasz, r.k)), "highest Calinski-Harabasz"
    if selection == "davies_bouldin":
        return sorted(results, key=lambda r: (r.stats.davies_bouldin, r.k)), "lowest Davies-Bouldin"
    if selection == "elbow":
        scores = knee_scores(ks, [r.wssse for r in results])
        order = sorted(range(len(results)), key=lambda i: (-scores[i], ks[i]))
        return [results[i] for i in order], "elbow of the WSSSE curve (Kneedle)"
    if selection == "gap":
        # the smallest k with Gap(k) >= Gap(k+1) - s(k+1) first, then the other qualifying k by size
        qualifying = [
            r for r, nxt in zip(results, results[1:], strict=False) if r.gap.gap >= nxt.gap.gap - nxt.gap.sd
        ]
        rest = sorted((r for r in results if r not in qualifying), key=lambda r: (-r.gap.gap, r.k))
        return [*qualifying, *rest], "smallest k with Gap(k) >= Gap(k+1) - s(k+1)"
    return sorted(results, key=lambda r: (-r.silhouette, r.k)), "highest silhouette"


def choose_k(results: list[KResult], settings: ModelSettings) -> SweepResult:
    """Rank by ``model.selection`` (ties go to the smaller k) within ``model.prefer`` when it has any k."""
    candidates, where = results, ""
    ks = [r.k for r in results]
    if settings.prefer is not None:
        inside = [r for r in results if settings.prefer.min <= r.k <= settings.prefer.max]
        if inside:
            candidates = inside
            where = f" within the preferred k={settings.prefer.min}..{settings.prefer.max}"
        else:
            log.warning("model.prefer %s has no k of the sweep; it is ignored", settings.prefer)
    ranked, wording = _ranking(candidates, settings.selection)
    rule = f"fixed k={ranked[0].k}" if len(ks) == 1 else f"{wording} over k={ks[0]}..{ks[-1]}{where}"
    if where:
        overall = _ranking(results, settings.selection)[0][0]
        if overall is not ranked[0]:
            rule += f" (k={overall.k} would win without the preference)"
    return SweepResult(
        algorithm=settings.algorithm,
        results=results,
        chosen=ranked[0],
        rule=rule,
        runner_up=ranked[1] if len(ranked) > 1 else None,
    )


def stability(prepared: DataFrame, chosen: KResult, settings: ModelSettings) -> dict[str, Any]:
    """Refit the chosen k on bootstrap samples; the adjusted Rand index of each refit's assignments
    of all customers against the chosen model's. Near 1: real structure; far below: noise."""
    labelled = chosen.model.transform(prepared).select(FEATURES, CLUSTER)
    scores = []
    for r in range(settings.stability_runs):
        seed = settings.seed + STABILITY_SEED_OFFSET + r
        sample = prepared.sample(withReplacement=True, fraction=1.0, seed=seed)
        refit = make_estimator(settings, chosen.k, seed).setPredictionCol(STABILITY_CLUSTER).fit(sample)
        scores.append(adjusted_rand(refit.transform(labelled), CLUSTER, STABILITY_CLUSTER))
    result = {
        "runs": settings.stability_runs,
        "k": chosen.k,
        "mean_ari": float(np.mean(scores)),
        "ari": scores,
    }
    log.info(
        "stability of k=%d over %d bootstrap refits: mean ARI %.3f", chosen.k, len(scores), result["mean_ari"]
    )
    return result


def max_probability() -> F.Column:
    """A mixture's membership probability of the assigned segment."""
    return F.array_max(vector_to_array(F.col(PROBABILITY)))
