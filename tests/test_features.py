"""Behavioural features from raw orders, each checked against pandas on the same orders."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from segspark.config import OrdersInput
from segspark.errors import InputDataError
from segspark.features import join_customers, order_features, share_columns

# Amounts are multiples of 1/4, so every sum is exact in binary floating point and pandas and Spark
# must agree to the last bit.
ORDERS = [
    # customer, order date, amount, quantity, category
    ("a", "2025-01-05", 10.25, 1, "Books"),
    ("a", "2025-03-01", 99.5, 2, "Home & Garden"),
    ("a", "2025-03-01", 99.5, 2, "Home & Garden"),  # a duplicate row is a second order
    ("b", "2025-02-10", 0.0, 1, "Books"),  # an order of amount 0 counts, and adds 0
    ("b", "2025-02-11", 40.75, None, "Toys"),  # unknown quantity
    ("c", "2025-03-09", 5.0, 3, None),  # no category: share_other
    ("d", "2025-03-10", 0.0, None, "Books"),  # the last order; d spent nothing
    ("e", "2024-06-15", 250.0, 4, "Electronics"),
    ("e", "2024-12-24", 120.25, 1, "Toys"),
    ("e", "2025-02-28", 60.5, 2, "Books"),
]
SCHEMA = "customer_id STRING, order_date DATE, amount DOUBLE, quantity INT, category STRING"
# spend: Electronics 250, Home & Garden 199, Toys 161, Books 70.75
TOP_TWO = {"Electronics": "share_electronics", "Home & Garden": "share_home_garden"}
SOURCE = OrdersInput(path="unused", quantity="quantity", category="category", top_categories=2)


def _orders_frame() -> pd.DataFrame:
    frame = pd.DataFrame(ORDERS, columns=["customer_id", "order_date", "amount", "quantity", "category"])
    frame["order_date"] = pd.to_datetime(frame["order_date"])
    return frame


def _with_dates(rows):
    return [(c, dt.date.fromisoformat(d), *rest) for c, d, *rest in rows]


def expected_features(orders: pd.DataFrame, as_of: str, categories: dict[str, str]) -> pd.DataFrame:
    """The features by their definitions in the README, computed with pandas."""
    reference = pd.Timestamp(as_of)
    by_customer = orders.groupby("customer_id")
    expected = pd.DataFrame(
        {
            "recency_days": (reference - by_customer["order_date"].max()).dt.days,
            "frequency": by_customer.size(),
            "monetary": by_customer["amount"].sum(),
        }
    )
    expected["avg_order_value"] = expected["monetary"] / expected["frequency"]
    expected["tenure_days"] = (reference - by_customer["order_date"].min()).dt.days
    months = np.maximum(expected["tenure_days"] / (365.25 / 12), 1.0)
    expected["orders_per_month"] = expected["frequency"] / months
    expected["total_quantity"] = by_customer["quantity"].sum(min_count=1)
    spent = expected["monetary"] > 0
    for category, column in categories.items():
        in_category = orders["amount"].where(orders["category"] == category, 0.0)
        spend = in_category.groupby(orders["customer_id"]).sum()
        expected[column] = (spend / expected["monetary"]).where(spent)
    rest = orders["amount"].where(~orders["category"].isin(list(categories)), 0.0)
    expected["share_other"] = (rest.groupby(orders["customer_id"]).sum() / expected["monetary"]).where(spent)
    return expected.reset_index()


def _actual(result) -> pd.DataFrame:
    return result.features.toPandas().sort_values("customer_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def computed(spark):
    return order_features(spark.createDataFrame(_with_dates(ORDERS), SCHEMA), SOURCE)


def test_every_feature_matches_pandas_on_the_same_orders(computed):
    expected = expected_features(_orders_frame(), "2025-03-11", TOP_TWO)
    actual = _actual(computed)
    assert list(actual.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(actual, expected, check_dtype=False, check_exact=True)


def test_as_of_defaults_to_the_day_after_the_last_order(computed):
    assert (computed.as_of, computed.as_of_given) == (dt.date(2025, 3, 11), False)
    recency = dict(zip(*[_actual(computed)[c] for c in ("customer_id", "recency_days")], strict=True))
    assert recency["d"] == 1  # d ordered last


def test_explicit_as_of_sets_recency_and_tenure_and_an_order_on_it_has_recency_0(spark):
    source = SOURCE.model_copy(update={"as_of": dt.date(2025, 3, 10)})
    result = order_features(spark.createDataFrame(_with_dates(ORDERS), SCHEMA), source)
    assert (result.as_of, result.as_of_given) == (dt.date(2025, 3, 10), True)
    actual = _actual(result)
    expected = expected_features(_orders_frame(), "2025-03-10", TOP_TWO)
    pd.testing.assert_frame_equal(actual, expected, check_dtype=False, check_exact=True)
    d = actual.set_index("customer_id").loc["d"]
    assert (d["recency_days"], d["tenure_days"]) == (0, 0)


def test_orders_per_month_counts_tenure_as_at_least_one_month(computed):
    per_month = _actual(computed).set_index("customer_id")["orders_per_month"]
    assert per_month["c"] == 1.0  # one order two days ago: 1 a month, not 15
    assert per_month["a"] == 3 / (65 / 30.4375)  # first order 65 days before as_of


def test_duplicate_rows_and_zero_amounts_count_as_orders(computed):
    actual = _actual(computed).set_index("customer_id")
    assert actual.loc["a", "frequency"] == 3 and actual.loc["a", "monetary"] == 209.25
    assert actual.loc["b", "frequency"] == 2 and actual.loc["b", "avg_order_value"] == 20.375


def test_spend_shares_of_a_customer_who_spent_nothing_are_null(computed):
    d = _actual(computed).set_index("customer_id").loc["d"]
    assert d["monetary"] == 0.0 and d["avg_order_value"] == 0.0
    assert d[["share_electronics", "share_home_garden", "share_other"]].isna().all()


def test_top_categories_are_the_biggest_by_spend_and_the_rest_is_other(computed):
    assert computed.categories == TOP_TWO
    shares = _actual(computed).set_index("customer_id")[[*TOP_TWO.values(), "share_other"]]
    spent = shares.dropna()
    np.testing.assert_allclose(spent.sum(axis=1), 1.0, rtol=1e-15)


def test_share_column_names_are_sanitised_and_unique():
    assert share_columns(["Home & Garden", "home-garden", "Other", "???"]) == {
        "Home & Garden": "share_home_garden",
        "home-garden": "share_home_garden_2",
        "Other": "share_other_2",  # share_other is the rest
        "???": "share_blank",
    }


def test_without_quantity_and_category_only_the_core_features_are_built(spark):
    orders = spark.createDataFrame(_with_dates(ORDERS), SCHEMA)
    result = order_features(orders, OrdersInput(path="unused"))
    assert result.columns == [
        "recency_days",
        "frequency",
        "monetary",
        "avg_order_value",
        "tenure_days",
        "orders_per_month",
    ]


RAW_SCHEMA = "cust STRING, day STRING, total STRING, order_id INT"
RAW_SOURCE = OrdersInput(
    path="unused", customer_id="cust", order_date="day", amount="total", as_of=dt.date(2025, 5, 31)
)


def _raw_result(spark, rows, source=RAW_SOURCE):
    orders = spark.createDataFrame([(*row, i) for i, row in enumerate(rows)], RAW_SCHEMA)
    return order_features(orders, source)


def test_each_bad_order_is_rejected_with_its_reason(spark):
    rows = [
        ("x", "2025-01-04", "7.5"),
        (None, "2025-01-02", "5"),
        ("  ", "2025-01-02", "5"),
        ("x", None, "5"),
        ("x", "2025-02-30", "5"),
        ("x", "yesterday", "5"),
        ("x", "2025-01-03", None),
        ("x", "2025-01-03", "12,50"),
        ("x", "2025-01-03", "NaN"),
        ("x", "2025-01-03", "-3"),
        ("x", "2025-06-01", "5"),
    ]
    result = _raw_result(spark, rows)
    reasons = {json.loads(r["values"])["order_id"]: r.reason for r in result.rejects.collect()}
    assert reasons == {
        1: "missing customer id",
        2: "missing customer id",
        3: "missing order date",
        4: "unparseable order date",
        5: "unparseable order date",
        6: "missing amount",
        7: "non-numeric amount",
        8: "non-numeric amount",
        9: "negative amount",
        10: "order date after as_of",
    }


def test_rejected_orders_keep_the_row_as_read(spark):
    result = _raw_result(spark, [("x", "2025-01-04", "7.5"), ("x", "2025-01-03", "12,50")])
    row = result.rejects.collect()[0]
    assert (row.customer_id, row.reason) == ("x", "non-numeric amount")
    assert json.loads(row["values"]) == {"day": "2025-01-03", "total": "12,50", "order_id": 1}


def test_valid_orders_of_a_customer_with_rejected_orders_still_count(spark):
    rows = [
        ("x", "2025-01-04", "7.5"),
        ("x", "2025-05-01", "-3"),
        ("x", "2025-04-01", "2.25"),
        ("x", "2025-07-01", "100"),
        ("y", "2025-05-30", "1"),
    ]
    result = _raw_result(spark, rows)
    x = _actual(result).set_index("customer_id").loc["x"]
    assert (x["frequency"], x["monetary"], x["recency_days"], x["tenure_days"]) == (2, 9.75, 60, 147)
    assert result.rejects.count() == 2


def test_default_as_of_ignores_rejected_orders(spark):
    rows = [("x", "2025-01-04", "7.5"), ("x", "2025-03-01", "oops"), (None, "2025-04-01", "1")]
    result = _raw_result(spark, rows, RAW_SOURCE.model_copy(update={"as_of": None}))
    assert result.as_of == dt.date(2025, 1, 5)


def test_text_dates_are_read_with_the_date_format(spark):
    source = RAW_SOURCE.model_copy(update={"date_format": "dd/MM/yyyy", "as_of": None})
    result = _raw_result(spark, [("x", "05/03/2025", "1"), ("x", "2025-03-06", "1")], source)
    assert result.as_of == dt.date(2025, 3, 6)
    assert [r.reason for r in result.rejects.collect()] == ["unparseable order date"]


def test_timestamps_count_by_their_day(spark):
    orders = spark.createDataFrame(
        [("x", dt.datetime(2025, 3, 1, 23, 59), 1.0), ("x", dt.datetime(2025, 3, 2, 0, 1), 1.0)],
        "customer_id STRING, order_date TIMESTAMP, amount DOUBLE",
    )
    result = order_features(orders, OrdersInput(path="unused"))
    assert result.as_of == dt.date(2025, 3, 3)
    assert _actual(result).loc[0, "tenure_days"] == 2


def test_no_valid_order_at_all_is_an_input_error(spark):
    with pytest.raises(InputDataError, match="no valid order"):
        _raw_result(spark, [(None, "2025-01-01", "1")], RAW_SOURCE.model_copy(update={"as_of": None}))


def test_a_mapped_column_missing_from_the_orders_is_named(spark):
    orders = spark.createDataFrame(_with_dates(ORDERS), SCHEMA)
    with pytest.raises(InputDataError, match=r"input\.orders\.amount: column 'total' is not in the orders"):
        order_features(orders, OrdersInput(path="unused", amount="total"))


def test_customers_without_orders_get_zero_counts_and_unknown_recency(spark, computed):
    customers = spark.createDataFrame(
        [("a", 30, 1.0), ("z", 41, 2.0)], "customer_id STRING, age INT, avg_order_value DOUBLE"
    )
    joined, replaced = join_customers(customers, "customer_id", computed)
    assert replaced == ["avg_order_value"]
    rows = {r.customer_id: r.asDict() for r in joined.collect()}
    assert rows["a"]["avg_order_value"] == 209.25 / 3  # the order feature replaces the customer column
    z = rows["z"]
    assert z["age"] == 41
    assert (z["frequency"], z["monetary"], z["total_quantity"], z["orders_per_month"]) == (0, 0, 0, 0)
    assert [z[c] for c in ("recency_days", "tenure_days", "avg_order_value", "share_other")] == [None] * 4
    assert joined.columns == ["customer_id", "age", *computed.columns]
