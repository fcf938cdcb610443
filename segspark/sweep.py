"""Fitting each k (and algorithm) on the sweep's customers, the metrics per k, and choosing k.

The sweep works on a matrix of scaled features in the driver's memory: all usable customers, or a
uniform sample of ``model.sample_size`` of them (see ``job.sample_for_sweep``). Its cost is the same at
any table size, and it starts no Spark job for k-means (scikit-learn's k-means++ and Lloyd iterations);
a bisecting k-means or a Gaussian mixture is fitted by Spark ML on the same rows.

Per k: fits from different seeds until two of them reach the best objective (lowest WSSSE; highest
log-likelihood for a Gaussian mixture), at least MIN_STARTS and at most ``model.restarts``; then
silhouette, WSSSE, Calinski-Harabasz, Davies-Bouldin and, when asked, the gap statistic, each with its
bootstrap noise. k is chosen by ``model.selection``, inside ``model.prefer`` when given; a winner within
the noise of the runner-up is a near tie, and a near tie with the earlier run's k keeps that k
(``model.continuity``). The chosen fit becomes a Spark model (``spark_model``) that assigns every row.
The algorithms and the selection rules are the tables of ``algorithms.py``.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyspark.sql.functions as F
from pyspark.ml.clustering import KMeans
from pyspark.ml.functions import array_to_vector
from pyspark.sql import SparkSession

from segspark.algorithms import ALGORITHMS, SELECTIONS, Fit, Fitter, fitter_for
from segspark.config import ModelSettings
from segspark.errors import InputDataError, SegsparkError
from segspark.metrics import (
    BOOTSTRAP_REPLICATES,
    CLUSTER,
    FEATURES,
    ClusterStats,
    Gap,
    cluster_stats,
    gap_statistic,
    reference_sets,
)

log = logging.getLogger(__name__)

STABILITY_SEED_OFFSET = 1000  # seeds of the stability refits, apart from those of the restarts
NEAR_TIE_SIGMAS = 2.0  # a winner by less than this many standard deviations of the noise: a near tie
MIN_PER_SEGMENT = 3  # customers per segment, on average, below which a k is not fitted
# Starts at each k before a best confirmed by two of them counts: one start in five lands in a poor
# optimum on the generated data, and two poor starts can land in the same one (scripts/optima.py)
MIN_STARTS = 3


@dataclass
class KResult:
    k: int
    fit: Fit  # the best start
    stats: ClusterStats
    seconds: float
    restart_gain: float  # relative improvement of the objective by the restarts over the first fit
    gap: Gap | None = None
    starts: int = 1  # fits made at this k (see fit_k)
    confirmed: bool = False  # a second start reached the best objective too
    objectives: list[float] = field(default_factory=list)  # each start's, in order

    @property
    def clusters(self) -> int:  # non-empty clusters: k, unless bisecting or a mixture left some empty
        return len(self.stats.clusters)

    @property
    def wssse(self) -> float:
        return self.stats.wssse

    @property
    def silhouette(self) -> float:
        return self.stats.silhouette

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
            "starts": self.starts,
            "confirmed": self.confirmed,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class Contest:
    """How clearly one k beat another by the selection rule: the difference of their scores (higher
    wins) and its noise, the standard deviation of that difference over bootstrap resamples of the
    customers the sweep saw."""

    winner: int
    other: int
    metric: str
    scores: tuple[float, float]
    margin: float
    noise: float

    @property
    def near_tie(self) -> bool:
        return abs(self.margin) < NEAR_TIE_SIGMAS * self.noise

    def describe(self) -> str:
        return (
            f"{self.metric} {self.scores[0]:.3f} at k={self.winner} vs {self.scores[1]:.3f} at "
            f"k={self.other}: a difference of {self.margin:.3f}, noise ±{NEAR_TIE_SIGMAS * self.noise:.3f}"
        )


@dataclass
class SweepResult:
    algorithm: str
    results: list[KResult]
    chosen: KResult
    rule: str
    runner_up: KResult | None
    contest: Contest | None = None  # the chosen k against the runner-up
    kept_earlier: bool = False  # a near tie resolved in favour of the earlier run's k
    stability: dict[str, Any] = field(default_factory=dict)
    rows: int = 0  # usable customers
    sample_rows: int | None = None  # customers k was chosen on, when a sample of them

    @property
    def near_tie(self) -> bool:
        return self.contest is not None and self.contest.near_tie

    def k_metrics(self) -> pd.DataFrame:
        """``k_metrics/``: one row per k fitted, with the metrics and whether it was chosen."""
        return pd.DataFrame(
            [
                {"algorithm": self.algorithm, **r.metrics(), "chosen": r.k == self.chosen.k}
                for r in self.results
            ]
        )

    def verdict(self) -> str | None:
        """The plain-words warning for a near tie, or None when the choice is clear."""
        if not self.near_tie:
            return None
        c = self.contest
        return (
            f"k = {c.winner} and k = {c.other} fit these customers almost equally well "
            f"({c.describe()}); either is a defensible number of segments"
        )


def spark_model(spark: SparkSession, chosen: KResult, seed: int = 0):
    """The chosen fit as a Spark ML model, the last stage of the run's PipelineModel.

    An algorithm Spark fitted is its own model. For k-means fitted on the driver, Spark ML's KMeans is
    fitted to the k centres themselves (random initialisation takes all k rows): each centre is then a
    cluster of one, and the model's centres are exactly the chosen ones, in Spark's cluster order.
    """
    if chosen.fit.model is not None:
        return chosen.fit.model
    centres = chosen.fit.centres
    # literals, not a local DataFrame: no Python worker is needed (Spark 3.5 parallelises local data
    # through Python when Arrow is off, and executors may have no Python)
    rows = F.array(*[F.array(*[F.lit(float(v)) for v in centre]) for centre in centres])
    frame = spark.range(1).select(F.explode(rows).alias("c")).select(array_to_vector("c").alias(FEATURES))
    model = KMeans(
        k=len(centres),
        initMode="random",
        maxIter=1,
        seed=seed,
        solver="row",
        featuresCol=FEATURES,
        predictionCol=CLUSTER,
    ).fit(frame)
    got = np.array(ALGORITHMS["kmeans"].centres(model))
    if sorted(map(tuple, got.tolist())) != sorted(map(tuple, centres.tolist())):
        raise SegsparkError(f"Spark's k-means model did not take the chosen centres: {got} vs {centres}")
    return model


def sweep_k(
    points: np.ndarray,
    settings: ModelSettings,
    fitter: Fitter | None = None,
    earlier_k: tuple[int, str] | None = None,
    population: int | None = None,
) -> SweepResult:
    """Fit every k in the range on ``points`` (customers x scaled features) and choose k.

    ``population``: the usable customers ``points`` were sampled from (None: ``points`` are all of them).
    ``earlier_k``: the k and run id of the run this one follows, which wins a near tie when
    ``model.continuity`` is on.
    """
    fitter = fitter or fitter_for(settings)
    rows = len(points)
    ks, clipped = usable_k(points, settings)
    sweep = choose_k(_sweep(points, settings, fitter, ks), settings, earlier_k, clipped)
    sweep.rows = population or rows
    if population is not None and population > rows:
        sweep.sample_rows = rows
        sweep.rule += f" (on a uniform sample of {rows} of {population} customers)"
    if settings.stability_runs:
        sweep.stability = stability(points, sweep.chosen, settings, fitter)
    for result in sweep.results:  # free the Spark models of the k not chosen (Connect caches them)
        if result is not sweep.chosen:
            result.fit.model = None
    return sweep


def usable_k(points: np.ndarray, settings: ModelSettings) -> tuple[list[int], str]:
    """The k of the range that the customers can fill, and how the range was clipped ("" if not).

    A segment needs MIN_PER_SEGMENT customers on average and distinct feature values to centre on;
    checking first keeps k-means from leaving clusters empty at a k too large.
    """
    wanted, rows = settings.k_values, len(points)
    distinct = len(np.unique(points, axis=0))
    if distinct < 2:
        raise InputDataError(
            "all usable customers have the same feature values: there is nothing to segment. "
            "Check the features (features.numeric / features.categorical) and the rejects."
        )
    by_rows = rows // MIN_PER_SEGMENT
    if by_rows < wanted[0]:
        raise InputDataError(
            f"{rows} usable customers are too few for k={settings.k.min}: segments need at least "
            f"{MIN_PER_SEGMENT} customers each on average, so at least {MIN_PER_SEGMENT * settings.k.min} "
            "customers. Add customers (see the rejects), or lower model.k."
        )
    if distinct < wanted[0]:
        raise InputDataError(
            f"the usable customers have only {distinct} distinct feature values, fewer than "
            f"model.k.min={settings.k.min}. Lower model.k, or check the features and the rejects."
        )
    top = min(wanted[-1], by_rows, distinct)
    if top == wanted[-1]:
        return wanted, ""
    reason = (
        f"{rows} customers, at least {MIN_PER_SEGMENT} per segment"
        if by_rows <= distinct
        else f"only {distinct} distinct feature values"
    )
    clipped = f"k={wanted[0]}..{wanted[-1]} clipped to k={wanted[0]}..{top}: {reason}"
    log.warning("model.k %s", clipped)
    return [k for k in wanted if k <= top], clipped


def _sweep(points: np.ndarray, settings: ModelSettings, fitter: Fitter, ks: list[int]) -> list[KResult]:
    with_gap = settings.gap or SELECTIONS[settings.selection].needs_gap
    references = reference_sets(points, settings.gap_references, settings.seed) if with_gap else []

    def fit(k: int) -> KResult:
        return fit_k(points, settings, k, fitter, references)

    # Several k side by side keep the cores busy (Spark ML fits are many small jobs; scikit-learn's
    # releases the GIL). The results do not depend on it: every start has its own seed.
    if settings.parallel_fits == 1 or getattr(fitter, "calling_thread_only", False):
        results = [fit(k) for k in ks]
    else:
        with ThreadPoolExecutor(max_workers=settings.parallel_fits, thread_name_prefix="sweep") as pool:
            results = list(pool.map(fit, ks))
    for result in results:
        log.info(
            "k=%d silhouette=%.4f wssse=%.1f CH=%.1f DB=%.3f%s, %d start%s%s (%.1fs)",
            result.k,
            result.silhouette,
            result.wssse,
            result.stats.calinski_harabasz,
            result.stats.davies_bouldin,
            f" gap={result.gap.gap:.3f}±{result.gap.sd:.3f}" if result.gap else "",
            result.starts,
            "" if result.starts == 1 else "s",
            ", best confirmed" if result.confirmed else ", best NOT confirmed",
            result.seconds,
        )
    return results


def fit_k(
    points: np.ndarray,
    settings: ModelSettings,
    k: int,
    fitter: Fitter | None = None,
    references: list[np.ndarray] | None = None,
    replicates: int = BOOTSTRAP_REPLICATES,
) -> KResult:
    """The best fit at k with its metrics.

    Starts are made from seeds ``model.seed``, +1, ..., at least MIN_STARTS, until the best objective
    is confirmed (a second start reaches it within ``model.confirm_tolerance``), at most
    ``model.restarts``: a lone start lands in a poor local optimum often enough to change the chosen k.
    """
    fitter = fitter or fitter_for(settings)
    started = time.perf_counter()
    best, best_key, objectives = None, None, []
    for start in range(settings.restarts):
        fit = fitter(points, k, settings.seed + start)
        # a fit that leaves clusters empty is worse than any that fills all k, whatever its objective
        key = (fit.filled < k, fit.objective)
        objectives.append(key)
        if best_key is None or key < best_key:
            best, best_key = fit, key
        if start + 1 >= MIN_STARTS and confirmed(objectives, settings.confirm_tolerance):
            break
    if best.filled < k:
        log.warning(
            "k=%d: %s left clusters empty in every start; %d segments", k, settings.algorithm, best.filled
        )
    first = objectives[0][1]
    result = KResult(
        k=k,
        fit=best,
        stats=cluster_stats(points, best.labels, replicates=replicates, seed=settings.seed),
        seconds=0.0,
        restart_gain=(first - best_key[1]) / abs(first) if first else 0.0,
        starts=len(objectives),
        confirmed=confirmed(objectives, settings.confirm_tolerance),
        objectives=[objective for _, objective in objectives],
    )
    if references:
        result.gap = _gap(result, references, settings, fitter)
    result.seconds = time.perf_counter() - started
    return result


def confirmed(objectives: list[tuple[bool, float]], tolerance: float) -> bool:
    """Whether two starts reached the best objective, within ``tolerance`` of it (relative).

    >>> confirmed([(False, 105.0), (False, 100.0)], 1e-3)
    False
    >>> confirmed([(False, 105.0), (False, 100.0), (False, 100.05)], 1e-3)
    True
    >>> confirmed([(True, 90.0), (True, 90.0), (False, 100.0)], 1e-3)  # empty clusters never confirm
    False
    """
    full = [objective for empty, objective in objectives if not empty]
    if len(full) < 2:
        return False
    best = min(full)
    return sum(objective <= best + tolerance * abs(best) for objective in full) >= 2


def _gap(result: KResult, references: list[np.ndarray], settings: ModelSettings, fitter: Fitter) -> Gap:
    """One fit per reference set at the same k; log W of the data against the references'."""
    reference_log_w = []
    for data in references:
        fit = fitter(data, result.k, settings.seed)
        reference_log_w.append(math.log(cluster_stats(data, fit.labels, replicates=0).wssse))
    return gap_statistic(math.log(result.wssse), reference_log_w)


