"""The orchestration: ``run(settings) -> RunResult``, read -> validate -> prepare -> sweep -> assign ->
profile -> publish. Each step is a function of another module; this one only wires them, times them
and writes the manifest.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyspark
import pyspark.sql.functions as F
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession

from segspark import __version__
from segspark.catalog import catalog_section, catalog_tables, check_catalog, session_settings
from segspark.config import ConsentSettings, Settings
from segspark.consent import NO_CONSENT, check_consent_column
from segspark.errors import InputDataError, SegsparkError
from segspark.experiment import (
    CONTROL,
    HASH_HEX_DIGITS,
    OUTLIER_ACCURACY,
    TOLERANCE_SDS,
    TREATMENT,
    act_columns,
    outlier_thresholds,
    segment_counts,
)
from segspark.features import (
    ORDER_CUSTOMER_ID,
    OrderFeatures,
    count_matches,
    count_orders,
    join_customers,
    order_features,
)
from segspark.history import drift_warnings
from segspark.lake import Lake, read_source, small_table, write_table
from segspark.metrics import CLUSTER, SEGMENT
from segspark.prepare import FEATURES, prepare, scaler_of, vector_columns
from segspark.profiles import add_audit_shares, check_playbook, profile_segments, small_segments
from segspark.report import REPORT_FILE, write_report
from segspark.rules import Rules, imputer_medians, segment_rules, sql_file
from segspark.segments import (
    EarlierRun,
    assignments,
    earlier_run,
    lookup,
    migration,
    segment_ids,
    with_segment,
)
from segspark.runtime import Runtime
from segspark.session import get_session
from segspark.sweep import PROBABILITY, SweepResult, centers_of, fitter_for, spark_model, sweep_k
from segspark.validate import (
    FeatureSpec,
    col,
    resolve_features,
    sensitive_match,
    split_rejects,
    with_reject_reason,
)

log = logging.getLogger(__name__)

AS_OF_GIVEN = "given (input.orders.as_of)"
AS_OF_DEFAULT = "the day after the last valid order"
REPORT_SAMPLE_ROWS = 5_000  # customers in sample/, the only per-customer data the report sees


@dataclass
class RunResult:
    run_id: str
    run_dir: str
    manifest: dict[str, Any]
    profiles: pd.DataFrame
    k_metrics: pd.DataFrame

    @property
    def rows(self) -> dict[str, int]:
        return self.manifest["rows"]


@dataclass
class StepTimer:
    """Times each step, labels its Spark jobs (UI / history server) and logs progress lines."""

    spark: SparkSession
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        log.info("%s ...", name)
        started = time.perf_counter()
        with self.label(name):
            yield
        elapsed = time.perf_counter() - started
        self.timings[name] = round(self.timings.get(name, 0.0) + elapsed, 3)
        log.info("%s done in %.1fs", name, elapsed)

    @contextmanager
    def label(self, name: str) -> Iterator[None]:
        """Label the Spark jobs started inside (a sub-step, such as one k of the sweep)."""
        with Runtime(self.spark).label(name):
            yield


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def run(settings: Settings, spark: SparkSession | None = None) -> RunResult:
    """Run the whole job and publish its outputs; on failure, earlier runs stay as they were."""
    spark = spark or get_session(session_settings(settings))  # with output.catalog: the embedded catalog
    run_id = settings.output.run_id or new_run_id()
    lake = Lake(spark, settings.output.path)
    lake.check_writable(run_id)
    catalog_warnings = check_catalog(spark, settings.output)  # the catalog opens, before any work
    staging = lake.staging_dir(run_id)
    lake.delete(staging)
    step = StepTimer(spark)
    runtime = Runtime(spark)
    manifest: dict[str, Any] = {
        "run_id": run_id,
        "status": "running",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {
            "segspark": __version__,
            "spark": spark.version,
            "pyspark": pyspark.__version__,
            "python": platform.python_version(),
        },
        "spark_master": runtime.master,
        "spark_application": {
            "id": runtime.application_id,
            "event_log": runtime.event_log_dir(),  # the history server shows the run's jobs from here
            "remote": runtime.remote,  # the Spark Connect server, None in a classic session
        },
        "settings": settings.to_dict(),
        "warnings": catalog_warnings,  # plain sentences for the summary and the report (tiny segments, ...)
    }
    cached: list[DataFrame] = []
    try:
        result = _run_steps(spark, settings, lake, staging, step, manifest, cached)
    except Exception as exc:
        manifest.update(status="failed", error=f"{type(exc).__name__}: {exc}", timings=step.timings)
        _try_write_manifest(lake, staging, manifest)
        raise
    finally:
        for df in cached:
            df.unpersist()
    return result


def _run_steps(spark, settings, lake, staging, step, manifest, cached) -> RunResult:
    with step("read"):
        orders = read_orders(spark, settings, cached)
        raw, id_column = read_input(spark, settings, manifest, orders)
        consent = consent_of(settings)
        check_consent_column(raw, consent)
        spec = resolve_features(raw, id_column, settings.features, exclude=_consent_column(consent))
        check_playbook(settings.segments, spec.numeric)
        audit = audit_columns(raw, spec, settings.features.sensitive)
    manifest["features"] = {
        **_describe_features(spec),
        "sensitive_terms": list(settings.features.sensitive),
        "audit_only": audit,
    }

    with step("validate"):
        if orders is not None:
            manifest["orders"].update(count_orders(orders))
            if settings.input.customers is not None:
                manifest["orders"].update(count_matches(raw, orders, id_column))
        checked = with_reject_reason(
            raw, spec, settings.features.missing, keep=audit, consent=consent
        ).persist()
        cached.append(checked)
        rows_read = checked.count()
        if rows_read == 0:
            raise InputDataError(f"the input has no rows ({_where(settings)}); nothing to segment")
        valid, rejects = split_rejects(checked, spec)
        rows_rejected = rejects.count()
        if consent is not None:
            manifest["consent"] = describe_consent(consent, rejects)
        if rows_read == rows_rejected:
            raise InputDataError(
                f"all {rows_read} input rows were rejected; the commonest reason: {_top_reason(rejects)}"
            )
        if rows_rejected:
            log.warning(
                "%d of %d rows rejected (see rejects/); commonest: %s",
                rows_rejected,
                rows_read,
                _top_reason(rejects),
            )

    with step("prepare"):
        prepared = prepare(valid, rows_read - rows_rejected, spec, settings)
        preparation, bounds = prepared.preparation, prepared.bounds
        manifest["features"]["clip"] = {c: list(b) for c, b in bounds.items()} if bounds else None

    earlier = _earlier_run(lake)
    with step("sweep"):
        earlier_k = (len(earlier.segments), earlier.run_id) if earlier else None
        fitter = fitter_for(settings.model, spark)
        sweep = sweep_k(prepared.points, settings.model, fitter, earlier_k, prepared.population)
        chosen = spark_model(spark, sweep.chosen, settings.model.seed)
    if sweep.near_tie:
        manifest["warnings"].append(f"near tie: {sweep.verdict()}")
    model = PipelineModel(stages=[*preparation.stages, chosen])

    with step("assign"):
        scaler = scaler_of(preparation)
        mean, std = scaler.mean.toArray(), scaler.std.toArray()
        centers = np.array(centers_of(chosen))
        centers_unscaled = centers * std + mean
        outputs = [F.col(CLUSTER)] + (
            [F.col(PROBABILITY)] if settings.model.algorithm == "gaussian_mixture" else []
        )
        clustered = (
            model.transform(valid)
            .select(*[col(c) for c in (spec.id_column, *spec.columns, *audit)], F.col(FEATURES), *outputs)
            .persist()
        )
        cached.append(clustered)
        sizes = {row[CLUSTER]: row["count"] for row in clustered.groupBy(CLUSTER).count().collect()}
        columns = vector_columns(preparation, spec)
        segment_of = segment_ids(centers_unscaled, sizes, mean, std, columns, earlier)
        cluster_of = {segment: cluster for cluster, segment in segment_of.items()}
        assigned = with_segment(clustered, segment_of)

    with step("profile"):
        originals = {segment_of[c]: original_units(centers_unscaled[c], spec) for c in segment_of}
        profiles = profile_segments(assigned, spec, originals, settings.segments)
        profiles = add_audit_shares(profiles, assigned, audit)
        names = dict(zip(profiles[SEGMENT], profiles["segment_name"], strict=True))
    rules = None
    if settings.segments.rule_depth > 0 and spec.numeric:
        with step("rules"):
            missing_as = imputer_medians(preparation, spec.numeric)
            rules = segment_rules(
                assigned,
                spec.numeric,
                names,
                missing_as,
                settings.segments.rule_depth,
                settings.model.seed,
                rows=rows_read - rows_rejected,
            )
    for warning in small_segments(profiles, settings.segments.min_size, clipped=bool(bounds)):
        log.warning("%s", warning)
        manifest["warnings"].append(warning)

    k_metrics = pd.DataFrame(
        [
            {"algorithm": sweep.algorithm, **r.metrics(), "chosen": r.k == sweep.chosen.k}
            for r in sweep.results
        ]
    )
    fmt = settings.output.format
    with step("write assignments"):
        table = assignments(assigned, spec.id_column, names, centers.tolist())
        thresholds = outlier_thresholds(table, settings.segments.outlier_quantile)
        table = act_columns(table, thresholds, settings.output.control_share, settings.output.control_salt)
        write_table(table, f"{staging}/assignments", fmt)
        counts = segment_counts(_read(spark, f"{staging}/assignments", fmt))
        profiles = profiles.merge(counts, on=SEGMENT, how="left")
    with step("write profiles, metrics, rejects, model"):
        write_table(small_table(spark, profiles), f"{staging}/profiles", fmt)
        write_table(small_table(spark, k_metrics), f"{staging}/k_metrics", fmt)
        write_table(rejects, f"{staging}/rejects", fmt)
        sample = report_sample(assigned, spec, rows_read - rows_rejected, settings.model.seed)
        write_table(
            sample.withColumn("segment_name", lookup(names, F.col(SEGMENT))), f"{staging}/sample", fmt
        )
        model.write().overwrite().save(f"{staging}/model")
    if rules is not None:
        with step("write rules"):
            write_table(small_table(spark, rules.table), f"{staging}/rules", fmt)
            lake.write_text(f"{staging}/{RULES_SQL}", sql_file(rules, manifest["run_id"]))
    if orders is not None:
        with step("write order rejects"):
            write_table(orders.rejects, f"{staging}/order_rejects", fmt)
    with step("verify"):
        written = spark.read.format(fmt).options(header="true").load(f"{staging}/assignments")
        rows_assigned = written.count()
        if orders is not None:
            verify_order_accounting(spark, manifest["orders"]["rows"], f"{staging}/order_rejects", fmt)
    if earlier is not None:
        with step("migration"):
            earlier_assignments = (
                spark.read.format(earlier.format).options(header="true").load(earlier.assignments_path)
            )
            manifest["migration"] = {
                "previous_run": earlier.run_id,
                "matrix": migration(earlier_assignments, written),
            }
    if rows_assigned + rows_rejected != rows_read:
        raise SegsparkError(
            f"row accounting failed: read {rows_read}, assigned {rows_assigned}, rejected {rows_rejected}; "
            "the run was not published"
        )

    run_dir = lake.run_dir(manifest["run_id"])
    manifest.update(
        status="succeeded",
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        rows={"read": rows_read, "assigned": rows_assigned, "rejected": rows_rejected},
        k={
            "algorithm": sweep.algorithm,
            "chosen": sweep.chosen.k,
            "silhouette": sweep.chosen.silhouette,
            "rule": sweep.rule,
            "selection": settings.model.selection,
            "sweep_rows": sweep.sample_rows or sweep.rows,
            "runner_up": _describe_k(sweep.runner_up),
            **_describe_contest(sweep),
            "stability": sweep.stability or None,
            "metrics": k_metrics.to_dict(orient="records"),
        },
        space={"vector_columns": columns, "scaler_mean": mean.tolist(), "scaler_std": std.tolist()},
        segments=[
            {
                **row,
                "cluster": cluster_of[row[SEGMENT]],
                "center_unscaled": centers_unscaled[cluster_of[row[SEGMENT]]].tolist(),
                "outlier_threshold": thresholds.get(row[SEGMENT]),
                **_rule_of(rules, row[SEGMENT]),
            }
            for row in profiles[
                [SEGMENT, "segment_name", "size", "share", "action", *_count_columns(profiles)]
            ].to_dict(orient="records")
        ],
        outliers={"quantile": settings.segments.outlier_quantile, "method": OUTLIER_METHOD},
        **_act_sections(settings, rules),
        timings=step.timings,
        outputs={
            name: f"{run_dir}/{name}"
            for name in ("assignments", "profiles", "k_metrics", "rejects", "model", "sample")
            + (("order_rejects",) if orders is not None else ())
            + (("rules", RULES_SQL) if rules is not None else ())
        },
    )
    if settings.output.report:
        manifest["outputs"]["report"] = f"{run_dir}/{REPORT_FILE}"
    manifest["warnings"] += drift_warnings(lake, earlier.run_id if earlier else None, manifest)
    if settings.output.catalog is not None:
        manifest["catalog"] = catalog_section(settings.output.catalog, manifest)
    lake.write_text(f"{staging}/manifest.json", _to_json(manifest))
    if settings.output.report:
        with step("report"):  # from the staged outputs, exactly as `segspark report` rebuilds it
            write_report(spark, staging)
    # the catalog's tables and views first, then the files; a failure in either undoes both
    with step("publish"), catalog_tables(spark, lake, settings.output, manifest):
        run_dir = lake.publish(manifest["run_id"])
    return RunResult(manifest["run_id"], run_dir, manifest, profiles, k_metrics)


def read_input(
    spark: SparkSession,
    settings: Settings,
    manifest: dict[str, Any],
    orders: OrderFeatures | None = None,
) -> tuple[DataFrame, str]:
    """The customer rows to segment and their id column.

    From the customer table; from the orders alone (one row per customer with a valid order, id
    ``customer_id``); or the customer table left-joined with the order features (see
    ``features.join_customers`` for customers without orders). ``orders``: features already built by
    ``read_orders`` (built here when not given).
    """
    customers = settings.input.customers
    if settings.input.orders is None:
        return read_source(spark, customers, ids=(customers.id_column,)), customers.id_column
    orders = orders or read_orders(spark, settings)
    described = manifest.setdefault("orders", {})
    described.update(
        as_of=orders.as_of.isoformat(),
        as_of_rule=AS_OF_GIVEN if orders.as_of_given else AS_OF_DEFAULT,
        features=orders.columns,
        categories=orders.categories,
    )
    if customers is None:
        return orders.features, ORDER_CUSTOMER_ID
    joined, replaced = join_customers(
        read_source(spark, customers, ids=(customers.id_column,)), customers.id_column, orders
    )
    if replaced:
        log.warning(
            "customer columns replaced by the features built from the orders: %s", ", ".join(replaced)
        )
    described["replaced_customer_columns"] = replaced
    return joined, customers.id_column


def read_orders(
    spark: SparkSession, settings: Settings, cached: list[DataFrame] | None = None
) -> OrderFeatures | None:
    """Behavioural features from ``input.orders`` (None without it); the checked orders are cached."""
    source = settings.input.orders
    if source is None:
        return None
    return order_features(
        read_source(spark, source, "input.orders", ids=(source.customer_id,)), source, cached
    )


def verify_order_accounting(spark: SparkSession, rows: dict[str, int], path: str, fmt: str) -> None:
    """Order rows read = valid + rejected, with the rejected ones counted where they were written."""
    written = spark.read.format(fmt).options(header="true").load(path).count()
    if written != rows["rejected"] or rows["valid"] + written != rows["read"]:
        raise SegsparkError(
            f"order accounting failed: read {rows['read']}, valid {rows['valid']}, "
            f"rejected {rows['rejected']}, written to order_rejects {written}; the run was not published"
        )


def audit_columns(raw: DataFrame, spec: FeatureSpec, sensitive: list[str]) -> list[str]:
    """Sensitive columns in the input that are not features: profiled per segment for the audit only."""
    return [
        c
        for c in raw.columns
        if c != spec.id_column and c not in spec.columns and sensitive_match(c, sensitive) is not None
    ]


def report_sample(assigned: DataFrame, spec: FeatureSpec, rows: int, seed: int) -> DataFrame:
    """A uniform sample of at most REPORT_SAMPLE_ROWS customers for plots: features and segment, no ids."""
    fraction = min(1.0, 1.2 * REPORT_SAMPLE_ROWS / max(rows, 1))  # a little over, then cut to size
    sampled = assigned if fraction >= 1.0 else assigned.sample(fraction=fraction, seed=seed)
    return sampled.select(F.col(SEGMENT), *[col(c) for c in spec.columns]).limit(REPORT_SAMPLE_ROWS)


def original_units(center_unscaled: np.ndarray, spec: FeatureSpec) -> list[float]:
    """A centroid's numeric features in original units (expm1 undoes log1p)."""
    return [
        math.expm1(value) if column in spec.log else float(value)
        for column, value in zip(spec.numeric, center_unscaled, strict=False)
    ]


