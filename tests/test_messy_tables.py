"""Messy real tables (issue 14): any column name, exact ids, blank ids, hints, tiny segments, clipping."""

from __future__ import annotations

import datetime as dt
import logging
import re

import numpy as np
import pandas as pd
import pytest
from pyspark.ml import PipelineModel

from segspark.cli import format_summary, main
from segspark.config import ClipSettings, FeatureSettings, settings_from_dict
from segspark.errors import InputDataError
from segspark.job import run
from segspark.prepare import RAW_FEATURES, build_pipeline, clip_bounds
from segspark.steps import read_input, read_orders
from segspark.validate import MISSING_ID, resolve_features, split_rejects, with_reject_reason

ID = "customer.id"
SPEND = "spend.score"
VISITS = "visits per-month"
EUROS = "Ausgaben €"
PLAN = "plan.type"


def _odd_names(n_per_group: int = 15, seed: int = 3) -> pd.DataFrame:
    """45 customers in three clear groups; every column name needs quoting in Spark SQL."""
    rng = np.random.default_rng(seed)
    centers = [(10.0, 10.0, 1.0), (50.0, 80.0, 5.0), (90.0, 20.0, 9.0)]
    points = np.vstack([rng.normal(c, 1.0, size=(n_per_group, 3)) for c in centers])
    groups = np.repeat([0, 1, 2], n_per_group)
    return pd.DataFrame(
        {
            ID: [f"c.{i:03d}" for i in range(len(points))],
            SPEND: points[:, 0],
            VISITS: points[:, 1],
            EUROS: np.abs(points[:, 2]),
            PLAN: np.where(groups == 1, "gold.plus", "basic"),
            "true_group": groups,
        }
    )


