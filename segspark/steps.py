"""The steps of a run, each a function of the settings and the results of the steps before it,
returning a small typed result (``job.py`` runs them in order and builds the manifest from them):

read -> Sources, choose_features -> Inputs, validate -> Validated, prepare -> Prepared (prepare.py),
sweep -> Swept, assign -> Assigned, profile -> Profiled, rules -> Rules (rules.py),
write_assignments -> Written, write_tables / write_rules / write_order_rejects, verify -> Verified,
migration_since -> Migration (the manifest's section).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyspark.sql.functions as F
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession

from segspark.algorithms import ALGORITHMS, fitter_for
from segspark.config import ConsentSettings, Settings
from segspark.consent import NO_CONSENT, check_consent_column
from segspark.errors import InputDataError, SegsparkError
from segspark.experiment import act_columns, segment_counts
from segspark.features import (
    ORDER_CUSTOMER_ID,
    OrderFeatures,
    count_matches,
    count_orders,
    join_customers,
    order_features,
    verify_order_accounting,
)
from segspark.lake import Lake, read_source, small_table, write_table
from segspark.manifest import Consent, Migration, Orders
from segspark.metrics import CLUSTER, DISTANCE, SEGMENT
from segspark.prepare import Prepared, scaler_of, vector_columns
from segspark.profiles import (
    add_audit_shares,
    check_playbook,
    cluster_summary,
    original_units,
    profile_segments,
    quantile_every,
    small_segments,
)
from segspark.report import report_sample
from segspark.rules import Rules, imputer_medians, segment_rules, sql_file
from segspark.runtime import Caches
from segspark.segments import (
    EarlierRun,
    assignments,
    distance_to_center,
    lookup,
    migration,
    segment_ids,
    with_segment,
)
from segspark.sweep import SweepResult, spark_model, sweep_k
from segspark.validate import (
    REASON,
    FeatureSpec,
    audit_columns,
    col,
    resolve_features,
    split_rejects,
    with_reject_reason,
)

log = logging.getLogger(__name__)

AS_OF_GIVEN = "given (input.orders.as_of)"
AS_OF_DEFAULT = "the day after the last valid order"
RULES_SQL = "rules.sql"


@dataclass(frozen=True)
class Context:
    """What every step may use: the session, the settings, where the run is staged, and ``cache``,
    which persists a DataFrame until the run ends (``job.run`` releases them all)."""

    spark: SparkSession
    settings: Settings
    lake: Lake
    staging: str
    cache: Caches = field(default_factory=Caches)

    @property
    def format(self) -> str:
        return self.settings.output.format

    def read_back(self, name: str, **options: str) -> DataFrame:
        """A staged output as written."""
        return (
            self.spark.read.format(self.format)
            .options(header="true", **options)
            .load(f"{self.staging}/{name}")
        )


@dataclass(frozen=True)
class Sources:
    raw: DataFrame  # the customer rows to segment
    id_column: str
    orders: OrderFeatures | None  # features built from input.orders
    described_orders: Orders | None  # the manifest's ``orders``, before the orders were counted


@dataclass(frozen=True)
class Inputs:
    sources: Sources
    spec: FeatureSpec
    audit: list[str]  # sensitive columns that are not features: profiled for the audit only
    consent: ConsentSettings | None

    @property
    def raw(self) -> DataFrame:
        return self.sources.raw

    @property
    def orders(self) -> OrderFeatures | None:
        return self.sources.orders


@dataclass(frozen=True)
class Validated:
    valid: DataFrame
    rejects: DataFrame
    rows_read: int
    rows_rejected: int
    consent: Consent | None  # the manifest's ``consent``: customers left out for lack of it
    orders: Orders | None  # the manifest's ``orders``, with the order rows counted

    @property
    def usable(self) -> int:
        return self.rows_read - self.rows_rejected

    def check(self, settings: Settings) -> None:
        """Stop a run without a usable row; warn about rejected ones."""
        if self.rows_read == 0:
            raise InputDataError(f"the input has no rows ({_where(settings)}); nothing to segment")
        if self.usable == 0:
            raise InputDataError(
                f"all {self.rows_read} input rows were rejected; the commonest reason: {self.top_reason()}"
            )
        if self.rows_rejected:
            log.warning(
                "%d of %d rows rejected (see rejects/); commonest: %s",
                self.rows_rejected,
                self.rows_read,
                self.top_reason(),
            )

    def top_reason(self) -> str:
        row = self.rejects.groupBy("reason").count().orderBy(F.desc("count"), "reason").first()
        return f"{row['reason']} ({row['count']} rows)" if row else "none"


@dataclass(frozen=True)
class Swept:
    sweep: SweepResult
    model: PipelineModel  # preparation + the chosen clustering: what ``score`` loads

    @property
    def k_metrics(self) -> pd.DataFrame:
        return self.sweep.k_metrics()


@dataclass(frozen=True)
class Assigned:
    clustered: DataFrame  # the usable customers with their cluster and distance to its centre (cached)
    assigned: DataFrame  # ... and their segment
    segment_of: dict[int, int]  # cluster -> segment id
    summary: pd.DataFrame  # per cluster and its segment: size, feature statistics, outlier threshold
    centers: np.ndarray  # in the scaled space, in cluster order
    centers_unscaled: np.ndarray  # before scaling (after impute and log1p)
    mean: np.ndarray  # the scaler's
    std: np.ndarray
    columns: list[str]  # the model's vector columns
    quantile_every: int  # quartiles and thresholds of the customers in_quantile_sample (1: of all)

    @property
    def cluster_of(self) -> dict[int, int]:
        return {segment: cluster for cluster, segment in self.segment_of.items()}

    @property
    def thresholds(self) -> dict[int, float]:
        """segment -> the distance beyond which its customers are outliers."""
        pairs = zip(self.summary[SEGMENT], self.summary["threshold"], strict=True)
        return {int(segment): float(threshold) for segment, threshold in pairs}


@dataclass(frozen=True)
class Profiled:
    profiles: pd.DataFrame  # one row per segment
    names: dict[int, str]  # segment -> name
    warnings: list[str]  # tiny segments


@dataclass(frozen=True)
class Written:
    profiles: pd.DataFrame  # with the outlier, control and treatment counts of the written assignments
    thresholds: dict[int, float]  # segment -> outlier distance


@dataclass(frozen=True)
class Verified:
    assignments: DataFrame  # as written
    rows_assigned: int


def read(ctx: Context) -> Sources:
    """The customer rows, with the features built from the orders."""
    orders = read_orders(ctx.spark, ctx.settings, ctx.cache)
    raw, id_column, replaced = _customer_rows(ctx.spark, ctx.settings, orders)
    return Sources(raw, id_column, orders, _describe_orders(orders, replaced))


def choose_features(ctx: Context, sources: Sources) -> Inputs:
    """The features to use (and the sensitive columns to audit) from the columns read and the settings."""
    settings = ctx.settings
    consent = settings.input.customers.consent if settings.input.customers is not None else None
    check_consent_column(sources.raw, consent)
    exclude = (consent.column,) if consent is not None else ()
    spec = resolve_features(sources.raw, sources.id_column, settings.features, exclude=exclude)
    check_playbook(settings.segments, spec.numeric)
    audit = audit_columns(sources.raw, spec, settings.features.sensitive)
    return Inputs(sources, spec, audit, consent)


def read_input(
    spark: SparkSession, settings: Settings, orders: OrderFeatures | None = None
) -> tuple[DataFrame, str]:
    """The customer rows to segment and their id column.

    From the customer table; from the orders alone (one row per customer with a valid order, id
    ``customer_id``); or the customer table left-joined with the order features (see
    ``features.join_customers`` for customers without orders). ``orders``: features already built by
    ``read_orders`` (built here when not given).
    """
    raw, id_column, _ = _customer_rows(spark, settings, orders)
    return raw, id_column


def _customer_rows(
    spark: SparkSession, settings: Settings, orders: OrderFeatures | None
) -> tuple[DataFrame, str, list[str] | None]:
    """``read_input``, and the customer columns replaced by order features (None: no join)."""
    customers = settings.input.customers
    if settings.input.orders is None:
        return read_source(spark, customers, ids=(customers.id_column,)), customers.id_column, None
    orders = orders or read_orders(spark, settings)
    if customers is None:
        return orders.features, ORDER_CUSTOMER_ID, None
    joined, replaced = join_customers(
        read_source(spark, customers, ids=(customers.id_column,)), customers.id_column, orders
    )
    if replaced:
        log.warning(
            "customer columns replaced by the features built from the orders: %s", ", ".join(replaced)
        )
    return joined, customers.id_column, replaced


def read_orders(spark: SparkSession, settings: Settings, cache: Caches | None = None) -> OrderFeatures | None:
    """Behavioural features from ``input.orders`` (None without it); the checked orders are cached."""
    source = settings.input.orders
    if source is None:
        return None
    return order_features(
        read_source(spark, source, "input.orders", ids=(source.customer_id,)), source, cache
    )


def _describe_orders(orders: OrderFeatures | None, replaced: list[str] | None) -> Orders | None:
    if orders is None:
        return None
    described = Orders(
        as_of=orders.as_of.isoformat(),
        as_of_rule=AS_OF_GIVEN if orders.as_of_given else AS_OF_DEFAULT,
        features=orders.columns,
        categories=orders.categories,
    )
    if replaced is not None:
        described.replaced_customer_columns = replaced
    return described


def validate(ctx: Context, inputs: Inputs) -> Validated:
    """Every row checked: the valid ones, and the rejects with their reason; the orders counted."""
    settings = ctx.settings
    orders = inputs.sources.described_orders
    if inputs.orders is not None:
        counts = count_orders(inputs.orders)
        if settings.input.customers is not None:
            counts |= count_matches(inputs.raw, inputs.orders, inputs.spec.id_column)
        orders = Orders.model_validate({**orders.model_dump(exclude_unset=True), **counts})
    checked = with_reject_reason(
        inputs.raw,
        inputs.spec,
        settings.features.missing,
        keep=inputs.audit,
        consent=inputs.consent,
        cache=ctx.cache,
    )
    # read from the cache: the rows read, rejected and left out for lack of consent
    counts = checked.agg(
        F.count(F.lit(1)).alias("read"),
        F.count(F.col(REASON)).alias("rejected"),
        F.count(F.when(F.col(REASON) == F.lit(NO_CONSENT), 1)).alias("no_consent"),
    ).first()
    valid, rejects = split_rejects(checked, inputs.spec)
    consent = None
    if inputs.consent is not None:
        consent = Consent(
            column=inputs.consent.column, allowed=list(inputs.consent.allowed), rejected=counts["no_consent"]
        )
    return Validated(valid, rejects, counts["read"], counts["rejected"], consent, orders)


def sweep(ctx: Context, prepared: Prepared, earlier: EarlierRun | None) -> Swept:
    """k chosen on the prepared customers; the chosen clustering after the preparation, as one model."""
    settings = ctx.settings.model
    earlier_k = (len(earlier.segments), earlier.run_id) if earlier else None
    fitter = fitter_for(settings, ctx.spark)
    result = sweep_k(prepared.points, settings, fitter, earlier_k, prepared.population)
    chosen = spark_model(ctx.spark, result.chosen, settings.seed)
    return Swept(result, PipelineModel(stages=[*prepared.preparation.stages, chosen]))


def assign(
    ctx: Context,
    inputs: Inputs,
    validated: Validated,
    prepared: Prepared,
    swept: Swept,
    earlier: EarlierRun | None,
) -> Assigned:
    """Every usable customer through the model; clusters become segment ids (stable across runs)."""
    spec, algorithm = inputs.spec, ALGORITHMS[ctx.settings.model.algorithm]
    scaler = scaler_of(prepared.preparation)
    mean, std = scaler.mean.toArray(), scaler.std.toArray()
    centers = np.array(algorithm.centres(swept.model.stages[-1]))
    centers_unscaled = centers * std + mean
    clustered = ctx.cache(
        swept.model.transform(validated.valid).select(
            *[col(c) for c in (spec.id_column, *spec.columns, *inputs.audit)],
            F.col(CLUSTER),
            *[F.col(c) for c in algorithm.outputs],
            distance_to_center(centers.tolist()).alias(DISTANCE),
        )
    )
    segments = ctx.settings.segments
    every = quantile_every(validated.usable, segments.quantile_sample)
    summary = cluster_summary(clustered, spec, segments.outlier_quantile, every)  # fills the cache
    sizes = dict(zip(summary[CLUSTER], summary["size"], strict=True))
    columns = vector_columns(prepared.preparation, spec)
    segment_of = segment_ids(centers_unscaled, sizes, mean, std, columns, earlier)
    summary[SEGMENT] = summary[CLUSTER].map(segment_of)
    return Assigned(
        clustered=clustered,
        assigned=with_segment(clustered, segment_of),
        segment_of=segment_of,
        summary=summary,
        centers=centers,
        centers_unscaled=centers_unscaled,
        mean=mean,
        std=std,
        columns=columns,
        quantile_every=every,
    )


def profile(ctx: Context, inputs: Inputs, assigned: Assigned, clipped: bool) -> Profiled:
    """Each segment's profile in original units, its name and suggested action; tiny segments."""
    settings, spec = ctx.settings.segments, inputs.spec
    originals = {
        segment: original_units(assigned.centers_unscaled[cluster], spec)
        for cluster, segment in assigned.segment_of.items()
    }
    profiles = profile_segments(assigned.summary, assigned.assigned, spec, originals, settings)
    profiles = add_audit_shares(profiles, assigned.assigned, inputs.audit)
    warnings = small_segments(profiles, settings.min_size, clipped=clipped)
    for warning in warnings:
        log.warning("%s", warning)
    return Profiled(profiles, dict(zip(profiles[SEGMENT], profiles["segment_name"], strict=True)), warnings)


