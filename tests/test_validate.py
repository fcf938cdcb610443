"""Feature selection, the sensitive-attribute guard and the rejects table."""

from __future__ import annotations

import pytest

from segspark.config import FeatureSettings
from segspark.errors import ConfigError, InputDataError
from segspark.validate import resolve_features, sensitive_match, split_rejects, with_reject_reason

INF = float("inf")


@pytest.fixture(scope="module")
def customers(spark):
    return spark.createDataFrame(
        [("c1", 1.0, 10, "north", 1), ("c2", 2.0, 20, "south", 0)],
        "customer_id STRING, income DOUBLE, visits INT, region STRING, gender_code INT",
    )


def test_default_features_are_numeric_columns_but_the_id(customers):
    spec = resolve_features(customers, "customer_id", FeatureSettings())
    assert spec.numeric == ["income", "visits"]
    assert spec.sensitive_excluded == ["gender_code"]


def test_default_features_skip_the_index_pandas_writes(spark):
    df = spark.createDataFrame(
        [("c1", 1.0, 7)], "customer_id STRING, income DOUBLE, __index_level_0__ BIGINT"
    )
    assert resolve_features(df, "customer_id", FeatureSettings()).numeric == ["income"]


def test_missing_id_column_lists_the_available_ones(customers):
    with pytest.raises(
        InputDataError, match=r"id column 'cust' .* customer_id, income, visits, region, gender_code"
    ):
        resolve_features(customers, "cust", FeatureSettings())


def test_missing_feature_column_is_named(customers):
    with pytest.raises(
        InputDataError, match=r"features\.numeric: column 'spend' is not in the input; columns are"
    ):
        resolve_features(customers, "customer_id", FeatureSettings(numeric=["income", "spend"]))


def test_explicit_sensitive_feature_is_refused_with_the_way_out(customers):
    with pytest.raises(ConfigError) as error:
        resolve_features(customers, "customer_id", FeatureSettings(numeric=["income", "gender_code"]))
    assert "'gender_code' looks like a sensitive attribute ('gender'" in str(error.value)
    assert "features.allow_sensitive: [gender_code]" in str(error.value)


def test_allowed_sensitive_feature_is_used_and_recorded(customers):
    settings = FeatureSettings(numeric=["income", "gender_code"], allow_sensitive=["gender_code"])
    spec = resolve_features(customers, "customer_id", settings)
    assert spec.numeric == ["income", "gender_code"]
    assert spec.sensitive_allowed == ["gender_code"]


@pytest.mark.parametrize(
    ("column", "term"),
    [
        ("gender", "gender"),
        ("customerGender", "gender"),
        ("MARITAL_STATUS", "marital_status"),
        ("race_code", "race"),
        ("age_band", "age_band"),
        ("customerAgeGroup", "age_group"),
        ("is_married", "married"),
        ("age", None),
        ("trace_count", None),
        ("sexton_visits", None),
        ("income", None),
    ],
)
def test_sensitive_names_match_whole_words(column, term):
    assert sensitive_match(column, FeatureSettings().sensitive) == term


def test_text_feature_that_is_not_numeric_is_refused_with_a_hint(spark):
    df = spark.createDataFrame([("c1", [1, 2])], "customer_id STRING, tags ARRAY<INT>")
    with pytest.raises(InputDataError, match="'tags' has type array<int>, which is not a number"):
        resolve_features(df, "customer_id", FeatureSettings(numeric=["tags"]))


def _rejects(spark, rows, missing="impute", **features):
    df = spark.createDataFrame(rows, "customer_id STRING, income STRING, visits DOUBLE")
    spec = resolve_features(df, "customer_id", FeatureSettings(numeric=["income", "visits"], **features))
    valid, rejects = split_rejects(with_reject_reason(df, spec, missing), spec)
    return sorted(r.customer_id for r in valid.collect()), {
        r.customer_id: r.reason for r in rejects.collect()
    }


def test_unusable_rows_are_rejected_with_their_reason(spark):
    rows = [
        ("ok", "10.5", 3.0),
        (None, "11", 4.0),
        ("text", "lots", 1.0),
        ("inf", "12", INF),
        ("nan", "12", float("nan")),
        ("null", None, 2.0),
    ]
    valid, reasons = _rejects(spark, rows)
    assert valid == ["nan", "null", "ok"]  # missing values are imputed by default
    assert reasons == {
        None: "missing customer id",
        "text": "non-numeric value in income",
        "inf": "infinite value in visits",
    }


def test_missing_values_are_rejected_when_asked(spark):
    rows = [("ok", "1", 1.0), ("nan", "2", float("nan")), ("null", None, 2.0)]
    valid, reasons = _rejects(spark, rows, missing="reject")
    assert valid == ["ok"]
    assert reasons == {"nan": "missing value in visits", "null": "missing value in income"}


def test_negative_values_of_log_features_are_rejected(spark):
    valid, reasons = _rejects(spark, [("ok", "1", 0.0), ("neg", "-5", 1.0)], log=["income"])
    assert valid == ["ok"]
    assert reasons == {"neg": "negative value in income (log features need values >= 0)"}


def test_rejects_keep_the_offending_values(spark):
    df = spark.createDataFrame([("x", "lots", 2.5)], "customer_id STRING, income STRING, visits DOUBLE")
    spec = resolve_features(df, "customer_id", FeatureSettings(numeric=["income", "visits"]))
    _, rejects = split_rejects(with_reject_reason(df, spec, "impute"), spec)
    row = rejects.collect()[0]
    assert (row.customer_id, row.reason, row["values"]) == (
        "x",
        "non-numeric value in income",
        '{"income":"lots","visits":2.5}',
    )
