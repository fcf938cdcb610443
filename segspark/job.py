"""The orchestration: ``run(settings) -> RunResult``, read -> validate -> prepare -> sweep -> assign ->
profile -> rules (in a thread, beside the writes) -> write -> verify -> report (in a thread, beside the
catalog's writes) -> publish.
Each step is a function of ``steps.py`` (or of the module that owns it) returning a small typed result;
this module runs them in order, times them, and builds the manifest once from their results (at the
end, or when a step fails).
"""

from __future__ import annotations

import importlib
import logging
import platform
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyspark
from pyspark.sql import SparkSession

from segspark import __version__
from segspark.catalog import (
    catalog_section,
    catalog_tables,
    check_catalog,
    check_catalog_free,
    session_settings,
)
from segspark.config import Settings
from segspark.experiment import HASH_HEX_DIGITS, OUTLIER_ACCURACY, TOLERANCE_SDS
from segspark.history import drift_warnings
from segspark.lake import Lake
from segspark.manifest import (
    FAILED,
    MANIFEST_FILE,
    SUCCEEDED,
    Control,
    Features,
    KChoice,
    Manifest,
    Migration,
    Outliers,
    Quantiles,
    Rows,
    RulesSection,
    Segment,
    Space,
    plain,
    read_manifest,
)
from segspark.metrics import SEGMENT
from segspark.prepare import Prepared, prepare
from segspark.profiles import MIN_SAMPLED
from segspark.report import REPORT_FILE, write_report
from segspark.rules import Rules
from segspark.runtime import Runtime, is_connect
from segspark.segments import EarlierRun, earlier_run
from segspark.session import get_session, local_input_bytes
from segspark.steps import (
    RULES_SQL,
    Assigned,
    Context,
    Inputs,
    Profiled,
    Sources,
    Swept,
    Validated,
    Verified,
    Written,
    assign,
    choose_features,
    migration_since,
    profile,
    read,
    rules,
    sweep,
    validate,
    verify,
    wants_rules,
    write_assignments,
    write_order_rejects,
    write_rules,
    write_tables,
)

log = logging.getLogger(__name__)

OUTLIER_METHOD = f"percentile_approx (accuracy {OUTLIER_ACCURACY}) of the distances in each segment"
OUTPUTS = ("assignments", "profiles", "k_metrics", "rejects", "model", "sample")  # of every run


# scikit-learn (the sweep's fits, the rules' tree) takes 1.5-2 s to import on 2 cores: it is imported
# where it is used, and while a new session's JVM starts (when this Python process is otherwise idle) in
# a thread
BACKGROUND_IMPORTS = ("sklearn.cluster", "sklearn.metrics", "sklearn.tree")


def _import_in_background(modules: tuple[str, ...]) -> None:
    """Import ``modules`` in a daemon thread; a later import of one waits for it (Python's import lock)."""

    def load() -> None:
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError:  # raised again where the module is used, with the step that needs it
                return

    threading.Thread(target=load, name="imports", daemon=True).start()


@dataclass
class RunResult:
    run_id: str
    run_dir: str
    record: Manifest  # the manifest, typed
    profiles: pd.DataFrame
    k_metrics: pd.DataFrame
    manifest: dict[str, Any] = field(init=False)  # ... and as written to manifest.json

    def __post_init__(self) -> None:
        self.manifest = self.record.to_dict()

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


@dataclass
class Done:
    """The steps' results so far: the manifest is built from them, at the end or when a step fails."""

    sources: Sources | None = None
    inputs: Inputs | None = None
    validated: Validated | None = None
    prepared: Prepared | None = None
    swept: Swept | None = None
    assigned: Assigned | None = None
    profiled: Profiled | None = None
    rules: Rules | None = None
    written: Written | None = None
    verified: Verified | None = None
    migration: Migration | None = None