def contest_of(results: list[KResult], selection: str, winner: KResult, other: KResult) -> Contest:
    """The rule's scores of ``winner`` and ``other``, their difference and its bootstrap noise."""
    rule = SELECTIONS[selection]
    scores, replicated = rule.scores(results), rule.replicated(results)
    i, j = results.index(winner), results.index(other)
    return Contest(
        winner=winner.k,
        other=other.k,
        metric=rule.metric,
        scores=(float(rule.sign * scores[i]), float(rule.sign * scores[j])),
        margin=float(scores[i] - scores[j]),
        noise=float(np.std(replicated[:, i] - replicated[:, j], ddof=1)),
    )


def choose_k(
    results: list[KResult],
    settings: ModelSettings,
    earlier_k: tuple[int, str] | None = None,
    clipped: str = "",
) -> SweepResult:
    """Rank by ``model.selection`` (ties go to the smaller k) within ``model.prefer`` when it has any k.

    The winner is then measured against the runner-up: a difference within NEAR_TIE_SIGMAS standard
    deviations of its bootstrap noise is a near tie. ``earlier_k`` (k, run id), when it is in the
    running and in a near tie with the winner, wins instead (``model.continuity``): the segments stay
    what they were.
    """
    candidates, where = results, ""
    ks = [r.k for r in results]
    if settings.prefer is not None:
        inside = [r for r in results if settings.prefer.min <= r.k <= settings.prefer.max]
        if inside:
            candidates = inside
            where = f" within the preferred k={settings.prefer.min}..{settings.prefer.max}"
        else:
            log.warning("model.prefer %s has no k of the sweep; it is ignored", settings.prefer)
    selection = SELECTIONS[settings.selection]
    ranked, wording = selection.ranking(candidates), selection.wording
    if len(ks) > 1:
        rule = f"{wording} over k={ks[0]}..{ks[-1]}{where}"
    elif clipped:
        rule = f"k={ks[0]}, the only k left"
    else:
        rule = f"fixed k={ks[0]}"
    if clipped:
        rule += f" ({clipped})"
    if where:
        overall = selection.ranking(results)[0]
        if overall is not ranked[0]:
            rule += f" (k={overall.k} would win without the preference)"
    chosen, runner_up = ranked[0], (ranked[1] if len(ranked) > 1 else None)
    kept = False
    earlier = next((r for r in candidates if settings.continuity and earlier_k and r.k == earlier_k[0]), None)
    if earlier is not None and earlier is not chosen:
        contest = contest_of(results, settings.selection, chosen, earlier)
        if contest.near_tie:
            rule += (
                f"; k={earlier.k} kept from the earlier run {earlier_k[1]}: it is within the noise of "
                f"the best k={chosen.k} ({contest.describe()})"
            )
            chosen, runner_up, kept = earlier, chosen, True
    contest = contest_of(results, settings.selection, chosen, runner_up) if runner_up else None
    sweep = SweepResult(
        algorithm=settings.algorithm,
        results=results,
        chosen=chosen,
        rule=rule,
        runner_up=runner_up,
        contest=contest,
        kept_earlier=kept,
    )
    if sweep.near_tie:
        log.warning("near tie: %s", sweep.verdict())
    return sweep


def stability(points: np.ndarray, chosen: KResult, settings: ModelSettings, fitter: Fitter) -> dict[str, Any]:
    """Refit the chosen k on bootstrap resamples of the sweep's customers; the adjusted Rand index of
    each refit's clusters of the resampled customers against the chosen fit's. Near 1: real structure;
    far below: noise."""
    from sklearn.metrics import adjusted_rand_score  # see job.BACKGROUND_IMPORTS

    scores = []
    for r in range(settings.stability_runs):
        seed = settings.seed + STABILITY_SEED_OFFSET + r
        resample = np.random.default_rng(seed).integers(0, len(points), size=len(points))
        refit = fitter(points[resample], chosen.k, seed)
        scores.append(float(adjusted_rand_score(chosen.fit.labels[resample], refit.labels)))
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
