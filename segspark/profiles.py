"""Segment profiles in original units, and plain-language segment names.

The statistics are computed by Spark in one aggregation per cluster (``cluster_summary``); only its
k rows reach the driver, where they are laid out one row per segment for the lake and the report.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyspark.sql.functions as F
from pyspark.sql import Column, DataFrame

from segspark.config import SegmentSettings
from segspark.errors import ConfigError
from segspark.experiment import OUTLIER_ACCURACY
from segspark.metrics import CLUSTER, DISTANCE, SEGMENT
from segspark.validate import FeatureSpec, col

QUARTILES = [0.25, 0.5, 0.75]
PERCENTILE_ACCURACY = 10_000  # Spark's default: relative error 1/10000 of the rank
TYPICAL_NAME = "Typical customers"
CLIP_REMEDY = (
    "if they are a few extreme values, clip the features: features.clip: {lower: 0.001, upper: 0.999}"
)


MIN_SAMPLED = 10_000  # a segment with fewer customers in the quantile sample gives all of them


def quantile_every(rows: int, sample: int) -> int:
    """Quantiles of ``rows`` customers come from every customer (1) when there are at most ``sample``
    (0: no limit), else from those whose id hashes to a multiple of the number returned (about
    ``sample`` of them; see ``in_quantile_sample``).

    >>> quantile_every(20_000, 1_000_000), quantile_every(10_000_000, 1_000_000), quantile_every(5, 0)
    (1, 10, 1)
    """
    return 1 if not sample or rows <= sample else math.ceil(rows / sample)


def in_quantile_sample(id_column: str, every: int) -> Column:
    """The customers whose quantiles count: ``pmod(xxhash64(id), every) = 0``, the same customers in
    every run on the same ids, whatever the partitioning."""
    return F.pmod(F.xxhash64(col(id_column)), F.lit(every)) == 0


def cluster_summary(
    clustered: DataFrame,
    spec: FeatureSpec,
    outlier_quantile: float,
    quantile_every: int = 1,
    min_sampled: int = MIN_SAMPLED,
) -> pd.DataFrame:
    """Per ``cluster``: ``size``, each numeric feature's non-missing count, mean, sample standard
    deviation and quartiles, and ``threshold``, the ``outlier_quantile`` of the distances to the centre
    (k rows reach the driver).

    With ``quantile_every`` 1, one aggregation over all customers. Above it, the quantiles (quartiles
    and thresholds) of a cluster come from its customers ``in_quantile_sample`` when that leaves it at
    least about ``min_sampled``, else from all of its customers; sizes, counts, means and spreads stay
    of every customer. That is two aggregations: percentile_approx makes Spark aggregate row by row
    without generated code, so it costs several times the pass when it sees every row.

    Run first on the freshly cached clustered customers, the (first) pass fills their cache: the
    segment ids, the profiles and the outlier thresholds all come from it.
    """
    moments = [F.count(F.lit(1)).alias("size")]
    quantiles = [F.percentile_approx(F.col(DISTANCE), outlier_quantile, OUTLIER_ACCURACY).alias("threshold")]
    for c in spec.numeric:
        moments += [
            F.count(col(c)).alias(f"{c}__n"),
            F.avg(col(c)).alias(f"{c}__mean"),
            F.stddev_samp(col(c)).alias(f"{c}__std"),
        ]
        quantiles.append(F.percentile_approx(col(c), QUARTILES, PERCENTILE_ACCURACY).alias(f"{c}__quartiles"))
    by_cluster = clustered.groupBy(CLUSTER)
    if quantile_every == 1:
        summary = by_cluster.agg(*moments, *quantiles).toPandas()
    else:
        summary = by_cluster.agg(*moments).toPandas()
        small = summary.loc[summary["size"] < quantile_every * min_sampled, CLUSTER]
        whole = [int(c) for c in small]
        sampled = in_quantile_sample(spec.id_column, quantile_every) | F.col(CLUSTER).isin(whole)
        estimated = clustered.where(sampled).groupBy(CLUSTER).agg(*quantiles).toPandas()
        summary = summary.merge(estimated, on=CLUSTER, how="left", validate="one_to_one")
    return summary.astype({CLUSTER: int, "size": "int64"}).sort_values(CLUSTER).reset_index(drop=True)


def profile_segments(
    summary: pd.DataFrame,
    assigned: DataFrame,
    spec: FeatureSpec,
    centers_original: dict[int, list[float]],
    settings: SegmentSettings | None = None,
) -> pd.DataFrame:
    """One row per segment: name, size, share, per-feature mean/quartiles/z-score/centroid, category
    shares, and the playbook's suggested ``action``.

    ``summary``: ``cluster_summary`` with a ``segment`` column; ``assigned``: the customers with their
    raw feature values (NULL where missing) and ``segment``, read only for the categorical features'
    shares. The z-score compares a segment's mean with the mean of all assigned customers, in units of
    their standard deviation.
    """
    segments = summary.astype({SEGMENT: int}).sort_values(SEGMENT).reset_index(drop=True)

    total = int(segments["size"].sum())
    profile = pd.DataFrame({SEGMENT: segments[SEGMENT], "size": segments["size"].astype("int64")})
    profile["share"] = profile["size"] / total
    for i, c in enumerate(spec.numeric):
        quartiles = segments[f"{c}__quartiles"]
        mean, spread = _pooled(segments[f"{c}__n"], segments[f"{c}__mean"], segments[f"{c}__std"])
        profile[f"{c}_mean"] = segments[f"{c}__mean"].astype(float)
        profile[f"{c}_p25"] = [_nth(q, 0) for q in quartiles]
        profile[f"{c}_median"] = [_nth(q, 1) for q in quartiles]
        profile[f"{c}_p75"] = [_nth(q, 2) for q in quartiles]
        profile[f"{c}_z"] = (profile[f"{c}_mean"] - mean) / spread if spread > 0 else 0.0
        profile[f"{c}_centroid"] = [centers_original[s][i] for s in profile[SEGMENT]]
    for c in spec.categorical:
        profile = profile.merge(category_shares(assigned, c), on=SEGMENT, how="left")
    settings = settings or SegmentSettings()
    profile.insert(1, "segment_name", name_segments(profile, spec.numeric, settings))
    profile.insert(4, "action", suggest_actions(profile, spec.numeric, settings))
    return profile


def small_segments(profile: pd.DataFrame, min_size: float, clipped: bool = False) -> list[str]:
    """A warning for each segment below ``min_size``: a share of the customers when below 1, else a
    count. A segment of a few extreme customers stretches the scale of their features for everyone.

    >>> sizes = pd.DataFrame({"segment": [0, 1], "segment_name": ["Typical", "High income"],
    ...                       "size": [999, 1], "share": [0.999, 0.001]})
    >>> small_segments(sizes, 0.005)[0][:72]
    "segment 1 'High income' holds 1 customer (0.1%), below segments.min_size"
    """
    limit = min_size * profile["size"].sum() if min_size < 1 else min_size
    shown = f"{min_size:.1%} of the customers" if min_size < 1 else f"{min_size:g} customers"
    remedy = "look at its customers before acting on it"
    if not clipped:
        remedy = CLIP_REMEDY
    return [
        f"segment {row[SEGMENT]} {row['segment_name']!r} holds {int(row['size'])} "
        f"customer{'s' if row['size'] != 1 else ''} ({row['share']:.1%}), below segments.min_size ({shown}): "
        + remedy
        for _, row in profile.sort_values(SEGMENT).iterrows()
        if row["size"] < limit
    ]


def _pooled(counts: pd.Series, means: pd.Series, stds: pd.Series) -> tuple[float, float]:
    """Everyone's mean and sample standard deviation from the segments' (non-missing count, mean,
    sample standard deviation): within-segment plus between-segment sums of squares."""
    n = counts.to_numpy(float)
    m = means.to_numpy(float)
    s = np.nan_to_num(stds.to_numpy(float))  # NULL for a segment with one value: no spread within
    has = n > 0
    n, m, s = n[has], m[has], s[has]
    total = n.sum()
    if total < 2:
        return (float(m[0]) if total else math.nan), 0.0
    mean = float((n * m).sum() / total)
    squares = ((n - 1) * s**2).sum() + (n * (m - mean) ** 2).sum()
    return mean, math.sqrt(squares / (total - 1))


def _nth(values, i: int) -> float:
    return float(values[i]) if values is not None and len(values) > i else math.nan


def category_shares(assigned: DataFrame, column: str) -> pd.DataFrame:
    """Share of each value of a categorical column within each segment (``column=value_share``)."""
    counts = assigned.groupBy(F.col(SEGMENT), col(column)).count().toPandas()
    counts[column] = counts[column].fillna("(missing)")
    table = counts.pivot_table(index=SEGMENT, columns=column, values="count", aggfunc="sum", fill_value=0)
    shares = table.div(table.sum(axis=1), axis=0)
    shares.columns = [f"{column}={value}_share" for value in shares.columns]
    return shares.reset_index()


def _level(z: float, threshold: float) -> str:
    return "high" if z >= threshold else "low" if z <= -threshold else "typical"


def name_segments(profile: pd.DataFrame, numeric: list[str], settings: SegmentSettings) -> list[str]:
    """Short, unique, deterministic names from each segment's most distinctive features.

    A feature qualifies when the segment mean is at least ``name_threshold`` standard deviations from
    everyone's; the strongest (ties by name) come first: "High annual_income · Low spending_score".
    """
    threshold, show = settings.name_threshold, settings.display_names
    ranked = []
    for _, row in profile.iterrows():
        scores = [(c, float(row[f"{c}_z"])) for c in numeric if np.isfinite(row[f"{c}_z"])]
        scores = [s for s in scores if _level(s[1], threshold) != "typical"]
        ranked.append(sorted(scores, key=lambda s: (-abs(s[1]), s[0])))

    def label(scores: list[tuple[str, float]], n: int) -> str:
        parts = [f"{'High' if z > 0 else 'Low'} {show.get(c, c)}" for c, z in scores[:n]]
        return " · ".join(parts) if parts else TYPICAL_NAME

    names = [label(scores, settings.name_features) for scores in ranked]
    for n in range(settings.name_features + 1, len(numeric) + 1):  # lengthen clashing names
        clashes = {name for name in names if names.count(name) > 1}
        if not clashes:
            break
        names = [
            label(scores, n) if name in clashes else name for name, scores in zip(names, ranked, strict=True)
        ]
    seen: dict[str, int] = {}
    unique = []
    for name in names:  # still equal: number them in segment order
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if names.count(name) == 1 else f"{name} ({seen[name]})")
    return unique


def suggest_actions(profile: pd.DataFrame, numeric: list[str], settings: SegmentSettings) -> list[str | None]:
    """The actions of every playbook rule a segment matches, in rule order ("; "-joined), or None."""
    actions = []
    for _, row in profile.iterrows():
        matched = [
            rule.action
            for rule in settings.playbook
            if all(
                _level(float(row[f"{c}_z"]), settings.name_threshold) == level
                for c, level in rule.when.items()
            )
        ]
        actions.append("; ".join(matched) if matched else None)
    return actions


def check_playbook(settings: SegmentSettings, numeric: list[str]) -> None:
    """Before any work: every feature a playbook rule names must be a numeric feature of the run."""
    for i, rule in enumerate(settings.playbook):
        unknown = sorted(set(rule.when) - set(numeric))
        if unknown:
            raise ConfigError(
                f"segments.playbook[{i}].when: {', '.join(unknown)} is not a numeric feature of this run "
                f"(features: {', '.join(numeric)})"
            )


AUDIT_PREFIX = "audit_"  # profile columns of sensitive attributes: for auditing the segments, never features
AUDIT_MAX_VALUES = 20  # the most common values get a column each; the rest are counted as "(other)"


def add_audit_shares(profile: pd.DataFrame, assigned: DataFrame, columns: list[str]) -> pd.DataFrame:
    """Share of each value of each sensitive column within each segment, as ``audit_<c>=<v>_share``.

    The columns were refused as features; profiling them lets a team check whether the segments split
    along them anyway. Only the AUDIT_MAX_VALUES commonest values get a column of their own.
    """
    for column in columns:
        text = col(column).cast("string")
        common = [
            row["value"]
            for row in assigned.filter(text.isNotNull())
            .groupBy(text.alias("value"))
            .count()
            .orderBy(F.desc("count"), F.asc("value"))
            .limit(AUDIT_MAX_VALUES)
            .collect()
        ]
        bucketed = assigned.select(
            F.col(SEGMENT),
            F.when(text.isNull() | text.isin(*common), text).otherwise(F.lit("(other)")).alias(column),
        )
        shares = category_shares(bucketed, column)
        shares.columns = [c if c == SEGMENT else f"{AUDIT_PREFIX}{c}" for c in shares.columns]
        profile = profile.merge(shares, on=SEGMENT, how="left")
    return profile


def original_units(center_unscaled: np.ndarray, spec: FeatureSpec) -> list[float]:
    """A centroid's numeric features in original units (expm1 undoes log1p).

    >>> spec = FeatureSpec("id", numeric=["spend", "age"], log=["spend"])
    >>> [round(v, 6) for v in original_units(np.array([math.log1p(99.0), 41.5]), spec)]
    [99.0, 41.5]
    """
    return [
        math.expm1(value) if column in spec.log else float(value)
        for column, value in zip(spec.numeric, center_unscaled, strict=False)
    ]