def run(settings: Settings, spark: SparkSession | None = None) -> RunResult:
    """Run the whole job and publish its outputs; on failure, earlier runs stay as they were."""
    inputs = [source.path for source in (settings.input.customers, settings.input.orders) if source]
    if spark is None:
        _import_in_background(BACKGROUND_IMPORTS)
        # with output.catalog: the embedded catalog, unless another process has it open; for a small
        # local input, a JVM that starts quicker
        check_catalog_free(settings)
        spark = get_session(session_settings(settings), local_input_bytes(inputs))
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
    started = Manifest.model_validate(manifest)  # what is known before the first step
    ctx = Context(spark, settings, lake, staging)
    done = Done()
    try:
        return _flow(ctx, step, started, done)
    except Exception as exc:
        failed = _so_far(settings, started, done, step).model_copy(
            update={"status": FAILED, "error": f"{type(exc).__name__}: {exc}"}
        )
        _try_write_manifest(lake, staging, failed)
        raise
    finally:
        ctx.cache.release()


def _flow(ctx: Context, step: StepTimer, started: Manifest, done: Done) -> RunResult:
    settings, lake = ctx.settings, ctx.lake
    with step("read"):
        done.sources = read(ctx)
        done.inputs = choose_features(ctx, done.sources)
    with step("validate"):
        done.validated = validate(ctx, done.inputs)
        done.validated.check(settings)
    with step("prepare"):
        done.prepared = prepare(done.validated.valid, done.validated.usable, done.inputs.spec, settings)
    earlier = _earlier_run(lake)
    with step("sweep"):
        done.swept = sweep(ctx, done.prepared, earlier)
    with step("assign"):
        done.assigned = assign(ctx, done.inputs, done.validated, done.prepared, done.swept, earlier)
    with step("profile"):
        done.profiled = profile(ctx, done.inputs, done.assigned, clipped=bool(done.prepared.bounds))
    # the rules' tree is learned while the assignments and the tables are written (both mostly JVM work,
    # one call at a time each: together they use the second core); over Spark Connect, where a model's
    # calls need the session of the thread that makes them, before the writes
    rules_wanted = wants_rules(settings, done.inputs.spec)
    if rules_wanted and is_connect(ctx.spark):
        done.rules = _rules(ctx, step, done)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rules") as beside:
        learning = beside.submit(_rules, ctx, step, done) if rules_wanted and done.rules is None else None
        with step("write assignments"):
            done.written = write_assignments(ctx, done.inputs, done.assigned, done.profiled)
        with step("write profiles, metrics, rejects, model"):
            write_tables(
                ctx, done.inputs, done.validated, done.swept, done.assigned, done.profiled, done.written
            )
        if learning is not None:
            done.rules = learning.result()
    if done.rules is not None:
        with step("write rules"):
            write_rules(ctx, done.rules, started.run_id)
    if done.inputs.orders is not None:
        with step("write order rejects"):
            write_order_rejects(ctx, done.inputs.orders)
    with step("verify"):
        done.verified = verify(ctx, done.validated)
    if earlier is not None:
        with step("migration"):
            done.migration = migration_since(ctx, earlier, done.verified)

    manifest = _succeeded(ctx, started, done, step, earlier)
    lake.write_text(f"{ctx.staging}/{MANIFEST_FILE}", manifest.to_json())
    # the report (mostly Python drawing figures) is made while the catalog (the JVM) writes the tables and
    # views; the files are published once both are done, and a failure in either undoes both
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="report") as background:
        report = background.submit(_report, ctx, step) if settings.output.report else None
        with step("publish"), catalog_tables(ctx.spark, lake, settings.output, manifest):
            if report is not None:
                report.result()
            run_dir = lake.publish(manifest.run_id)
    manifest.timings = step.timings  # the result's timings include the report and the publishing
    return RunResult(manifest.run_id, run_dir, manifest, done.written.profiles, done.swept.k_metrics)


def _rules(ctx: Context, step: StepTimer, done: Done) -> Rules:
    with step("rules"):
        return rules(ctx, done.inputs, done.validated, done.prepared, done.assigned, done.profiled)


def _report(ctx: Context, step: StepTimer) -> None:
    with step("report"):  # from the staged outputs, exactly as `segspark report` rebuilds it
        write_report(ctx.spark, ctx.staging)


