"""Behavioural features per customer, built in Spark from raw orders (RFM and friends).

One row per order goes in; one row per customer comes out, with:

- ``recency_days``: days from the customer's last order to ``as_of``
- ``frequency``: number of valid orders (duplicate rows count as given: one row is one order)
- ``monetary``: total amount of the valid orders (orders of amount 0 count, and add 0)
- ``avg_order_value``: ``monetary / frequency``
- ``tenure_days``: days from the customer's first order to ``as_of``
- ``orders_per_month``: ``frequency / max(tenure_days / DAYS_PER_MONTH, 1)``, so tenure counts as at least
  one month and a new customer's first order is not extrapolated into dozens a month
- ``total_quantity`` (when ``quantity`` is mapped): the sum of the known quantities (NULL when none is known)
- ``share_<category>`` (when ``category`` is mapped) for the ``top_categories`` categories with the most
  spend over all customers, and ``share_other`` for the rest (and orders without a category): the
  customer's spend in it divided by ``monetary``; NULL when the customer spent nothing

``as_of`` is ``input.orders.as_of`` or, by default, the day after the last valid order. An order dated on
``as_of`` itself has recency 0. Orders the features cannot use go to ``order_rejects`` with a reason;
the valid orders of the same customer still count.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyspark.sql.functions as F
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import types as T

from segspark.config import OrdersInput
from segspark.errors import InputDataError, SegsparkError
from segspark.manifest import OrderRows
from segspark.validate import REASON, VALUES, as_double, col, is_blank, quoted, separator_hint

log = logging.getLogger(__name__)

ORDER_CUSTOMER_ID = "customer_id"  # the id column of the features, whatever the orders call it
DAYS_PER_MONTH = 365.25 / 12  # 30.4375: the mean month of the Gregorian calendar
MIN_TENURE_MONTHS = 1.0

# columns of the checked orders
ORDER_DATE = "order_date"
AMOUNT = "amount"
QUANTITY = "quantity"
CATEGORY = "category"

RECENCY = "recency_days"
FREQUENCY = "frequency"
MONETARY = "monetary"
AVG_ORDER_VALUE = "avg_order_value"
TENURE = "tenure_days"
ORDERS_PER_MONTH = "orders_per_month"
TOTAL_QUANTITY = "total_quantity"
SHARE_PREFIX = "share_"
SHARE_OTHER = "share_other"

# Customers that are in the customer table but have no valid order: counts are 0, the rest is unknown.
ZERO_WITHOUT_ORDERS = (FREQUENCY, MONETARY, TOTAL_QUANTITY, ORDERS_PER_MONTH)


@dataclass
class OrderFeatures:
    """Per-customer features, the rejected orders, and what they were computed with."""

    features: DataFrame  # customer_id + the feature columns, one row per customer with a valid order
    rejects: DataFrame  # customer_id, reason, values (the order row as read, as JSON)
    checked: DataFrame  # every order row, with ``reason`` (NULL for a valid order): for the accounting
    as_of: dt.date
    as_of_given: bool
    categories: dict[str, str] = field(default_factory=dict)  # top category -> its share column

    @property
    def columns(self) -> list[str]:
        return [c for c in self.features.columns if c != ORDER_CUSTOMER_ID]


def order_features(
    orders: DataFrame, source: OrdersInput, cache: Callable[[DataFrame], DataFrame] | None = None
) -> OrderFeatures:
    """Check the orders, fix ``as_of``, choose the top categories and aggregate per customer.

    Two small driver-side results are computed on the way (``as_of`` and the top category names);
    everything proportional to orders or customers stays in Spark. With ``cache`` (a ``Caches``), the
    checked orders are persisted through it, for the caller to release, so the input is read once.
    """
    checked = check_orders(orders, source)
    if cache is not None:
        checked = cache(checked)
    # a default as_of follows every valid order, so only a given one can make an order "after as_of"
    as_of = source.as_of or default_as_of(checked)
    valid, rejects = split_orders(checked)
    top = top_categories(valid, source.top_categories) if source.category else []
    categories = share_columns(top)
    features = customer_features(
        valid,
        as_of,
        categories,
        with_quantity=source.quantity is not None,
        with_category=bool(source.category),
    )
    return OrderFeatures(features, rejects, checked, as_of, source.as_of is not None, categories)


def check_orders(orders: DataFrame, source: OrdersInput) -> DataFrame:
    """The orders with the mapped columns parsed (date, amounts as double) and a ``reason`` for each
    order the features cannot use (NULL for a valid order); ``values`` keeps a rejected row as read."""
    mapped = {
        "customer_id": source.customer_id,
        "order_date": source.order_date,
        "amount": source.amount,
        "quantity": source.quantity,
        "category": source.category,
    }
    listing = ", ".join(orders.columns)
    for key, column in mapped.items():
        if column is not None and column not in orders.columns:
            hint = separator_hint(orders.columns, "input.orders.options")
            if hint:
                raise InputDataError(f"input.orders.{key}: column {column!r} is not in the orders: {hint}")
            raise InputDataError(
                f"input.orders.{key}: column {column!r} is not in the orders; columns are: {listing}. "
                f"Set input.orders.{key} to the orders' {key.replace('_', ' ')} column."
            )
    customer_id = col(source.customer_id)
    raw_date, order_date = col(source.order_date), _parsed_date(orders, source)
    raw_amount, amount = col(source.amount), as_double(source.amount)
    checks: list[Column] = [
        F.when(is_blank(customer_id), F.lit("missing customer id")),
        F.when(raw_date.isNull(), F.lit("missing order date")),
        F.when(order_date.isNull(), F.lit("unparseable order date")),
        F.when(raw_amount.isNull(), F.lit("missing amount")),
        F.when(amount.isNull() | ~_is_finite(amount), F.lit("non-numeric amount")),
        F.when(amount < 0, F.lit("negative amount")),
    ]
    if source.as_of is not None:
        checks.append(F.when(order_date > F.lit(source.as_of), F.lit("order date after as_of")))
    quantity = F.lit(None).cast("double")
    if source.quantity:
        raw_quantity, quantity = col(source.quantity), as_double(source.quantity)
        checks += [
            F.when(
                raw_quantity.isNotNull() & (quantity.isNull() | ~_is_finite(quantity)),
                F.lit("non-numeric quantity"),
            ),
            F.when(quantity < 0, F.lit("negative quantity")),
        ]
    category = col(source.category).cast("string") if source.category else F.lit(None).cast("string")
    reason = F.coalesce(*checks)
    others = [col(c) for c in orders.columns if c != source.customer_id]
    return orders.select(
        customer_id.alias(ORDER_CUSTOMER_ID),
        order_date.alias(ORDER_DATE),
        amount.alias(AMOUNT),
        quantity.alias(QUANTITY),
        category.alias(CATEGORY),
        reason.alias(REASON),
        # the order as it was read (every column but the id), for order_rejects
        F.when(reason.isNotNull(), F.to_json(F.struct(*others))).alias(VALUES),
    )


def default_as_of(checked: DataFrame) -> dt.date:
    """The day after the last order date among the valid orders."""
    last = checked.filter(F.col(REASON).isNull()).agg(F.max(ORDER_DATE).alias("last")).first()["last"]
    if last is None:
        raise InputDataError(
            "input.orders: no valid order to take the as_of date from (see the reasons in order_rejects); "
            "check the column mapping input.orders.customer_id / order_date / amount and date_format"
        )
    return last + dt.timedelta(days=1)


def split_orders(checked: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Valid orders, and order_rejects: customer_id (as text), reason, values (JSON)."""
    has_reason = F.col(REASON).isNotNull()
    valid = checked.filter(~has_reason).drop(REASON, VALUES)
    rejects = checked.filter(has_reason).select(
        F.col(ORDER_CUSTOMER_ID).cast("string").alias("customer_id"), F.col(REASON), F.col(VALUES)
    )
    return valid, rejects