def wants_rules(settings: Settings, spec: FeatureSpec) -> bool:
    return settings.segments.rule_depth > 0 and bool(spec.numeric)


def rules(
    ctx: Context,
    inputs: Inputs,
    validated: Validated,
    prepared: Prepared,
    assigned: Assigned,
    profiled: Profiled,
) -> Rules:
    """A plain rule per segment, from a decision tree on the features in original units."""
    settings = ctx.settings
    return segment_rules(
        assigned.assigned,
        inputs.spec.numeric,
        profiled.names,
        imputer_medians(prepared.preparation, inputs.spec.numeric),
        settings.segments.rule_depth,
        settings.model.seed,
        rows=validated.usable,
    )


def write_assignments(ctx: Context, inputs: Inputs, assigned: Assigned, profiled: Profiled) -> Written:
    """``assignments/`` with the outlier flag and the control group; the profiles get their counts."""
    settings = ctx.settings
    table = assignments(assigned.assigned, inputs.spec.id_column, profiled.names, settings.model.algorithm)
    thresholds = assigned.thresholds
    table = act_columns(table, thresholds, settings.output.control_share, settings.output.control_salt)
    write_table(table, f"{ctx.staging}/assignments", ctx.format)
    counts = segment_counts(ctx.read_back("assignments", inferSchema="true"))
    return Written(profiled.profiles.merge(counts, on=SEGMENT, how="left"), thresholds)