def _so_far(settings: Settings, started: Manifest, done: Done, step: StepTimer) -> Manifest:
    """The manifest's sections the steps so far give: the features, the orders, consent, warnings,
    the migration, the timings (all a failed run's manifest has, with its error)."""
    sections: dict[str, Any] = {"timings": step.timings}
    warnings = list(started.warnings)
    if done.sources is not None:
        sections["orders"] = done.validated.orders if done.validated else done.sources.described_orders
    if done.inputs is not None:
        sections["features"] = _features(settings, done.inputs, done.prepared)
    if done.validated is not None:
        sections["consent"] = done.validated.consent
    if done.swept is not None and done.swept.sweep.near_tie:
        warnings.append(f"near tie: {done.swept.sweep.verdict()}")
    if done.profiled is not None:
        warnings += done.profiled.warnings
    if done.migration is not None:
        sections["migration"] = done.migration
    sections["warnings"] = warnings
    # sections a run does not have (no orders, no consent rule) stay out of manifest.json
    return started.model_copy(update={k: v for k, v in sections.items() if v is not None})


def _succeeded(
    ctx: Context, started: Manifest, done: Done, step: StepTimer, earlier: EarlierRun | None
) -> Manifest:
    """The manifest of a run whose outputs are staged and verified, built from the steps' results."""
    settings, assigned = ctx.settings, done.assigned
    run_dir = ctx.lake.run_dir(started.run_id)
    outputs = [
        *OUTPUTS,
        *(["order_rejects"] if done.inputs.orders is not None else []),
        *(["rules", RULES_SQL] if done.rules is not None else []),
    ]
    sections: dict[str, Any] = {
        "status": SUCCEEDED,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": Rows(
            read=done.validated.rows_read,
            assigned=done.verified.rows_assigned,
            rejected=done.validated.rows_rejected,
        ),
        "k": _k_choice(settings, done.swept),
        "space": Space(
            vector_columns=assigned.columns,
            scaler_mean=assigned.mean.tolist(),
            scaler_std=assigned.std.tolist(),
        ),
        "segments": _segments(done),
        "outliers": Outliers(
            quantile=settings.segments.outlier_quantile,
            method=OUTLIER_METHOD + ("" if assigned.quantile_every == 1 else ", its customers in quantiles"),
        ),
        "quantiles": _quantiles(assigned.quantile_every),
        "rules": _rules_section(done.rules),
        "control": _control(settings),
        "outputs": {name: f"{run_dir}/{name}" for name in outputs}
        | ({"report": f"{run_dir}/{REPORT_FILE}"} if settings.output.report else {}),
    }
    manifest = _so_far(settings, started, done, step).model_copy(
        update={k: v for k, v in sections.items() if v is not None}
    )
    manifest.warnings = [
        *manifest.warnings,
        *drift_warnings(ctx.lake, earlier.run_id if earlier else None, manifest),
    ]
    if settings.output.catalog is not None:
        manifest.catalog = catalog_section(settings.output.catalog, manifest)
    return manifest


def _quantiles(every: int) -> Quantiles:
    """Whose quartiles (profiles) and distance quantiles (outlier thresholds) they are."""
    if every == 1:
        return Quantiles(every=1, method="of every customer of each segment")
    method = (
        f"of the customers whose pmod(xxhash64(id), {every}) = 0 (about 1 in {every}) in segments of"
        f" {every * MIN_SAMPLED} customers or more, of every customer in smaller segments;"
        " segments.quantile_sample: 0 for every customer"
    )
    return Quantiles(every=every, method=method)


def _features(settings: Settings, inputs: Inputs, prepared: Prepared | None) -> Features:
    """The features used, those left out and why, and (once prepared) the clip bounds."""
    spec = inputs.spec
    features = Features(
        id_column=spec.id_column,
        numeric=spec.numeric,
        categorical=spec.categorical,
        log=spec.log,
        sensitive_excluded=spec.sensitive_excluded,
        not_numeric=spec.not_numeric,
        sensitive_allowed=spec.sensitive_allowed,
        sensitive_terms=list(settings.features.sensitive),
        audit_only=inputs.audit,
    )
    if prepared is not None:
        features.clip = {c: list(b) for c, b in prepared.bounds.items()} if prepared.bounds else None
    return features


