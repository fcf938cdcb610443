"""Scoring new customers with a saved run: the same preparation, the same segment ids and names,
the same rejects rules.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession

from segspark.algorithms import ALGORITHMS
from segspark.config import FeatureSettings, SourceSettings, settings_from_dict
from segspark.consent import check_consent_column
from segspark.errors import InputDataError
from segspark.experiment import act_columns
from segspark.lake import Lake, write_table
from segspark.manifest import MANIFEST_FILE, Manifest, read_manifest
from segspark.metrics import DISTANCE
from segspark.runtime import Caches
from segspark.segments import assignments, distance_to_center, with_segment
from segspark.steps import read_input
from segspark.validate import resolve_features, split_rejects, with_reject_reason

log = logging.getLogger(__name__)


def resolve_run(spark: SparkSession, run: str, lake_root: str) -> str:
    """A run folder from ``RUN_DIR`` or ``latest`` (the newest successful run under ``lake_root``)."""
    if run != "latest":
        return run.rstrip("/")
    lake = Lake(spark, lake_root)
    run_id = lake.latest_run_id()
    if run_id is None:
        raise InputDataError(f"--run latest: no published run under {lake_root} (no {lake.path('latest')})")
    return lake.run_dir(run_id)


def successful_run(spark: SparkSession, run_dir: str) -> Manifest:
    """The manifest of the run in ``run_dir``, which must have succeeded (so it has a model)."""
    lake = Lake(spark, run_dir)
    if not lake.exists(f"{run_dir}/{MANIFEST_FILE}"):
        raise InputDataError(
            f"--run {run_dir}: no manifest.json there; give a folder runs/<run_id> of a lake"
        )
    manifest = read_manifest(lake, run_dir)
    if not manifest.succeeded or not manifest.segments:
        raise InputDataError(f"--run {run_dir}: run {manifest.run_id} did not succeed; it has no model")
    return manifest


def with_act_columns(scored: DataFrame, manifest: Manifest) -> DataFrame:
    """``outlier`` with the run's thresholds and ``group`` with its control share and salt, when the run
    has them (runs from before these columns existed score without them)."""
    thresholds = {
        s.segment: s.outlier_threshold for s in manifest.segments if s.outlier_threshold is not None
    }
    if not thresholds:
        return scored
    output = manifest.settings.output
    return act_columns(scored, thresholds, output.control_share, output.control_salt)


def score(
    spark: SparkSession, run_dir: str, source: SourceSettings, output: str, fmt: str = "parquet"
) -> dict[str, Any]:
    """Assign the customers of ``source`` with the run's model; write ``<output>/assignments``,
    ``<output>/rejects`` and ``<output>/score.json`` (the row counts); return that summary."""
    manifest = successful_run(spark, run_dir)
    features = manifest.features
    run_settings = manifest.settings.as_dict()
    input_settings = {**source.model_dump(by_alias=True), "id_column": features.id_column}
    run_customers = run_settings["input"].get("customers") or {}
    if run_customers.get("consent"):  # the run's consent rule holds for the customers it scores
        input_settings["consent"] = run_customers["consent"]
    settings = settings_from_dict({**run_settings, "input": {"customers": input_settings}})
    raw, id_column = read_input(spark, settings)
    consent = settings.input.customers.consent
    check_consent_column(raw, consent)
    spec = resolve_features(
        raw,
        id_column,
        FeatureSettings(
            numeric=features.numeric,
            categorical=features.categorical,
            log=features.log,
            sensitive=settings.features.sensitive,
            allow_sensitive=features.sensitive_allowed,
            missing=settings.features.missing,
        ),
        exclude=(consent.column,) if consent is not None else (),
    )
    cache = Caches()
    checked = with_reject_reason(raw, spec, settings.features.missing, consent=consent, cache=cache)
    try:
        rows_read = checked.count()
        valid, rejects = split_rejects(checked, spec)
        model = PipelineModel.load(f"{run_dir}/model")
        algorithm = manifest.k.algorithm
        centers = ALGORITHMS[algorithm].centres(model.stages[-1])
        segment_of = {s.cluster: s.segment for s in manifest.segments}
        names = {s.segment: s.segment_name for s in manifest.segments}
        clustered = model.transform(valid).withColumn(DISTANCE, distance_to_center(centers))
        scored = assignments(with_segment(clustered, segment_of), id_column, names, algorithm)
        scored = with_act_columns(scored, manifest)
        write_table(scored, f"{output}/assignments", fmt)
        write_table(rejects, f"{output}/rejects", fmt)
        reader = spark.read.format(fmt).options(header="true")
        summary = {
            "run_id": manifest.run_id,
            "run_dir": run_dir,
            "rows": {
                "read": rows_read,
                "assigned": reader.load(f"{output}/assignments").count(),
                "rejected": reader.load(f"{output}/rejects").count(),
            },
            "output": output,
        }
    finally:
        cache.release()
    Lake(spark, output).write_text(f"{output}/score.json", json.dumps(summary, indent=2) + "\n")
    log.info("scored %s rows with run %s", summary["rows"], manifest.run_id)
    return summary