def _config(path, lake, fmt="parquet", **sections) -> dict:
    config = {
        "input": {"customers": {"path": str(path), "format": fmt, "id_column": ID}},
        "features": {"numeric": [SPEND, VISITS, EUROS], "categorical": [PLAN], "log": [EUROS]},
        "model": {"k": 3, "restarts": 1},
        "output": {"path": str(lake)},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


@pytest.fixture(scope="module")
def odd_run(spark, tmp_path_factory):
    folder = tmp_path_factory.mktemp("odd")
    frame = _odd_names()
    frame.drop(columns="true_group").to_parquet(folder / "customers.parquet", index=False)
    result = run(settings_from_dict(_config(folder / "customers.parquet", folder / "lake")), spark)
    return frame, result, folder


def test_names_with_dots_spaces_dashes_and_accents_work_as_id_features_and_categorical(odd_run):
    frame, result, _ = odd_run
    assert result.rows == {"read": 45, "assigned": 45, "rejected": 0}
    assigned = pd.read_parquet(f"{result.run_dir}/assignments").set_index("customer_id")
    truth = frame.set_index(ID)["true_group"]
    # by construction: the three generated groups, each one segment
    pairs = pd.crosstab(truth.loc[assigned.index], assigned["segment"])
    assert (pairs > 0).sum(axis=1).tolist() == [1, 1, 1] and (pairs > 0).sum(axis=0).tolist() == [1, 1, 1]
    profiles = result.profiles.set_index("segment")
    means = frame.groupby(assigned.loc[frame[ID], "segment"].to_numpy())[SPEND].mean()
    np.testing.assert_allclose(profiles[f"{SPEND}_mean"].sort_index(), means.sort_index())
    assert f"{PLAN}=gold.plus_share" in profiles.columns


def test_scoring_with_odd_names_reproduces_the_run_and_rejects_blank_ids(spark, odd_run, tmp_path, capsys):
    frame, result, folder = odd_run
    new = frame.drop(columns="true_group").head(6).copy()
    new.loc[4, ID] = ""
    new.loc[5, ID] = "   "
    new.to_parquet(tmp_path / "new.parquet", index=False)
    args = ["score", "--run", result.run_dir, "--input", str(tmp_path / "new.parquet")]
    assert main([*args, "--output", str(tmp_path / "scored")]) == 0
    assert "6 read, 4 assigned, 2 rejected" in capsys.readouterr().out
    scored = pd.read_parquet(tmp_path / "scored" / "assignments").set_index("customer_id")
    ran = pd.read_parquet(f"{result.run_dir}/assignments").set_index("customer_id")
    assert scored["segment"].to_dict() == ran.loc[scored.index, "segment"].to_dict()
    rejects = pd.read_parquet(tmp_path / "scored" / "rejects")
    assert rejects["reason"].tolist() == [MISSING_ID, MISSING_ID]


def test_blank_ids_are_rejected_as_missing_customer_ids(spark, tmp_path):
    frame = _odd_names()
    frame.loc[[0, 1], ID] = ["", "   "]
    frame.drop(columns="true_group").to_parquet(tmp_path / "blank.parquet", index=False)
    result = run(settings_from_dict(_config(tmp_path / "blank.parquet", tmp_path / "lake")), spark)
    assert result.rows == {"read": 45, "assigned": 43, "rejected": 2}
    rejects = pd.read_parquet(f"{result.run_dir}/rejects")
    assert sorted(rejects["customer_id"]) == ["", "   "]
    assert set(rejects["reason"]) == {MISSING_ID}


def test_names_that_clash_after_lower_casing_stop_with_both_named(spark, tmp_path):
    frame = pd.DataFrame({"customer_id": ["a", "b"], "Income": [1.0, 2.0], "income": [3.0, 4.0]})
    frame.to_parquet(tmp_path / "clash.parquet", index=False)
    config = {"input": {"customers": {"path": str(tmp_path / "clash.parquet")}}, "output": {"path": "x"}}
    with pytest.raises(InputDataError, match=r"two columns named 'income' .* 'Income' and 'income'") as error:
        read_input(spark, settings_from_dict(config))
    assert "spark.conf.spark.sql.caseSensitive: true" in str(error.value)


def _write_csv(path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_csv_ids_with_leading_zeros_stay_text(spark, tmp_path):
    path = _write_csv(tmp_path / "c.csv", ["customer_id,spend", "00123,1.5", "0042,2.5", "7,3.0"])
    config = {"input": {"customers": {"path": path, "format": "csv"}}}
    raw, id_column = read_input(spark, settings_from_dict(config))
    assert dict(raw.dtypes)[id_column] == "string"
    assert sorted(r[id_column] for r in raw.collect()) == ["00123", "0042", "7"]


def test_orders_customer_ids_with_leading_zeros_stay_text(spark, tmp_path):
    lines = ["cust,order_date,amount", "00123,2026-01-02,10.0", "00123,2026-01-05,5.0", "0042,2026-01-03,1.0"]
    orders = {"path": _write_csv(tmp_path / "o.csv", lines), "format": "csv", "customer_id": "cust"}
    features = read_orders(spark, settings_from_dict({"input": {"orders": orders}})).features
    assert sorted((r.customer_id, r.frequency) for r in features.collect()) == [("00123", 2), ("0042", 1)]


def test_ids_from_typed_formats_keep_their_type(spark, tmp_path):
    frame = pd.DataFrame({"customer_id": np.array([2**63 - 1, -(2**63)], dtype="int64"), "x": [1.0, 2.0]})
    frame.to_parquet(tmp_path / "typed.parquet", index=False)
    config = {"input": {"customers": {"path": str(tmp_path / "typed.parquet")}}}
    raw, id_column = read_input(spark, settings_from_dict(config))
    assert dict(raw.dtypes)[id_column] == "bigint"
    assert sorted(r[id_column] for r in raw.collect()) == [-(2**63), 2**63 - 1]


def test_a_semicolon_separated_csv_read_with_commas_says_to_set_the_separator(spark, tmp_path):
    path = _write_csv(tmp_path / "semi.csv", ["customer_id;income;score", "a;1.5;2", "b;2.5;3"])
    config = {"input": {"customers": {"path": path, "format": "csv"}}}
    raw, id_column = read_input(spark, settings_from_dict(config))
    with pytest.raises(InputDataError) as error:
        resolve_features(raw, id_column, FeatureSettings())
    assert "the header looks ;-separated" in str(error.value)
    assert 'set input.customers.options: {sep: ";"}' in str(error.value)


def test_decimal_commas_point_at_the_locale_option_and_the_suggestion_works(spark, tmp_path):
    lines = ["customer_id;income;score", "a;1,5;2", "b;2.345,25;3", "c;-3,75;4"]
    path = _write_csv(tmp_path / "dec.csv", lines)
    source = {"path": path, "format": "csv", "options": {"sep": ";"}}
    raw, id_column = read_input(spark, settings_from_dict({"input": {"customers": source}}))
    with pytest.raises(InputDataError) as error:
        resolve_features(raw, id_column, FeatureSettings(numeric=["income", "score"]))
    message = str(error.value)
    assert "income: numbers written with a decimal comma" in message
    assert 'input.customers.options: {locale: "de-DE"}' in message
    schema = re.search(r'input\.customers\.schema: "([^"]+)"', message).group(1)
    assert schema == "customer_id STRING, income DECIMAL(18,4), score INT"
    # what the message says to do reads the numbers (by hand: 1.5, 2345.25, -3.75)
    fixed = {**source, "options": {"sep": ";", "locale": "de-DE"}, "schema": schema}
    raw, _ = read_input(spark, settings_from_dict({"input": {"customers": fixed}}))
    spec = resolve_features(raw, id_column, FeatureSettings(numeric=["income", "score"]))
    valid, _ = split_rejects(with_reject_reason(raw, spec, "impute"), spec)
    assert sorted(float(r.income) for r in valid.collect()) == [-3.75, 1.5, 2345.25]


def test_columns_left_out_of_the_default_features_get_their_real_reason(spark, caplog):
    df = spark.createDataFrame(
        [("a", 1.0, True, dt.date(2024, 1, 2), dt.datetime(2024, 1, 2, 3, 4), "x", "1,5")],
        "customer_id STRING, spend DOUBLE, vip BOOLEAN, signup DATE, seen TIMESTAMP, note STRING, "
        "rate STRING",
    )
    with caplog.at_level(logging.WARNING, logger="segspark"):
        spec = resolve_features(df, "customer_id", FeatureSettings())
    assert spec.numeric == ["spend"]
    lines = {line.split(": ", 2)[1]: line for line in caplog.messages}
    assert "boolean" in lines["vip (boolean)"] and "features.categorical" in lines["vip (boolean)"]
    assert "days since" in lines["signup (date), seen (timestamp)"]
    assert "stray text value" in lines["note (string)"]
    assert "decimal comma" in lines["rate"] and "stray text" not in lines["rate"]


def _with_one_extreme_customer() -> pd.DataFrame:
    """60 customers in three clear groups of income and visits, and one with an income of 1e12."""
    rng = np.random.default_rng(5)
    centers = [(30_000.0, 2.0), (60_000.0, 12.0), (90_000.0, 5.0)]
    points = np.vstack([rng.normal(c, (2_000.0, 0.5), size=(20, 2)) for c in centers])
    points = np.vstack([points, [[1e12, 5.0]]])
    ids = [f"c{i:02d}" for i in range(len(points))]
    return pd.DataFrame({"customer_id": ids, "income": points[:, 0], "visits": points[:, 1]})


def test_clip_bounds_are_the_quantiles_numpy_finds_and_the_saved_model_applies_them(spark, tmp_path):
    frame = _with_one_extreme_customer()
    df = spark.createDataFrame(frame)
    spec = resolve_features(df, "customer_id", FeatureSettings())
    bounds = clip_bounds(df, spec, ClipSettings(lower=0.05, upper=0.95))
    for column in ("income", "visits"):
        expected = np.quantile(frame[column], [0.05, 0.95], method="inverted_cdf")
        np.testing.assert_allclose(bounds[column], expected)
    model = build_pipeline(spec, bounds).fit(df)
    model.write().overwrite().save(str(tmp_path / "model"))
    loaded = PipelineModel.load(str(tmp_path / "model"))
    new = spark.createDataFrame(
        [("n1", 1e15, -3.0), ("n2", 50_000.0, 4.0)], "customer_id STRING, income DOUBLE, visits DOUBLE"
    )
    rows = {r.customer_id: r[RAW_FEATURES].toArray() for r in loaded.transform(new).collect()}
    np.testing.assert_allclose(rows["n1"], [bounds["income"][1], bounds["visits"][0]])
    np.testing.assert_allclose(rows["n2"], [50_000.0, 4.0])


def test_a_one_customer_segment_is_warned_about_and_clipping_takes_it_away(spark, tmp_path):
    frame = _with_one_extreme_customer()
    frame.to_parquet(tmp_path / "c.parquet", index=False)
    config = {
        "input": {"customers": {"path": str(tmp_path / "c.parquet")}},
        "model": {"k": 4, "restarts": 1},
        "segments": {"min_size": 0.05},
        "output": {"path": str(tmp_path / "lake")},
    }
    result = run(settings_from_dict(config), spark)
    [warning] = result.manifest["warnings"]
    # by hand: 1 of 61 customers is 1.6%, below the 5% asked for
    assert re.match(r"segment \d+ '.*' holds 1 customer \(1\.6%\), below segments\.min_size \(5\.0%", warning)
    assert "features.clip" in warning
    assert f"  ! {warning}" in format_summary(result.record, result.run_dir, 1.0)

    clipped = {
        **config,
        "features": {"clip": {"lower": 0.0, "upper": 0.95}},
        "model": {"k": 3, "restarts": 1},
    }
    result = run(settings_from_dict(clipped), spark)
    assert result.manifest["warnings"] == []
    upper = np.quantile(frame["income"], 0.95, method="inverted_cdf")
    assert result.manifest["features"]["clip"]["income"] == [frame["income"].min(), upper]
    assert sorted(result.profiles["size"]) == [20, 20, 21]  # the extreme customer joins a group