def top_categories(valid: DataFrame, n: int) -> list[str]:
    """The ``n`` categories with the most spend over all valid orders (ties by name): n rows to the driver."""
    if n == 0:
        return []
    rows = (
        valid.filter(F.col(CATEGORY).isNotNull())
        .groupBy(CATEGORY)
        .agg(F.sum(AMOUNT).alias("spend"))
        .orderBy(F.desc("spend"), F.asc(CATEGORY))
        .limit(n)
        .collect()
    )
    return [r[CATEGORY] for r in rows]


def share_columns(categories: list[str]) -> dict[str, str]:
    """``share_<name>`` per category: lower case, runs of other characters as ``_``, unique, never
    ``share_other`` (the rest); a name that would clash gets ``_2``, ``_3``, ..."""
    used = {SHARE_OTHER}
    columns = {}
    for category in categories:
        stem = SHARE_PREFIX + (re.sub(r"[^a-z0-9]+", "_", category.lower()).strip("_") or "blank")
        name, n = stem, 1
        while name in used:
            n += 1
            name = f"{stem}_{n}"
        used.add(name)
        columns[category] = name
    return columns


def customer_features(
    valid: DataFrame,
    as_of: dt.date,
    categories: dict[str, str],
    with_quantity: bool = False,
    with_category: bool = False,
) -> DataFrame:
    """One groupBy over the valid orders: the features per customer (see the module docstring)."""
    reference = F.lit(as_of)
    spend_in = {
        column: F.sum(F.when(F.col(CATEGORY) == F.lit(category), F.col(AMOUNT)).otherwise(F.lit(0.0)))
        for category, column in categories.items()
    }
    is_other = (F.col(CATEGORY).isNull() | ~F.col(CATEGORY).isin(*categories)) if categories else F.lit(True)
    aggregates = [
        F.max(ORDER_DATE).alias("last_order"),
        F.min(ORDER_DATE).alias("first_order"),
        F.count(F.lit(1)).alias(FREQUENCY),
        F.sum(AMOUNT).alias(MONETARY),
        *[spend.alias(column) for column, spend in spend_in.items()],
        F.sum(F.when(is_other, F.col(AMOUNT)).otherwise(F.lit(0.0))).alias(SHARE_OTHER),
    ]
    if with_quantity:
        aggregates.append(F.sum(QUANTITY).alias(TOTAL_QUANTITY))
    per_customer = valid.groupBy(ORDER_CUSTOMER_ID).agg(*aggregates)

    frequency, monetary = F.col(FREQUENCY), F.col(MONETARY)
    tenure = F.datediff(reference, F.col("first_order"))
    months = F.greatest(tenure / F.lit(DAYS_PER_MONTH), F.lit(MIN_TENURE_MONTHS))
    spent_something = monetary > 0
    shares = [*categories.values(), SHARE_OTHER] if with_category else []
    return per_customer.select(
        F.col(ORDER_CUSTOMER_ID),
        F.datediff(reference, F.col("last_order")).cast("int").alias(RECENCY),
        frequency.cast("long").alias(FREQUENCY),
        monetary.cast("double").alias(MONETARY),
        (monetary / frequency).alias(AVG_ORDER_VALUE),
        tenure.cast("int").alias(TENURE),
        (frequency / months).alias(ORDERS_PER_MONTH),
        *([F.col(TOTAL_QUANTITY).cast("double").alias(TOTAL_QUANTITY)] if with_quantity else []),
        *[F.when(spent_something, F.col(c) / monetary).alias(c) for c in shares],
    )