def _k_choice(settings: Settings, swept: Swept) -> KChoice:
    """How k was chosen: the rule, the runner-up, how clearly k won, every k's metrics."""
    sweep, contest = swept.sweep, swept.sweep.contest
    runner_up = sweep.runner_up
    return KChoice(
        algorithm=sweep.algorithm,
        chosen=sweep.chosen.k,
        silhouette=sweep.chosen.silhouette,
        rule=sweep.rule,
        selection=settings.model.selection,
        sweep_rows=sweep.sample_rows or sweep.rows,
        runner_up=None if runner_up is None else {"k": runner_up.k, "silhouette": runner_up.silhouette},
        margin=contest.margin if contest else None,
        noise=contest.noise if contest else None,
        near_tie=sweep.near_tie,
        verdict=sweep.verdict(),
        kept_earlier=sweep.kept_earlier,
        confirmed=sweep.chosen.confirmed,
        stability=sweep.stability or None,
        metrics=plain(swept.k_metrics.to_dict(orient="records")),
    )


def _segments(done: Done) -> list[Segment]:
    """Per segment: size, share, name, action, the act counts, its cluster, centroid and outlier
    threshold, and its rule when the run has rules."""
    profiles, cluster_of = done.written.profiles, done.assigned.cluster_of
    counts = [c for c in ("outliers", "control", "treatment") if c in profiles.columns]
    rules = done.rules.table.set_index(SEGMENT) if done.rules is not None else None
    segments = []
    for row in plain(
        profiles[[SEGMENT, "segment_name", "size", "share", "action", *counts]].to_dict("records")
    ):
        cluster = cluster_of[row[SEGMENT]]
        entry = {
            **row,
            "cluster": cluster,
            "center_unscaled": done.assigned.centers_unscaled[cluster].tolist(),
            "outlier_threshold": done.written.thresholds.get(row[SEGMENT]),
        }
        if rules is not None:
            rule = rules.loc[row[SEGMENT]]
            entry |= plain(
                {"rule": rule["rule"], "rule_precision": rule["precision"], "rule_coverage": rule["coverage"]}
            )
        segments.append(Segment.model_validate(entry))
    return segments


def _rules_section(rules: Rules | None) -> RulesSection | None:
    if rules is None:
        return None
    return RulesSection(method=rules.method, depth=rules.depth, missing_as=rules.missing_as)


def _control(settings: Settings) -> Control | None:
    """The manifest's ``control``, when the run holds out control groups."""
    share = settings.output.control_share
    if share <= 0:
        return None
    return Control(
        share=share,
        salt=settings.output.control_salt,
        hash=f"sha2('<salt>:<customer_id>', 256): first {HASH_HEX_DIGITS} hex digits / "
        f"16^{HASH_HEX_DIGITS} < share",
        tolerance=f"{TOLERANCE_SDS} binomial standard deviations per segment",
    )


def _earlier_run(lake: Lake) -> EarlierRun | None:
    """The run ``latest`` points at, if it can anchor this run's segment ids."""
    run_id = lake.latest_run_id()
    if run_id is None:
        return None
    run_dir = lake.run_dir(run_id)
    try:
        earlier = earlier_run(read_manifest(lake, run_dir), run_dir)
    except Exception as exc:  # an unreadable earlier run must not stop this one
        log.warning("cannot read run %s (%s): segment ids start afresh", run_id, exc)
        return None
    if earlier is None:
        log.warning("run %s has no segment centroids: segment ids start afresh", run_id)
    return earlier


def _try_write_manifest(lake: Lake, staging: str, manifest: Manifest) -> None:
    try:
        lake.write_text(f"{staging}/{MANIFEST_FILE}", manifest.to_json())
    except Exception:  # the original error matters more than this one
        log.exception("could not write the failed run's manifest to %s", staging)
