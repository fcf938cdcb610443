"""Whole runs from raw orders: orders alone, and customers joined with their orders (with the audit)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from segspark.cli import format_summary, main
from segspark.config import settings_from_dict
from segspark.errors import ConfigError
from segspark.generate import CATEGORIES, ORDER_COLUMNS, write_orders
from segspark.job import run

AS_OF = "2026-01-01"
DIRTY_REASONS = {
    "missing customer id": 1,
    "unparseable order date": 1,
    "negative amount": 1,
    "non-numeric amount": 1,
    "order date after as_of": 1,
}
LOGGED = ["frequency", "monetary", "avg_order_value", "total_quantity"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    """300 generated customers (five known segments) and their orders, with five dirty orders."""
    return write_orders(str(tmp_path_factory.mktemp("orders")), 300, seed=5, dirty=True)


@pytest.fixture(scope="module")
def valid_orders(data) -> pd.DataFrame:
    """The orders pandas finds valid: an id, an ISO date up to as_of, an amount >= 0."""
    orders = pd.read_parquet(data["orders"])
    orders["date"] = pd.to_datetime(orders["order_date"], format="%Y-%m-%d", errors="coerce")
    orders["value"] = pd.to_numeric(orders["amount"], errors="coerce")
    ok = (
        orders["customer_id"].notna()
        & orders["date"].notna()
        & (orders["date"] <= pd.Timestamp(AS_OF))
        & (orders["value"] >= 0)
    )
    return orders[ok]


@pytest.fixture(scope="module")
def orders_run(spark, data, tmp_path_factory):
    config = {
        "input": {
            "orders": {
                "path": data["orders"],
                "quantity": "quantity",
                "category": "category",
                "as_of": AS_OF,
                "top_categories": 3,
            }
        },
        "features": {"log": LOGGED},
        "model": {"k": {"min": 4, "max": 5}, "seed": 42},
        "output": {"path": str(tmp_path_factory.mktemp("lake")), "run_id": "orders"},
    }
    return run(settings_from_dict(config), spark)


@pytest.fixture(scope="module")
def per_customer(orders_run, valid_orders) -> pd.DataFrame:
    """Per-customer recency, frequency, monetary and spend shares by pandas, with the run's segments."""
    reference = pd.Timestamp(AS_OF)
    groups = valid_orders.groupby("customer_id")
    table = pd.DataFrame(
        {
            "recency_days": (reference - groups["date"].max()).dt.days,
            "frequency": groups.size(),
            "monetary": groups["value"].sum(),
        }
    )
    for category in orders_run.manifest["orders"]["categories"]:
        spend = valid_orders["value"].where(valid_orders["category"] == category, 0.0)
        table[f"share_{category}"] = spend.groupby(valid_orders["customer_id"]).sum() / table["monetary"]
    assignments = pd.read_parquet(f"{orders_run.run_dir}/assignments")
    return table.reset_index().merge(assignments, on="customer_id", validate="one_to_one")


def test_a_run_from_orders_alone_segments_every_customer_with_a_valid_order(orders_run, per_customer):
    assert orders_run.manifest["rows"] == {"read": 300, "assigned": 300, "rejected": 0}
    assert len(per_customer) == 300


def test_manifest_accounts_for_every_order_row(orders_run, data, valid_orders):
    read, valid = len(pd.read_parquet(data["orders"])), len(valid_orders)
    described = json.loads((Path(orders_run.run_dir) / "manifest.json").read_text())["orders"]
    assert described["rows"] == {"read": read, "valid": valid, "rejected": read - valid}
    assert described["rejected_by_reason"] == DIRTY_REASONS
    assert (described["as_of"], described["as_of_rule"]) == (AS_OF, "given (input.orders.as_of)")
    summary = format_summary(orders_run.record, orders_run.run_dir, 1.0)
    assert f"orders: {read} read, {valid} valid, {read - valid} rejected (see order_rejects/)" in summary


def test_order_rejects_hold_each_bad_order_with_its_reason_and_values(orders_run):
    rejects = pd.read_parquet(f"{orders_run.run_dir}/order_rejects")
    assert rejects["reason"].value_counts().to_dict() == DIRTY_REASONS
    refund = rejects[rejects["reason"] == "negative amount"].iloc[0]
    assert refund["customer_id"] == "C00000001"
    assert json.loads(refund["values"])["amount"] == "-35.00"


