"""The whole job on generated customers with known segments, checked against independent numbers."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from segspark import job
from segspark.config import CustomersInput, settings_from_dict
from segspark.errors import InputDataError
from segspark.generate import FEATURES
from segspark.job import run
from segspark.score import score
from tests.conftest import base_config

OUTPUTS = [
    "assignments",
    "k_metrics",
    "manifest.json",
    "model",
    "profiles",
    "rejects",
    "report.html",
    "rules",
    "rules.sql",
    "sample",
]


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lake")


@pytest.fixture(scope="module")
def first_run(spark, demo_data, lake):
    settings = settings_from_dict(base_config(demo_data["customers"], str(lake), output={"run_id": "first"}))
    return run(settings, spark)


@pytest.fixture(scope="module")
def joined(first_run, demo_data) -> pd.DataFrame:
    """Input rows, truth and assignments side by side, read back with pandas."""
    customers = pd.read_parquet(demo_data["customers"])
    truth = pd.read_parquet(demo_data["truth"])
    assignments = pd.read_parquet(f"{first_run.run_dir}/assignments")
    return customers.merge(truth, on="customer_id").merge(assignments, on="customer_id")


def test_recovers_the_generated_segments(first_run, joined):
    assert first_run.manifest["k"]["chosen"] == 5
    assert adjusted_rand_score(joined["true_segment"], joined["segment"]) >= 0.95


def test_publishes_the_lake_layout_and_points_latest_at_the_run(first_run, lake):
    run_dir = lake / "runs" / "first"
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) == OUTPUTS
    assert (lake / "latest").read_text().strip() == "first"
    assert not (lake / "_staging" / "first").exists()


def test_manifest_accounts_for_every_row(first_run, lake, joined):
    manifest = json.loads((lake / "runs" / "first" / "manifest.json").read_text())
    assert manifest["status"] == "succeeded"
    assert manifest["rows"] == {"read": 3000, "assigned": 3000, "rejected": 0}
    assert len(joined) == 3000 and joined["customer_id"].is_unique
    assert manifest["features"]["numeric"] == FEATURES
    assert manifest["k"]["rule"] == "highest silhouette over k=2..7"
    assert manifest["quantiles"]["every"] == 1  # 3000 customers, below segments.quantile_sample
    assert {"read", "validate", "prepare", "sweep", "profile", "write assignments"} <= set(
        manifest["timings"]
    )


def test_sample_holds_features_and_segments_but_no_ids(first_run, joined):
    sample = pd.read_parquet(f"{first_run.run_dir}/sample")
    assert sorted(sample.columns) == sorted([*FEATURES, "segment", "segment_name"])
    assert len(sample) == 3000  # fewer customers than the sample size: all of them
    expected = joined[[*FEATURES, "segment"]].sort_values(FEATURES).reset_index(drop=True)
    actual = sample[[*FEATURES, "segment"]].sort_values(FEATURES).reset_index(drop=True)
    pd.testing.assert_frame_equal(actual, expected, check_dtype=False)


def test_k_metrics_hold_every_k_and_mark_the_best_silhouette(first_run):
    metrics = pd.read_parquet(f"{first_run.run_dir}/k_metrics").sort_values("k")
    assert metrics["k"].tolist() == [2, 3, 4, 5, 6, 7]
    assert metrics["chosen"].sum() == 1
    best = metrics.loc[metrics["silhouette"].idxmax()]
    assert bool(best["chosen"]) and best["k"] == 5
    assert set(metrics["algorithm"]) == {"kmeans"}


def _scaled(joined: pd.DataFrame) -> np.ndarray:
    values = joined[FEATURES].to_numpy(float)
    return (values - values.mean(axis=0)) / values.std(axis=0, ddof=1)


def test_wssse_and_distances_match_numpy(first_run, joined):
    scaled = _scaled(joined)
    labels = joined["segment"].to_numpy()
    centers = {s: scaled[labels == s].mean(axis=0) for s in np.unique(labels)}
    distances = np.linalg.norm(scaled - np.array([centers[s] for s in labels]), axis=1)
    chosen = first_run.k_metrics[first_run.k_metrics["chosen"]].iloc[0]
    # k-means stops within its tolerance, so its centres are the cluster means to about 1e-4
    assert chosen["wssse"] == pytest.approx((distances**2).sum(), rel=1e-4)
    np.testing.assert_allclose(joined["distance"], distances, atol=1e-3)


def test_profiles_match_pandas_on_the_same_assignments(first_run, joined):
    profiles = pd.read_parquet(f"{first_run.run_dir}/profiles").set_index("segment").sort_index()
    groups = joined.groupby("segment")
    assert profiles["size"].tolist() == groups.size().tolist()
    np.testing.assert_allclose(profiles["share"], groups.size() / len(joined))
    for feature in FEATURES:
        np.testing.assert_allclose(profiles[f"{feature}_mean"], groups[feature].mean(), rtol=1e-12)
        for suffix, q in (("p25", 0.25), ("median", 0.5), ("p75", 0.75)):
            # percentile_approx: the smallest value with at least q of the rows at or below it
            expected = groups[feature].apply(lambda s, q=q: np.quantile(s, q, method="inverted_cdf"))
            np.testing.assert_allclose(
                profiles[f"{feature}_{suffix}"], expected, err_msg=f"{feature} {suffix}"
            )
        z = (groups[feature].mean() - joined[feature].mean()) / joined[feature].std(ddof=1)
        np.testing.assert_allclose(profiles[f"{feature}_z"], z, rtol=1e-9)
        # converged k-means centres are the segment means, mapped back to original units
        np.testing.assert_allclose(profiles[f"{feature}_centroid"], groups[feature].mean(), rtol=1e-3)


def test_segment_names_are_unique_and_describe_the_segment(first_run, joined):
    profiles = pd.read_parquet(f"{first_run.run_dir}/profiles")
    assert profiles["segment_name"].is_unique
    names = dict(zip(profiles["segment"], profiles["segment_name"], strict=True))
    assert (joined["segment_name"] == joined["segment"].map(names)).all()
    # the young impulse buyers (archetype 2) are the youngest segment: their name says "Low age"
    young = joined[joined["true_segment"] == 2]["segment"].mode()[0]
    assert "Low age" in names[young]


def test_scoring_the_runs_own_input_reproduces_its_assignments(spark, first_run, demo_data, joined, tmp_path):
    source = CustomersInput(path=demo_data["customers"])
    summary = score(spark, first_run.run_dir, source, str(tmp_path / "scored"))
    assert summary["rows"] == {"read": 3000, "assigned": 3000, "rejected": 0}
    scored = pd.read_parquet(tmp_path / "scored" / "assignments").sort_values("customer_id")
    expected = joined[scored.columns].sort_values("customer_id")
    pd.testing.assert_frame_equal(scored.reset_index(drop=True), expected.reset_index(drop=True))


def test_scoring_applies_the_same_rejects_rules(spark, first_run, demo_data, tmp_path):
    new = pd.read_parquet(demo_data["customers"]).head(20).astype({"age": float})
    new.loc[0, "customer_id"] = None
    new.loc[1, "age"] = float("inf")
    new.to_parquet(tmp_path / "new.parquet")
    summary = score(
        spark, first_run.run_dir, CustomersInput(path=str(tmp_path / "new.parquet")), str(tmp_path / "o")
    )
    assert summary["rows"] == {"read": 20, "assigned": 18, "rejected": 2}
    reasons = sorted(pd.read_parquet(tmp_path / "o" / "rejects")["reason"])
    assert reasons == ["infinite value in age", "missing customer id"]


def test_same_input_and_seed_give_the_same_assignments(spark, first_run, demo_data, lake, joined):
    settings = settings_from_dict(base_config(demo_data["customers"], str(lake), output={"run_id": "again"}))
    again = run(settings, spark)
    second = pd.read_parquet(f"{again.run_dir}/assignments").sort_values("customer_id").reset_index(drop=True)
    first = joined[second.columns].sort_values("customer_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(first, second)
    pd.testing.assert_frame_equal(first_run.profiles, again.profiles)
    metrics = ["k", "silhouette", "wssse", "chosen"]
    pd.testing.assert_frame_equal(first_run.k_metrics[metrics], again.k_metrics[metrics])
    assert (lake / "latest").read_text().strip() == "again"


def test_dirty_rows_are_rejected_and_counted(spark, demo_data, tmp_path):
    clean = pd.read_parquet(demo_data["customers"]).head(400)
    dirty = clean.astype({"annual_income": float}).copy()
    dirty.loc[0:4, "customer_id"] = None
    dirty.loc[5:7, "annual_income"] = np.inf
    dirty.loc[8:9, "age"] = None  # imputed, not rejected
    path = tmp_path / "dirty.parquet"
    dirty.to_parquet(path)
    settings = settings_from_dict(
        base_config(str(path), str(tmp_path / "lake"), model={"k": {"min": 4, "max": 5}})
    )
    result = run(settings, spark)
    assert result.rows == {"read": 400, "assigned": 392, "rejected": 8}
    rejects = pd.read_parquet(f"{result.run_dir}/rejects")
    assert rejects["reason"].value_counts().to_dict() == {
        "missing customer id": 5,
        "infinite value in annual_income": 3,
    }


def test_a_failed_run_leaves_the_published_runs_alone(spark, first_run, demo_data, lake):
    before = (lake / "latest").read_text()
    published = sorted(p.name for p in (lake / "runs").iterdir())
    config = base_config(demo_data["customers"], str(lake), output={"run_id": "broken"})
    config["features"] = {"numeric": ["annual_income", "no_such_column"]}
    with pytest.raises(InputDataError, match="no_such_column"):
        run(settings_from_dict(config), spark)
    assert (lake / "latest").read_text() == before
    assert sorted(p.name for p in (lake / "runs").iterdir()) == published
    failed = json.loads((lake / "_staging" / "broken" / "manifest.json").read_text())
    assert failed["status"] == "failed" and "no_such_column" in failed["error"]


def test_a_report_failing_beside_the_catalog_undoes_it(spark, first_run, demo_data, lake, monkeypatch):
    """The report is made while the catalog writes the tables: when it fails, the run publishes nothing
    and the catalog is undone (the database this run created is gone)."""
    database = "report_fails"
    before = (lake / "latest").read_text()
    published = sorted(p.name for p in (lake / "runs").iterdir())
    seen = {}

    def failing_report(session, run_dir):
        deadline = time.monotonic() + 300
        while not session.catalog.databaseExists(database) and time.monotonic() < deadline:
            time.sleep(0.2)  # the catalog's first write creates the database
        seen["database while the report ran"] = session.catalog.databaseExists(database)
        raise RuntimeError("injected: the report failed")

    monkeypatch.setattr(job, "write_report", failing_report)
    config = base_config(
        demo_data["customers"],
        str(lake),
        output={"run_id": "no_report", "catalog": {"database": database}},
        segments={"rule_depth": 0},
    )
    with pytest.raises(RuntimeError, match="injected: the report failed"):
        run(settings_from_dict(config), spark)
    assert seen == {"database while the report ran": True}
    assert not spark.catalog.databaseExists(database)
    assert (lake / "latest").read_text() == before
    assert sorted(p.name for p in (lake / "runs").iterdir()) == published
    failed = json.loads((lake / "_staging" / "no_report" / "manifest.json").read_text())
    assert failed["status"] == "failed" and "injected: the report failed" in failed["error"]


def test_rules_failing_beside_the_writes_publish_nothing(spark, first_run, demo_data, lake, monkeypatch):
    """The rules' tree is learned while the assignments and tables are written: when it fails, the run
    fails and publishes nothing."""
    before = (lake / "latest").read_text()
    published = sorted(p.name for p in (lake / "runs").iterdir())
    seen = {}

    def failing_rules(ctx, *_):
        written = Path(re.sub(r"^file:(//)?", "", ctx.staging)) / "assignments" / "_SUCCESS"
        deadline = time.monotonic() + 120
        while not written.exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # the assignments are the first of the writes
        seen["assignments written while the rules were learned"] = written.exists()
        raise RuntimeError("injected: the rules failed")

    monkeypatch.setattr(job, "rules", failing_rules)
    config = base_config(demo_data["customers"], str(lake), output={"run_id": "no_rules"})
    with pytest.raises(RuntimeError, match="injected: the rules failed"):
        run(settings_from_dict(config), spark)
    assert seen == {"assignments written while the rules were learned": True}
    assert (lake / "latest").read_text() == before
    assert sorted(p.name for p in (lake / "runs").iterdir()) == published
    failed = json.loads((lake / "_staging" / "no_rules" / "manifest.json").read_text())
    assert failed["status"] == "failed" and "injected: the rules failed" in failed["error"]
