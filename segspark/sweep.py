"""Fitting each k (and algorithm), collecting the metrics per k, and choosing k.

Per k: fits from different seeds (k-means|| initialisation for k-means) until two of them reach the
best objective (lowest WSSSE; highest log-likelihood for a Gaussian mixture), at most
``model.restarts``; then silhouette, WSSSE, Calinski-Harabasz, Davies-Bouldin and, when asked, the gap
statistic, each with its bootstrap noise. k is chosen by ``model.selection``, inside ``model.prefer``
when given; a winner within the noise of the runner-up is a near tie, and a near tie with the earlier
run's k keeps that k (``model.continuity``).
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
    BOOTSTRAP_REPLICATES,
    CLUSTER,
    ClusterStats,
    Gap,
    adjusted_rand,
    cluster_stats,
    gap_statistic,
    knee_scores,
    reference_sets,
)
from segspark.prepare import FEATURES

log = logging.getLogger(__name__)

PROBABILITY = "probability"  # a Gaussian mixture's membership probabilities
STABILITY_CLUSTER = "stability_cluster"
STABILITY_SEED_OFFSET = 1000  # seeds of the stability refits, apart from those of the restarts
GOOD_START_TOLERANCE = 0.02  # see _good_enough
NEAR_TIE_SIGMAS = 2.0  # a winner by less than this many standard deviations of the noise: a near tie
MIN_PER_SEGMENT = 3  # customers per segment, on average, below which a k is not fitted
# Starts at each k before a best confirmed by two of them counts: one start in five lands in a poor
# optimum on the generated data, and two poor starts can land in the same one (scripts/optima.py)
MIN_STARTS = 3
# k-means' convergence tolerance (centre movement) on the sample: ~25% fewer iterations than Spark's
# default 1e-4, with the same best WSSSE to 5 digits at every k of the benchmark
SAMPLE_TOLERANCE = 1e-3

Label = Callable[[str], AbstractContextManager]


@dataclass
class KResult:
    k: int
    model: Any  # KMeansModel | BisectingKMeansModel | GaussianMixtureModel
    stats: ClusterStats
    clusters: int  # non-empty clusters: k, unless bisecting or a mixture left some empty
    seconds: float
    restart_gain: float  # relative improvement of the objective by the restarts over the first fit
    gap: Gap | None = None
    starts: int = 1  # fits made at this k (see fit_k)
    confirmed: bool = False  # a second start reached the best objective too
    objectives: list[float] = field(default_factory=list)  # each start's, in order

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
    rows: int = 0  # customers the chosen model was fitted on
    sample_rows: int | None = None  # customers k was chosen on, when a sample

    @property
    def near_tie(self) -> bool:
        return self.contest is not None and self.contest.near_tie

    def verdict(self) -> str | None:
        """The plain-words warning for a near tie, or None when the choice is clear."""
        if not self.near_tie:
            return None
        c = self.contest
        return (
            f"k = {c.winner} and k = {c.other} fit these customers almost equally well "
            f"({c.describe()}); either is a defensible number of segments"
        )


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
    prepared: DataFrame,
    settings: ModelSettings,
    label: Label = lambda _: nullcontext(),
    earlier_k: tuple[int, str] | None = None,
) -> SweepResult:
    """Fit every k in the range on ``prepared`` (cache it first) and choose k.

    With more rows than ``model.sample_size``, k is chosen on a uniform sample of that size and the
    chosen k is then fitted (and its metrics measured) on all rows. ``label(description)`` wraps
    each fit, so the caller can name the Spark jobs it starts. ``earlier_k``: the k and run id of the
    run this one follows, which wins a near tie when ``model.continuity`` is on.
    """
    rows = prepared.count()
    sampled = bool(settings.sample_size) and rows > settings.sample_size
    data = _sample(prepared, settings.sample_size / rows, settings.seed).persist() if sampled else prepared
    try:
        ks, clipped = usable_k(data, settings, rows)
        results = _sweep(data, settings, ks, label, coarse=sampled)
        sweep = choose_k(results, settings, earlier_k, clipped)
        sweep.rows = rows
        if sampled:
            sweep.sample_rows = data.count()
            with label(f"final fit k={sweep.chosen.k} on all customers"):
                good = _good_enough(sweep.chosen.model, sweep.sample_rows, rows)
                # k is chosen: the metrics of all rows need no bootstrap noise
                final = fit_k(prepared, settings, sweep.chosen.k, accept_below=good, replicates=0)
            final.confirmed = sweep.chosen.confirmed
            sweep.chosen = final
            sweep.rule += f" (on a uniform sample of {sweep.sample_rows} of {rows} customers)"
        if settings.stability_runs:
            with label(f"stability k={sweep.chosen.k}"):
                sweep.stability = stability(data, sweep.chosen, settings)
    finally:
        if sampled:
            data.unpersist()
    return sweep


def usable_k(data: DataFrame, settings: ModelSettings, rows: int) -> tuple[list[int], str]:
    """The k of the range that the customers can fill, and how the range was clipped ("" if not).

    A segment needs MIN_PER_SEGMENT customers on average and distinct feature values to centre on;
    checking first keeps k-means from failing (or leaving clusters empty) at a k too large.
    """
    wanted = settings.k_values
    distinct = data.select(vector_to_array(F.col(FEATURES)).alias("x")).distinct().limit(wanted[-1]).count()
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


def _sweep(
    data: DataFrame, settings: ModelSettings, ks: list[int], label: Label, coarse: bool = False
) -> list[KResult]:
    with_gap = settings.gap or settings.selection == "gap"
    references = reference_sets(data, settings.gap_references, settings.seed) if with_gap else []

    def fit(k: int) -> KResult:
        with label(f"sweep k={k}"):
            return fit_k(data, settings, k, references, coarse=coarse)

    # Each k is dozens of small Spark jobs: several k side by side keep the cores busy while the driver
    # plans the next job. The results do not depend on it (every fit has its own seed).
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
    data: DataFrame,
    settings: ModelSettings,
    k: int,
    references: list[DataFrame] | None = None,
    accept_below: float | None = None,
    coarse: bool = False,
    replicates: int = BOOTSTRAP_REPLICATES,
) -> KResult:
    """The best fit at k with its metrics.

    Starts are made from different seeds, at least MIN_STARTS, until the best objective is confirmed
    (a second start reaches it within ``model.confirm_tolerance``), at most ``model.restarts``: a lone
    start lands in a poor local optimum often enough to change the chosen k. With ``accept_below``
    (the final fit on all rows, checked against the sample's confirmed optimum), the first start
    below it is kept.
    """
    started = time.perf_counter()
    best, best_key, objectives = None, None, []
    for start in range(settings.restarts):
        model = _fit(make_estimator(settings, k, settings.seed + start, coarse), data)
        objective = _objective(model)
        # a fit that leaves clusters empty is worse than any that fills all k, whatever its cost
        key = (_filled(model) < k, objective)
        objectives.append(key)
        if best_key is None or key < best_key:
            best, best_key = model, key
        if accept_below is not None and objective <= accept_below:
            break
        if (
            accept_below is None
            and start + 1 >= MIN_STARTS
            and confirmed(objectives, settings.confirm_tolerance)
        ):
            break
    found = _filled(best)
    if found < k:
        log.warning("k=%d: %s left clusters empty in every start; %d segments", k, settings.algorithm, found)
    first = objectives[0][1]
    result = KResult(
        k=k,
        model=best,
        stats=cluster_stats(best.transform(data), replicates=replicates, seed=settings.seed),
        clusters=found,
        seconds=0.0,
        restart_gain=(first - best_key[1]) / abs(first) if first else 0.0,
        starts=len(objectives),
        confirmed=confirmed(objectives, settings.confirm_tolerance),
        objectives=[objective for _, objective in objectives],
    )
    if references:
        result.gap = _gap(result, references, settings)
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


def _filled(model) -> int:
    return sum(1 for size in model.summary.clusterSizes if size > 0)


def _gap(result: KResult, references: list[DataFrame], settings: ModelSettings) -> Gap:
    """One fit per reference set at the same k; log W of the data against the references'."""
    reference_log_w = []
    for data in references:
        model = make_estimator(settings, result.k).fit(data)
        reference_log_w.append(math.log(cluster_stats(model.transform(data), replicates=0).wssse))
    return gap_statistic(math.log(result.wssse), reference_log_w)


def _scores(results: list[KResult], selection: str) -> tuple[str, np.ndarray, np.ndarray]:
    """The rule's metric as a score per k (higher wins), and the same per bootstrap replicate (B x k)."""
    boot = [r.stats.bootstrap() for r in results]
    if selection == "elbow":
        ks = [r.k for r in results]
        curves = np.array([b["wssse"] for b in boot]).T  # B x k
        replicated = np.array([knee_scores(ks, list(curve)) for curve in curves])
        return "elbow score", knee_scores(ks, [r.wssse for r in results]), replicated
    if selection == "gap":
        # the references stay fixed; the data's log W moves with the resample
        replicated = np.array(
            [r.gap.gap + math.log(r.wssse) - np.log(b["wssse"]) for r, b in zip(results, boot, strict=True)]
        ).T
        return "gap", np.array([r.gap.gap for r in results]), replicated
    sign = -1.0 if selection == "davies_bouldin" else 1.0
    name = selection.replace("_", "-").title() if selection != "silhouette" else "silhouette"
    values = np.array([r.metrics()[selection] for r in results], dtype=float)
    replicated = np.array([b[selection] for b in boot]).T
    return name, sign * values, sign * replicated


def _contest(results: list[KResult], selection: str, winner: KResult, other: KResult) -> Contest:
    name, scores, replicated = _scores(results, selection)
    i, j = results.index(winner), results.index(other)
    sign = -1.0 if selection == "davies_bouldin" else 1.0
    return Contest(
        winner=winner.k,
        other=other.k,
        metric=name,
        scores=(float(sign * scores[i]), float(sign * scores[j])),
        margin=float(scores[i] - scores[j]),
        noise=float(np.std(replicated[:, i] - replicated[:, j], ddof=1)),
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
    ranked, wording = _ranking(candidates, settings.selection)
    if len(ks) > 1:
        rule = f"{wording} over k={ks[0]}..{ks[-1]}{where}"
    elif clipped:
        rule = f"k={ks[0]}, the only k left"
    else:
        rule = f"fixed k={ks[0]}"
    if clipped:
        rule += f" ({clipped})"
    if where:
        overall = _ranking(results, settings.selection)[0][0]
        if overall is not ranked[0]:
            rule += f" (k={overall.k} would win without the preference)"
    chosen, runner_up = ranked[0], (ranked[1] if len(ranked) > 1 else None)
    kept = False
    earlier = next((r for r in candidates if settings.continuity and earlier_k and r.k == earlier_k[0]), None)
    if earlier is not None and earlier is not chosen:
        contest = _contest(results, settings.selection, chosen, earlier)
        if contest.near_tie:
            rule += (
                f"; k={earlier.k} kept from the earlier run {earlier_k[1]}: it is within the noise of "
                f"the best k={chosen.k} ({contest.describe()})"
            )
            chosen, runner_up, kept = earlier, chosen, True
    contest = _contest(results, settings.selection, chosen, runner_up) if runner_up else None
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