OUTLIER_METHOD = f"percentile_approx (accuracy {OUTLIER_ACCURACY}) of the distances in each segment"
RULES_SQL = "rules.sql"


def consent_of(settings: Settings) -> ConsentSettings | None:
    return settings.input.customers.consent if settings.input.customers is not None else None


def _consent_column(consent: ConsentSettings | None) -> tuple[str, ...]:
    return (consent.column,) if consent is not None else ()


def describe_consent(consent: ConsentSettings, rejects: DataFrame) -> dict[str, Any]:
    """The manifest's ``consent``: the setting and how many customers were left out for lack of it."""
    left_out = rejects.filter(F.col("reason") == F.lit(NO_CONSENT)).count()
    return {"column": consent.column, "allowed": list(consent.allowed), "rejected": left_out}


def _read(spark: SparkSession, path: str, fmt: str) -> DataFrame:
    return spark.read.format(fmt).options(header="true", inferSchema="true").load(path)


def _count_columns(profiles: pd.DataFrame) -> list[str]:
    return [c for c in ("outliers", CONTROL, TREATMENT) if c in profiles.columns]


def _rule_of(rules: Rules | None, segment: int) -> dict[str, Any]:
    """A segment's rule and its figures for the manifest's segment list (empty without rules)."""
    if rules is None:
        return {}
    row = rules.table.set_index(SEGMENT).loc[segment]
    return {"rule": row["rule"], "rule_precision": row["precision"], "rule_coverage": row["coverage"]}