def write_tables(
    ctx: Context,
    inputs: Inputs,
    validated: Validated,
    swept: Swept,
    assigned: Assigned,
    profiled: Profiled,
    written: Written,
) -> None:
    """``profiles/``, ``k_metrics/``, ``rejects/``, the report's ``sample/`` and the ``model/``."""
    spark, staging, fmt = ctx.spark, ctx.staging, ctx.format
    write_table(small_table(spark, written.profiles), f"{staging}/profiles", fmt)
    write_table(small_table(spark, swept.k_metrics), f"{staging}/k_metrics", fmt)
    write_table(validated.rejects, f"{staging}/rejects", fmt)
    sample = report_sample(assigned.assigned, inputs.spec, validated.usable, ctx.settings.model.seed)
    named = sample.withColumn("segment_name", lookup(profiled.names, F.col(SEGMENT)))
    write_table(named, f"{staging}/sample", fmt)
    swept.model.write().overwrite().save(f"{staging}/model")


def write_rules(ctx: Context, rules: Rules, run_id: str) -> None:
    """``rules/`` and ``rules.sql``."""
    write_table(small_table(ctx.spark, rules.table), f"{ctx.staging}/rules", ctx.format)
    ctx.lake.write_text(f"{ctx.staging}/{RULES_SQL}", sql_file(rules, run_id))