def join_customers(
    customers: DataFrame, id_column: str, order_features: OrderFeatures
) -> tuple[DataFrame, list[str]]:
    """Customers left-joined with their order features (ids compared as text).

    A customer without a valid order gets 0 for frequency, monetary, total_quantity and
    orders_per_month, and NULL for recency, tenure, average order value and spend shares (unknown:
    the preparation imputes the median, or ``features.missing: reject`` rejects the customer). A
    customer column with the name of an order feature is replaced by the feature; the names of the
    replaced columns are returned.
    """
    features = order_features.features
    columns = order_features.columns
    replaced = [c for c in customers.columns if c in columns and c != id_column]
    if id_column in columns:
        raise InputDataError(
            f"input.customers.id_column {id_column!r} has the name of a feature built from the orders; "
            "give the customer table an id column with another name"
        )
    key = "__order_customer_id"
    keyed = features.select(F.col(ORDER_CUSTOMER_ID).cast("string").alias(key), *[F.col(c) for c in columns])
    kept = [c for c in customers.columns if c not in replaced]
    joined = customers.select(*[col(c) for c in kept]).join(
        keyed, on=col(id_column).cast("string") == F.col(key), how="left"
    )
    has_orders = F.col(key).isNotNull()
    filled = [
        (F.when(has_orders, F.col(c)).otherwise(F.lit(0)) if c in ZERO_WITHOUT_ORDERS else F.col(c)).alias(c)
        for c in columns
    ]
    return joined.select(*[col(c) for c in kept], *filled), replaced