def _act_sections(settings: Settings, rules: Rules | None) -> dict[str, Any]:
    """The manifest's ``rules`` and ``control`` sections, for the settings in force."""
    sections: dict[str, Any] = {}
    if rules is not None:
        sections["rules"] = {"method": rules.method, "depth": rules.depth, "missing_as": rules.missing_as}
    share = settings.output.control_share
    if share > 0:
        sections["control"] = {
            "share": share,
            "salt": settings.output.control_salt,
            "hash": f"sha2('<salt>:<customer_id>', 256): first {HASH_HEX_DIGITS} hex digits / "
            f"16^{HASH_HEX_DIGITS} < share",
            "tolerance": f"{TOLERANCE_SDS} binomial standard deviations per segment",
        }
    return sections


def _earlier_run(lake: Lake) -> EarlierRun | None:
    """The run ``latest`` points at, if it can anchor this run's segment ids."""
    run_id = lake.latest_run_id()
    if run_id is None:
        return None
    run_dir = lake.run_dir(run_id)
    try:
        earlier = earlier_run(run_id, json.loads(lake.read_text(f"{run_dir}/manifest.json")), run_dir)
    except Exception as exc:  # an unreadable earlier run must not stop this one
        log.warning("cannot read run %s (%s): segment ids start afresh", run_id, exc)
        return None
    if earlier is None:
        log.warning("run %s has no segment centroids: segment ids start afresh", run_id)
    return earlier