def write_order_rejects(ctx: Context, orders: OrderFeatures) -> None:
    write_table(orders.rejects, f"{ctx.staging}/order_rejects", ctx.format)


def verify(ctx: Context, validated: Validated) -> Verified:
    """Rows read = assigned + rejected, the assigned ones counted as written (and the same for orders)."""
    written = ctx.read_back("assignments")
    rows_assigned = written.count()
    if validated.orders is not None:
        verify_order_accounting(ctx.spark, validated.orders.rows, f"{ctx.staging}/order_rejects", ctx.format)
    if rows_assigned + validated.rows_rejected != validated.rows_read:
        raise SegsparkError(
            f"row accounting failed: read {validated.rows_read}, assigned {rows_assigned}, "
            f"rejected {validated.rows_rejected}; the run was not published"
        )
    return Verified(written, rows_assigned)


def migration_since(ctx: Context, earlier: EarlierRun, verified: Verified) -> Migration:
    """Customers per (earlier segment, this run's segment)."""
    before = ctx.spark.read.format(earlier.format).options(header="true").load(earlier.assignments_path)
    return Migration.model_validate(
        {"previous_run": earlier.run_id, "matrix": migration(before, verified.assignments)}
    )


def _where(settings: Settings) -> str:
    source = settings.input.customers or settings.input.orders
    return f"table {source.table}" if source.table else f"{source.format} at {source.path}"