def count_orders(orders: OrderFeatures) -> dict[str, Any]:
    """Order rows read, valid and rejected (with the count per reason): one aggregation, a few rows."""
    per_reason = {row[REASON]: row["count"] for row in orders.checked.groupBy(REASON).count().collect()}
    valid = per_reason.pop(None, 0)
    rejected = sum(per_reason.values())
    if valid == 0:
        raise InputDataError(
            f"input.orders: all {rejected} order rows were rejected; reasons: {per_reason}. "
            "Check the column mapping input.orders.customer_id / order_date / amount."
        )
    if rejected:
        log.warning("%d of %d order rows rejected (see order_rejects/)", rejected, valid + rejected)
    customers = orders.features.count()
    return {
        "rows": {"read": valid + rejected, "valid": valid, "rejected": rejected},
        "rejected_by_reason": dict(sorted(per_reason.items())),
        "customers_with_orders": customers,
    }


def count_matches(joined: DataFrame, orders: OrderFeatures, id_column: str) -> dict[str, int]:
    """How well customers and orders match: customer rows without a valid order, and customers with
    valid orders that are not in the customer table (their orders are valid but nobody is segmented)."""
    ids = joined.select(col(id_column).cast("string").alias(ORDER_CUSTOMER_ID))
    unknown = orders.features.select(F.col(ORDER_CUSTOMER_ID).cast("string").alias(ORDER_CUSTOMER_ID)).join(
        ids, on=ORDER_CUSTOMER_ID, how="left_anti"
    )
    without = joined.filter(F.col(FREQUENCY) == 0).count()
    not_in_customers = unknown.count()
    if not_in_customers:
        log.warning("%d customers with orders are not in input.customers: not segmented", not_in_customers)
    return {"customers_without_orders": without, "customers_with_orders_not_in_customers": not_in_customers}


def _parsed_date(orders: DataFrame, source: OrdersInput) -> Column:
    """The order date as DATE: dates as they are, timestamps truncated, text parsed (NULL if it fails)."""
    column = source.order_date
    data_type = orders.schema[column].dataType
    if isinstance(data_type, T.DateType):
        return col(column)
    if isinstance(data_type, T.TimestampType | T.TimestampNTZType):
        return F.to_date(col(column))
    text = col(column).cast("string")
    if source.date_format:
        return F.try_to_timestamp(text, F.lit(source.date_format)).cast("date")
    return F.expr(f"try_cast(CAST({quoted(column)} AS STRING) AS DATE)")


def _is_finite(value: Column) -> Column:
    return ~F.isnan(value) & (F.abs(value) != F.lit(float("inf")))


def verify_order_accounting(spark: SparkSession, rows: OrderRows, path: str, fmt: str) -> None:
    """Order rows read = valid + rejected, with the rejected ones counted where they were written."""
    written = spark.read.format(fmt).options(header="true").load(path).count()
    if written != rows.rejected or rows.valid + written != rows.read:
        raise SegsparkError(
            f"order accounting failed: read {rows.read}, valid {rows.valid}, "
            f"rejected {rows.rejected}, written to order_rejects {written}; the run was not published"
        )