def test_profiles_show_recency_frequency_monetary_and_spend_mix_in_original_units(orders_run, per_customer):
    profiles = pd.read_parquet(f"{orders_run.run_dir}/profiles").set_index("segment").sort_index()
    groups = per_customer.groupby("segment")
    shares = [f"share_{c}" for c in orders_run.manifest["orders"]["categories"]]
    for feature in ["recency_days", "frequency", "monetary", *shares]:
        np.testing.assert_allclose(profiles[f"{feature}_mean"], groups[feature].mean(), rtol=1e-9)
    # the centroid of a log1p feature, mapped back with expm1: the segment's mean in log space
    log_mean = groups["monetary"].apply(lambda s: np.expm1(np.log1p(s).mean()))
    np.testing.assert_allclose(profiles["monetary_centroid"], log_mean, rtol=1e-3)


def test_segments_from_orders_follow_the_generated_ones(orders_run, data, per_customer):
    truth = pd.read_parquet(data["truth"]).merge(per_customer, on="customer_id")
    assert adjusted_rand_score(truth["true_segment"], truth["segment"]) >= 0.5


@pytest.fixture(scope="module")
def customers_with_gender(data, tmp_path_factory) -> str:
    customers = pd.read_parquet(data["customers"])
    customers["gender"] = np.where(np.arange(len(customers)) % 3 == 0, "F", "M")
    customers = pd.concat(  # two customers who never ordered
        [customers, customers.head(2).assign(customer_id=["N1", "N2"])], ignore_index=True
    )
    path = tmp_path_factory.mktemp("customers") / "customers.parquet"
    customers.to_parquet(path)
    return str(path)


def _joined_config(data, customers: str, lake: str, **features) -> dict:
    return {
        "input": {
            "customers": {"path": customers},
            "orders": {"path": data["orders"], "as_of": AS_OF},
        },
        "features": {"numeric": ["recency_days", "frequency", "monetary", "annual_income"], **features},
        "model": {"k": 3, "seed": 42},
        "output": {"path": lake, "run_id": "joined"},
    }


def test_customers_joined_with_orders_profile_sensitive_columns_for_audit_only(
    spark, data, customers_with_gender, tmp_path
):
    result = run(settings_from_dict(_joined_config(data, customers_with_gender, str(tmp_path))), spark)
    assert result.manifest["rows"] == {"read": 302, "assigned": 302, "rejected": 0}
    assert result.manifest["orders"]["customers_without_orders"] == 2
    assert result.manifest["features"]["audit_only"] == ["gender"]
    assert "gender" not in result.manifest["features"]["numeric"]

    profiles = pd.read_parquet(f"{result.run_dir}/profiles").set_index("segment").sort_index()
    assignments = pd.read_parquet(f"{result.run_dir}/assignments")
    customers = pd.read_parquet(customers_with_gender).merge(assignments, on="customer_id")
    expected = pd.crosstab(customers["segment"], customers["gender"], normalize="index")
    np.testing.assert_allclose(profiles["audit_gender=F_share"], expected["F"], rtol=1e-12)
    np.testing.assert_allclose(profiles["audit_gender=M_share"], expected["M"], rtol=1e-12)
    # customers without orders count as 0 orders in the profiles
    np.testing.assert_allclose(
        profiles["frequency_mean"].mul(profiles["size"]).sum(), result.manifest["orders"]["rows"]["valid"]
    )


def test_sensitive_column_is_refused_with_the_way_to_allow_it(spark, data, customers_with_gender, tmp_path):
    config = _joined_config(data, customers_with_gender, str(tmp_path), categorical=["gender"])
    with pytest.raises(ConfigError, match=r"'gender' looks like .*features\.allow_sensitive: \[gender\]"):
        run(settings_from_dict(config), spark)
    assert not (tmp_path / "runs").exists()


def test_generate_writes_orders_deterministically_with_dirty_rows_on_request(tmp_path, capsys):
    args = ["generate", "--customers", "40", "--orders", "--seed", "3", "--out"]
    assert main([*args, str(tmp_path / "a")]) == 0
    assert main([*args, str(tmp_path / "b"), "--dirty-orders"]) == 0
    main([*args, str(tmp_path / "c")])
    clean = pd.read_parquet(tmp_path / "a" / "orders.parquet")
    assert list(clean.columns) == ORDER_COLUMNS
    assert clean["order_id"].is_unique and set(clean["category"]) <= set(CATEGORIES)
    assert clean["customer_id"].nunique() == 40  # everyone ordered at least once
    assert clean["order_date"].max() < pd.Timestamp(AS_OF).date()
    pd.testing.assert_frame_equal(clean, pd.read_parquet(tmp_path / "c" / "orders.parquet"))
    dirty = pd.read_parquet(tmp_path / "b" / "orders.parquet")
    assert len(dirty) == len(clean) + 5
    assert main(["generate", "--customers", "5", "--dirty-orders", "--out", str(tmp_path / "d")]) == 2
