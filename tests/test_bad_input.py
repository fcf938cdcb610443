"""The bad-input catalogue: every case ends in a clear message or a counted, documented handling."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from segspark.config import FeatureSettings, settings_from_dict
from segspark.errors import InputDataError, OutputError
from segspark.job import run
from segspark.runtime import Caches
from segspark.validate import DUPLICATE, resolve_features, split_rejects, with_reject_reason


def _three_groups(n_per_group: int = 20, seed: int = 1) -> pd.DataFrame:
    """60 customers in three clear groups of two features."""
    rng = np.random.default_rng(seed)
    centers = [(10.0, 10.0), (50.0, 80.0), (90.0, 20.0)]
    points = np.vstack([rng.normal(c, 2.0, size=(n_per_group, 2)) for c in centers])
    return pd.DataFrame(
        {
            "customer_id": [f"id{i:03d}" for i in range(len(points))],
            "spend": points[:, 0],
            "visits": points[:, 1],
        }
    )


def _run(spark, tmp_path, frame_or_path, fmt="parquet", **sections):
    if isinstance(frame_or_path, pd.DataFrame):
        path = tmp_path / f"input.{fmt}"
        frame_or_path.to_parquet(path, index=False)
    else:
        path = frame_or_path
    config = {
        "input": {"customers": {"path": str(path), "format": fmt}},
        "model": {"k": {"min": 2, "max": 4}},
        "output": {"path": str(tmp_path / "lake")},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return run(settings_from_dict(config), spark)


def test_empty_input_stops_with_a_message(spark, tmp_path):
    with pytest.raises(InputDataError, match="the input has no rows"):
        _run(spark, tmp_path, _three_groups().head(0))


def test_input_whose_rows_are_all_rejected_stops_naming_the_reason(spark, tmp_path):
    frame = _three_groups().head(5).assign(customer_id=None)
    with pytest.raises(
        InputDataError, match=r"all 5 input rows were rejected; .*missing customer id \(5 rows\)"
    ):
        _run(spark, tmp_path, frame)


def test_malformed_and_non_numeric_csv_lines_are_rejected_with_their_reason(spark, tmp_path):
    lines = ["customer_id,spend,visits"] + [
        f"{r.customer_id},{r.spend:.3f},{r.visits:.3f}" for r in _three_groups().itertuples()
    ]
    lines += ["bad1,12.0", "bad2,1,2,3", "bad3,lots,4.0"]
    path = tmp_path / "customers.csv"
    path.write_text("\n".join(lines) + "\n")
    result = _run(spark, tmp_path, path, fmt="csv", features={"numeric": ["spend", "visits"]})
    assert result.rows == {"read": 63, "assigned": 60, "rejected": 3}
    rejects = pd.read_parquet(f"{result.run_dir}/rejects").set_index("customer_id")
    assert rejects.loc["bad1", "reason"] == "malformed line"
    assert rejects.loc["bad1", "values"] == "bad1,12.0"
    assert rejects.loc["bad2", "reason"] == "malformed line"
    assert rejects.loc["bad3", "reason"] == "non-numeric value in spend"


def test_duplicate_ids_keep_one_row_chosen_by_its_values_and_reject_the_rest(spark):
    rows = [
        ("a", 5.0, 1.0),
        ("a", 3.0, 9.0),
        ("a", 3.0, 2.0),
        ("b", None, 1.0),
        ("b", 4.0, 1.0),
        ("c", 1.0, 1.0),
    ]
    df = spark.createDataFrame(rows, "customer_id STRING, spend DOUBLE, visits DOUBLE")
    spec = resolve_features(df, "customer_id", FeatureSettings())
    # the same rows in another order and partitioning must give the same choice, and so must the
    # job's way, where the duplicate check reads the ids from the cache of the checked rows
    cached = Caches()
    for frame, caching in ((df, {}), (df.orderBy("visits").repartition(3), {}), (df, {"cache": cached})):
        valid, rejects = split_rejects(with_reject_reason(frame, spec, "impute", **caching), spec)
        kept = sorted((r.customer_id, r.spend, r.visits) for r in valid.collect())
        # by hand: per id, the smallest spend, then visits; NULL sorts last
        assert kept == [("a", 3.0, 2.0), ("b", 4.0, 1.0), ("c", 1.0, 1.0)]
        assert sorted((r.customer_id, r.reason) for r in rejects.collect()) == [
            ("a", DUPLICATE),
            ("a", DUPLICATE),
            ("b", DUPLICATE),
        ]
    assert len(cached) == 2  # the checked rows, then the resolved ones (only because ids repeat)
    cached.release()


def test_a_duplicate_of_a_rejected_row_is_kept(spark):
    df = spark.createDataFrame([("a", float("inf")), ("a", 7.0)], "customer_id STRING, spend DOUBLE")
    spec = resolve_features(df, "customer_id", FeatureSettings())
    valid, rejects = split_rejects(with_reject_reason(df, spec, "impute"), spec)
    assert [(r.customer_id, r.spend) for r in valid.collect()] == [("a", 7.0)]
    assert [r.reason for r in rejects.collect()] == ["infinite value in spend"]


def test_a_constant_feature_does_not_move_the_segments_or_their_names(spark, tmp_path):
    frame = _three_groups().assign(country_code=44)
    result = _run(spark, tmp_path, frame)
    assert result.manifest["k"]["chosen"] == 3
    assert result.manifest["features"]["numeric"] == ["spend", "visits", "country_code"]
    profiles = result.profiles
    assert (profiles["country_code_z"] == 0).all() and (profiles["country_code_mean"] == 44).all()
    assert not profiles["segment_name"].str.contains("country_code").any()


def test_fewer_distinct_customers_than_k_clips_the_range(spark, tmp_path, caplog):
    frame = pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(12)],
            "spend": [1.0, 50.0, 99.0] * 4,
            "visits": [1.0, 9.0, 3.0] * 4,
        }
    )
    with caplog.at_level(logging.WARNING, logger="segspark"):
        result = _run(spark, tmp_path, frame, model={"k": {"min": 2, "max": 6}})
    assert result.k_metrics["k"].tolist() == [2, 3]
    assert result.manifest["k"]["chosen"] == 3
    clipped = "k=2..6 clipped to k=2..3: only 3 distinct feature values"
    assert clipped in caplog.text and clipped in result.manifest["k"]["rule"]


def test_too_few_customers_for_the_smallest_k_stop_with_a_message(spark, tmp_path):
    frame = pd.DataFrame({"customer_id": ["a", "b"], "spend": [1.0, 90.0], "visits": [1.0, 9.0]})
    with pytest.raises(InputDataError, match="2 usable customers are too few for k=2: .* at least 6"):
        _run(spark, tmp_path, frame)


def test_a_range_clipped_to_one_k_says_so_rather_than_fixed(spark, tmp_path):
    frame = pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(7)],
            "spend": [1.0, 2, 3, 50, 51, 52, 53],
            "visits": [1.0] * 7,
        }
    )
    result = _run(spark, tmp_path, frame, model={"k": {"min": 2, "max": 10}})
    rule = result.manifest["k"]["rule"]
    assert rule.startswith("k=2, the only k left") and "7 customers, at least 3 per segment" in rule
    assert "fixed" not in rule


def test_a_single_distinct_customer_profile_stops_with_a_message(spark, tmp_path):
    frame = pd.DataFrame({"customer_id": ["a", "b", "c"], "spend": [5.0] * 3, "visits": [1.0] * 3})
    with pytest.raises(InputDataError, match="same feature values: there is nothing to segment"):
        _run(spark, tmp_path, frame)


def test_output_path_inside_a_file_is_not_writable(spark, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="is not writable"):
        _run(spark, tmp_path, _three_groups(), output={"path": str(blocker / "lake")})
