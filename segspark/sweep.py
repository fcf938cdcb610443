"""Fitting each k, collecting the metrics per k, and choosing k."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from pyspark.ml.clustering import KMeans, KMeansModel
from pyspark.sql import DataFrame

from segspark.config import ModelSettings
from segspark.errors import InputDataError
from segspark.metrics import CLUSTER, silhouette
from segspark.prepare import FEATURES

log = logging.getLogger(__name__)


@dataclass
class KResult:
    k: int
    silhouette: float
    wssse: float
    seconds: float
    model: KMeansModel

    def metrics(self) -> dict[str, float | int]:
        return {"k": self.k, "silhouette": self.silhouette, "wssse": self.wssse, "seconds": self.seconds}


@dataclass
class SweepResult:
    algorithm: str
    results: list[KResult]
    chosen: KResult
    rule: str
    runner_up: KResult | None


def make_estimator(settings: ModelSettings, k: int) -> KMeans:
    return KMeans(
        k=k,
        seed=settings.seed,
        maxIter=settings.max_iter,
        featuresCol=FEATURES,
        predictionCol=CLUSTER,
    )


def sweep_k(
    prepared: DataFrame,
    settings: ModelSettings,
    label: Callable[[str], AbstractContextManager] = lambda _: nullcontext(),
) -> SweepResult:
    """Fit every k in the range on ``prepared`` (cache it first) and choose k by the best silhouette.

    ``label(description)`` wraps each fit, so the caller can name the Spark jobs it starts.
    """
    results: list[KResult] = []
    for k in settings.k_values:
        with label(f"sweep k={k}"):
            started = time.perf_counter()
            model = make_estimator(settings, k).fit(prepared)
            found = sum(1 for size in model.summary.clusterSizes if size > 0)
            if found < k:  # more clusters asked than there are distinct customers
                _clip_warning(found, k, settings)
                break
            score = silhouette(model.transform(prepared))
            result = KResult(
                k, score, float(model.summary.trainingCost), time.perf_counter() - started, model
            )
        log.info(
            "k=%d silhouette=%.4f wssse=%.1f (%.1fs)", k, result.silhouette, result.wssse, result.seconds
        )
        results.append(result)
    if not results:
        raise InputDataError(
            f"the usable customers have only {found} distinct feature values, fewer than "
            f"model.k.min={settings.k.min}. Lower model.k, or check the features and the rejects."
        )
    return choose_k(results, settings)


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


def choose_k(results: list[KResult], settings: ModelSettings) -> SweepResult:
    """The highest silhouette wins; a tie goes to the smaller k (fewer segments are easier to act on)."""
    ranked = sorted(results, key=lambda r: (-r.silhouette, r.k))
    chosen = ranked[0]
    ks = [r.k for r in results]
    rule = f"fixed k={chosen.k}" if len(ks) == 1 else f"highest silhouette over k={ks[0]}..{ks[-1]}"
    return SweepResult(
        algorithm=settings.algorithm,
        results=results,
        chosen=chosen,
        rule=rule,
        runner_up=ranked[1] if len(ranked) > 1 else None,
    )