def _top_reason(rejects: DataFrame) -> str:
    row = rejects.groupBy("reason").count().orderBy(F.desc("count"), "reason").first()
    return f"{row['reason']} ({row['count']} rows)" if row else "none"


def _where(settings: Settings) -> str:
    source = settings.input.customers or settings.input.orders
    return f"table {source.table}" if source.table else f"{source.format} at {source.path}"


def _describe_features(spec: FeatureSpec) -> dict[str, Any]:
    return {
        "id_column": spec.id_column,
        "numeric": spec.numeric,
        "categorical": spec.categorical,
        "log": spec.log,
        "sensitive_excluded": spec.sensitive_excluded,
        "not_numeric": spec.not_numeric,
        "sensitive_allowed": spec.sensitive_allowed,
    }


def _describe_contest(sweep: SweepResult) -> dict[str, Any]:
    """How clearly k won: the rule's score difference to the runner-up, its noise, near tie or not."""
    contest = sweep.contest
    return {
        "margin": contest.margin if contest else None,
        "noise": contest.noise if contest else None,
        "near_tie": sweep.near_tie,
        "verdict": sweep.verdict(),
        "kept_earlier": sweep.kept_earlier,
        "confirmed": sweep.chosen.confirmed,
    }


def _describe_k(result) -> dict[str, Any] | None:
    return None if result is None else {"k": result.k, "silhouette": result.silhouette}


def _to_json(data: Any) -> str:
    return json.dumps(_plain(data), indent=2, allow_nan=False) + "\n"


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars as Python values, NaN as null (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _try_write_manifest(lake: Lake, staging: str, manifest: dict[str, Any]) -> None:
    try:
        lake.write_text(f"{staging}/manifest.json", _to_json(manifest))
    except Exception:  # the original error matters more than this one
        log.exception("could not write the failed run's manifest to %s", staging)
