"""The manifest model: manifest.json keeps its keys and shapes, old manifests load, NaN is null."""

from __future__ import annotations

import json

import numpy as np

from segspark.manifest import KMetrics, Manifest, Segment

# the shape a run of this version writes (values cut short), as other people's scripts read it
WRITTEN = {
    "run_id": "r1",
    "status": "succeeded",
    "started_at": "2026-11-28T14:36:37+00:00",
    "versions": {"segspark": "0.1.0", "spark": "4.3.0", "pyspark": "4.3.0", "python": "3.11.7"},
    "spark_master": "local[*]",
    "spark_application": {"id": "local-1", "event_log": None, "remote": "sc://localhost:15002"},
    "settings": {
        "spark": {"master": "local[*]"},
        "input": {"customers": {"path": "data/c.parquet"}},
        "features": {"numeric": []},
        "model": {"selection": "silhouette"},
        "segments": {"display_names": {"annual_income": "income"}, "drift": {"share": 0.1, "centroid": 1.0}},
        "output": {"path": "lake", "format": "csv", "control_share": 0.1, "control_salt": "s"},
    },
    "warnings": ["near tie: k = 3 and k = 4 fit these customers almost equally well"],
    "features": {"id_column": "customer_id", "numeric": ["income", "age"], "clip": None},
    "migration": {"previous_run": "r0", "matrix": [{"from": -1, "to": 0, "customers": 5}]},
    "finished_at": "2026-11-28T14:41:01+00:00",
    "rows": {"read": 10, "assigned": 9, "rejected": 1},
    "k": {
        "algorithm": "kmeans",
        "chosen": 3,
        "silhouette": 0.8,
        "rule": "highest silhouette over k=2..4",
        "runner_up": {"k": 4, "silhouette": 0.79},
        "margin": 0.01,
        "near_tie": True,
        "verdict": "k = 3 and k = 4 fit these customers almost equally well",
        "stability": None,
        "metrics": [{"algorithm": "kmeans", "k": 3, "silhouette": 0.8, "gap": None, "chosen": True}],
    },
    "space": {"vector_columns": ["income", "age"], "scaler_mean": [1.0, 2.0], "scaler_std": [3.0, 4.0]},
    "segments": [
        {
            "segment": 0,
            "segment_name": "High income",
            "size": 9,
            "share": 1.0,
            "action": None,
            "outliers": 1,
            "control": 1,
            "treatment": 8,
            "cluster": 2,
            "center_unscaled": [5.0, 6.0],
            "outlier_threshold": None,
            "rule": None,
            "rule_precision": None,
            "rule_coverage": None,
        }
    ],
    "rules": {"method": "tree", "depth": 3, "missing_as": {"income": 4.5}},
    "timings": {"read": 1.5},
    "outputs": {"assignments": "lake/runs/r1/assignments", "rules.sql": "lake/runs/r1/rules.sql"},
    "catalog": {"database": "segs", "tables": ["segs.assignments"], "views": [], "run_ts": "x"},
}


def test_a_written_manifest_reads_back_to_the_same_keys_and_values():
    manifest = Manifest.model_validate_json(json.dumps(WRITTEN))
    assert manifest.to_dict() == WRITTEN  # no key added (no "consent", "orders", "error"), none lost
    assert manifest.migration.matrix[0].from_ == -1
    assert manifest.settings.output.format == "csv"
    assert manifest.settings.segments.drift.share == 0.1
    assert manifest.segments[0].rule is None and manifest.rules is not None  # a run with rules, no leaf here


def test_an_old_manifest_without_the_newer_sections_loads_with_defaults():
    old = {
        "run_id": "old",
        "status": "succeeded",
        "settings": {"output": {"format": "parquet"}},
        "rows": {"read": 4, "assigned": 4, "rejected": 0},
        "k": {"chosen": 2, "silhouette": 0.5, "rule": "highest silhouette over k=2..3"},
        "segments": [{"segment": 0, "segment_name": "Typical customers", "size": 4, "share": 1.0}],
    }
    manifest = Manifest.model_validate(old)
    assert manifest.space is None and manifest.catalog is None and manifest.migration is None
    assert manifest.k.algorithm == "kmeans" and manifest.k.metrics == []
    assert manifest.segments[0].center_unscaled is None and manifest.segments[0].outliers is None
    # segments.drift did not exist: the defaults of the day, 5 points and half a standard deviation
    assert (manifest.settings.segments.drift.share, manifest.settings.segments.drift.centroid) == (0.05, 0.5)
    assert manifest.to_dict() == old


def test_nan_and_numpy_values_are_written_as_plain_json():
    metric = KMetrics(k=np.int64(4), silhouette=np.float64(0.25), gap=float("nan"), confirmed=np.bool_(True))
    manifest = Manifest(run_id="r", status="succeeded", segments=[], k={"chosen": 4, "metrics": [metric]})
    text = manifest.to_json()
    assert "NaN" not in text
    assert json.loads(text)["k"]["metrics"] == [{"k": 4, "silhouette": 0.25, "gap": None, "confirmed": True}]


def test_a_failed_runs_manifest_has_only_what_its_steps_got_to():
    manifest = Manifest(run_id="r", status="running", warnings=[])
    failed = manifest.model_copy(
        update={"status": "failed", "error": "InputDataError: no rows", "timings": {}}
    )
    assert failed.to_dict() == {
        "run_id": "r",
        "status": "failed",
        "warnings": [],
        "timings": {},
        "error": "InputDataError: no rows",
    }


def test_segment_entries_leave_out_the_counts_a_run_did_not_make():
    segment = Segment(segment=1, segment_name="Low age", size=3, share=0.3, action=None, cluster=0)
    assert segment.model_dump(exclude_unset=True) == {
        "segment": 1,
        "segment_name": "Low age",
        "size": 3,
        "share": 0.3,
        "action": None,
        "cluster": 0,
    }
