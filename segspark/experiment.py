"""What a team needs to act on segments and measure it: outlier customers and control groups.

**Outliers.** A customer is an outlier of their segment when they are farther from its centroid than
the segment's ``segments.outlier_quantile`` of distances (default 0.99). The thresholds are Spark's
``percentile_approx`` with accuracy OUTLIER_ACCURACY, in the pass that summarises the clusters
(``profiles.cluster_summary``): exact for segments of up to that many customers
(the smallest distance with at least that share of the segment at or below it), within 1/accuracy of
the rank above. The run keeps them in the manifest, so scoring flags new customers the same way.

**Control groups.** With ``output.control_share`` p > 0 every assigned customer gets ``group``:
``control`` when u < p, else ``treatment``, where u is the first 8 hex digits of
SHA-256("<salt>:<customer id as text>") read as a number and divided by 2^32 (uniform on [0, 1)). It
depends on the id and the salt only, so a customer stays in the same group in every run, in scoring,
and in any other system that computes the same hash.
"""

from __future__ import annotations

import math

import pandas as pd
import pyspark.sql.functions as F
from pyspark.sql import Column, DataFrame

from segspark.manifest import Manifest
from segspark.metrics import DISTANCE, SEGMENT
from segspark.segments import lookup

OUTLIER = "outlier"
GROUP = "group"
CONTROL = "control"
TREATMENT = "treatment"
OUTLIER_ACCURACY = 100_000
HASH_HEX_DIGITS = 8  # 32 bits of the hash: a resolution of 2.3e-10 for the share
TOLERANCE_SDS = 4  # the stated tolerance of a segment's control share, in binomial standard deviations


def is_outlier(thresholds: dict[int, float]) -> Column:
    """True when the distance exceeds its segment's threshold (NULL for a segment without one)."""
    return F.col(DISTANCE) > lookup(thresholds, F.col(SEGMENT))


def control_draw(customer_id: Column, salt: str) -> Column:
    """u in [0, 1) from SHA-256 of "<salt>:<id>" (see the module docstring)."""
    digest = F.sha2(F.concat(F.lit(f"{salt}:"), customer_id.cast("string")), 256)
    head = F.conv(F.substring(digest, 1, HASH_HEX_DIGITS), 16, 10).cast("double")
    return head / F.lit(float(16**HASH_HEX_DIGITS))


def control_group(customer_id: Column, share: float, salt: str) -> Column:
    """``control`` for about ``share`` of the customers, ``treatment`` for the others."""
    return F.when(control_draw(customer_id, salt) < F.lit(share), F.lit(CONTROL)).otherwise(F.lit(TREATMENT))


def control_tolerance(share: float, size: int) -> float:
    """The stated tolerance of a segment's control share: TOLERANCE_SDS binomial standard deviations.

    A segment of 10,000 customers with a 10 % control share holds between 8.8 % and 11.2 % controls:

    >>> round(control_tolerance(0.1, 10_000), 4)
    0.012
    """
    return TOLERANCE_SDS * math.sqrt(share * (1 - share) / max(size, 1))


def act_columns(table: DataFrame, thresholds: dict[int, float], share: float, salt: str) -> DataFrame:
    """The assignments with ``outlier`` and, when ``share`` > 0, ``group``."""
    extra = [is_outlier(thresholds).alias(OUTLIER)]
    if share > 0:
        extra.append(control_group(F.col("customer_id"), share, salt).alias(GROUP))
    return table.select(*[F.col(c) for c in table.columns], *extra)


def segment_counts(assignments: DataFrame) -> pd.DataFrame:
    """Per segment: ``outliers`` and, with groups, ``control`` and ``treatment`` (k rows)."""
    aggregates = [F.count(F.when(F.col(OUTLIER), 1)).alias("outliers")]
    if GROUP in assignments.columns:
        aggregates += [
            F.count(F.when(F.col(GROUP) == F.lit(CONTROL), 1)).alias(CONTROL),
            F.count(F.when(F.col(GROUP) == F.lit(TREATMENT), 1)).alias(TREATMENT),
        ]
    counts = assignments.groupBy(SEGMENT).agg(*aggregates).toPandas()
    return counts.astype({c: "int64" for c in counts.columns}).sort_values(SEGMENT).reset_index(drop=True)


def act_table(manifest: Manifest) -> pd.DataFrame:
    """Per segment, from the manifest: name, rule with its precision and coverage, outliers, and the
    control and treatment counts (the columns the run has). Plain text, for the report to render."""
    rows = []
    for s in sorted(manifest.segments, key=lambda s: s.segment):
        row = {"segment": s.segment, "name": s.segment_name}
        if manifest.rules is not None:
            row["rule"] = s.rule if s.rule is not None else "(no rule at this depth)"
            row["precision"] = _share(s.rule_precision)
            row["coverage"] = _share(s.rule_coverage)
        for column, count in (("outliers", s.outliers), (CONTROL, s.control), (TREATMENT, s.treatment)):
            if count is not None:
                row[column] = f"{count:,}"
        rows.append(row)
    return pd.DataFrame(rows)


def act_text(manifest: Manifest) -> str:
    """The sentence above the table: where the rules are, what an outlier is, the control share, and
    how many customers were left out for lack of consent."""
    parts = []
    if manifest.rules is not None:
        parts.append(
            "Each segment's rule picks out its customers from their features in original units "
            "(a missing value counts as the median); precision is the share of customers matching the "
            "rule who are in the segment, coverage the share of the segment that matches. rules.sql "
            "holds them as one SQL CASE expression for any database."
        )
    if manifest.outliers is not None:
        quantile = manifest.outliers.quantile
        parts.append(
            f"Outliers are farther from their segment's centre than {quantile:.0%} of its customers "
            "(assignments.outlier): check them before acting on the segment."
        )
    if manifest.control is not None:
        parts.append(
            f"{manifest.control.share:.0%} of each segment is held out as a control group "
            "(assignments.group): leave them out of the campaign and compare."
        )
    consent = manifest.consent
    if consent:
        parts.append(
            f"{consent.rejected:,} customers without consent to profiling (column {consent.column}) "
            "were left out."
        )
    return " ".join(parts)


def _share(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1%}"
