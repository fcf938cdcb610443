"""Synthetic customers with known segments, for the demo, the tests and the benchmarks.

Five archetypes modelled on the articles' income-vs-spending examples, each a Gaussian blob in six
numeric features. Rows are written in chunks with numpy and pyarrow, so ten million customers need
only one chunk's memory. The true segment of every customer goes to a separate ``truth`` table, so
that it can never be picked up as a feature.

Orders (``write_orders``) are drawn from the same customers: each customer orders ``orders_per_year``
times (at least once) over the year before their last order, which is ``days_since_last_order`` days
before ORDERS_AS_OF - 1; amounts scatter around their ``avg_order_value``, and the categories follow
a mix per archetype. So the segments can be recovered from the orders alone.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

CHUNK_ROWS = 1_000_000


@dataclass(frozen=True)
class Archetype:
    name: str
    weight: float
    mean: dict[str, float]
    std: dict[str, float]


FEATURES = [
    "annual_income",
    "spending_score",
    "age",
    "orders_per_year",
    "avg_order_value",
    "days_since_last_order",
]

ARCHETYPES = [
    Archetype(
        "mainstream",
        0.30,
        dict(zip(FEATURES, [60_000, 50, 38, 12, 70, 45], strict=True)),
        dict(zip(FEATURES, [7_000, 6, 6, 2.5, 10, 12], strict=True)),
    ),
    Archetype(
        "affluent loyal",
        0.20,
        dict(zip(FEATURES, [115_000, 82, 47, 26, 150, 8], strict=True)),
        dict(zip(FEATURES, [9_000, 6, 6, 3, 18, 4], strict=True)),
    ),
    Archetype(
        "young impulse buyers",
        0.20,
        dict(zip(FEATURES, [28_000, 80, 24, 30, 32, 6], strict=True)),
        dict(zip(FEATURES, [5_000, 6, 3, 4, 6, 3], strict=True)),
    ),
    Archetype(
        "careful high earners",
        0.15,
        dict(zip(FEATURES, [100_000, 18, 54, 4, 65, 120], strict=True)),
        dict(zip(FEATURES, [9_000, 6, 7, 1.5, 12, 25], strict=True)),
    ),
    Archetype(
        "lapsed bargain hunters",
        0.15,
        dict(zip(FEATURES, [32_000, 20, 42, 3, 24, 220], strict=True)),
        dict(zip(FEATURES, [6_000, 6, 9, 1, 5, 35], strict=True)),
    ),
]

BOUNDS = {
    "spending_score": (1, 100),
    "age": (18, 90),
    "orders_per_year": (0, None),
    "avg_order_value": (1, None),
    "days_since_last_order": (0, None),
    "annual_income": (5_000, None),
}
ROUNDING = {
    "annual_income": -2,
    "spending_score": 0,
    "age": 0,
    "orders_per_year": 0,
    "avg_order_value": 2,
    "days_since_last_order": 0,
}


def customer_chunks(n: int, seed: int = 7, chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """Customers in chunks: customer_id, the six features, and true_segment (0..4, archetype order)."""
    rng = np.random.default_rng(seed)
    weights = np.array([a.weight for a in ARCHETYPES])
    means = np.array([[a.mean[f] for f in FEATURES] for a in ARCHETYPES])
    stds = np.array([[a.std[f] for f in FEATURES] for a in ARCHETYPES])
    for start in range(0, n, chunk_rows):
        size = min(chunk_rows, n - start)
        truth = rng.choice(len(ARCHETYPES), size=size, p=weights / weights.sum())
        values = rng.normal(means[truth], stds[truth])
        chunk = pd.DataFrame({"customer_id": [f"C{i:08d}" for i in range(start + 1, start + size + 1)]})
        for j, feature in enumerate(FEATURES):
            low, high = BOUNDS[feature]
            column = np.clip(values[:, j], low, high).round(ROUNDING[feature])
            chunk[feature] = column.astype("int64") if ROUNDING[feature] <= 0 else column
        chunk["true_segment"] = truth.astype("int32")
        yield chunk


def write_customers(out: str, n: int, seed: int = 7, fmt: str = "parquet") -> dict[str, str]:
    """Write ``<out>/customers.<fmt>/`` (the table to segment) and ``<out>/truth.parquet/``."""
    paths = {"customers": os.path.join(out, f"customers.{fmt}"), "truth": os.path.join(out, "truth.parquet")}
    for path in paths.values():
        os.makedirs(path, exist_ok=True)
        for old in os.listdir(path):
            os.remove(os.path.join(path, old))
    for part, chunk in enumerate(customer_chunks(n, seed)):
        customers = pa.Table.from_pandas(chunk.drop(columns="true_segment"), preserve_index=False)
        truth = pa.Table.from_pandas(chunk[["customer_id", "true_segment"]], preserve_index=False)
        name = f"part-{part:05d}"
        if fmt == "csv":
            pacsv.write_csv(customers, os.path.join(paths["customers"], f"{name}.csv"))
        else:
            pq.write_table(customers, os.path.join(paths["customers"], f"{name}.parquet"))
        pq.write_table(truth, os.path.join(paths["truth"], f"{name}.parquet"))
    return paths


WEAK_GROUPS = [  # share, then the means of two behaviour scores (in sd) and of log spend
    (0.5, 0.0, 0.0, 4.0),
    (0.3, 1.8, 0.5, 4.5),
    (0.2, 0.6, 1.8, 4.2),
]


def weak_customers(n: int, seed: int = 7) -> pd.DataFrame:
    """A harder table than the archetypes, for checking that repeated runs agree on data nobody tuned
    for: three overlapping groups in two scores, a right-skewed spend (log-normal) and a feature with
    no structure at all. customer_id, engagement, loyalty, spend, tenure_months, true_segment."""
    rng = np.random.default_rng(seed)
    shares = np.array([g[0] for g in WEAK_GROUPS])
    truth = rng.choice(len(WEAK_GROUPS), size=n, p=shares)
    means = np.array([g[1:] for g in WEAK_GROUPS])[truth]
    return pd.DataFrame(
        {
            "customer_id": [f"W{i:07d}" for i in range(1, n + 1)],
            "engagement": rng.normal(means[:, 0], 1.0).round(3),
            "loyalty": rng.normal(means[:, 1], 1.0).round(3),
            "spend": np.exp(rng.normal(means[:, 2], 0.6)).round(2),
            "tenure_months": rng.integers(1, 120, size=n),
            "true_segment": truth.astype("int32"),
        }
    )


ORDERS_AS_OF = dt.date(2026, 1, 1)  # the day after the last possible generated order
HISTORY_DAYS = 365  # a customer's earlier orders fall within the year before their last one
AMOUNT_SHAPE = 8.0  # gamma shape of an order's amount around the customer's mean: sd = mean / sqrt(8)
ITEM_PRICE = 40.0  # quantity = 1 + Poisson(amount / ITEM_PRICE)
CATEGORIES = ["groceries", "electronics", "fashion", "home", "beauty", "toys"]
CATEGORY_MIX = {  # share of orders per category, by archetype (ARCHETYPES order)
    "mainstream": [0.40, 0.10, 0.15, 0.20, 0.10, 0.05],
    "affluent loyal": [0.10, 0.35, 0.20, 0.25, 0.05, 0.05],
    "young impulse buyers": [0.10, 0.15, 0.40, 0.05, 0.25, 0.05],
    "careful high earners": [0.30, 0.20, 0.05, 0.35, 0.05, 0.05],
    "lapsed bargain hunters": [0.55, 0.05, 0.10, 0.10, 0.05, 0.15],
}
ORDER_COLUMNS = ["order_id", "customer_id", "order_date", "amount", "quantity", "category"]


def orders_of(customers: pd.DataFrame, rng: np.random.Generator, first_order: int) -> pd.DataFrame:
    """The orders of a chunk of customers (with their ``true_segment``), numbered from ``first_order``."""
    counts = np.maximum(customers["orders_per_year"].to_numpy(), 1)
    owner = np.repeat(np.arange(len(customers)), counts)
    segment = customers["true_segment"].to_numpy()[owner]
    # the first order drawn for each customer is their last one; the others fall in the year before it
    offset = rng.integers(0, HISTORY_DAYS + 1, size=len(owner))
    offset[np.concatenate([[0], np.cumsum(counts)[:-1]])] = 0
    days_before = 1 + customers["days_since_last_order"].to_numpy()[owner] + offset
    mean = customers["avg_order_value"].to_numpy()[owner]
    amount = np.maximum(rng.gamma(AMOUNT_SHAPE, mean / AMOUNT_SHAPE), 0.01).round(2)
    mix = np.cumsum([CATEGORY_MIX[a.name] for a in ARCHETYPES], axis=1)
    category = (rng.random(len(owner))[:, None] > mix[segment]).sum(axis=1).clip(0, len(CATEGORIES) - 1)
    return pd.DataFrame(
        {
            "order_id": [f"O{i:010d}" for i in range(first_order, first_order + len(owner))],
            "customer_id": customers["customer_id"].to_numpy()[owner],
            "order_date": pd.to_datetime(ORDERS_AS_OF) - pd.to_timedelta(days_before, unit="D"),
            "amount": amount,
            "quantity": 1 + rng.poisson(amount / ITEM_PRICE),
            "category": np.array(CATEGORIES)[category],
        }
    )


def dirty_orders(customer_ids: list[str], first_order: int) -> pd.DataFrame:
    """Orders the job must reject, one per reason (the future one only with an explicit as_of)."""
    a, b = customer_ids[0], customer_ids[-1]
    rows = [
        (None, "2025-11-02", "19.99", 1, "toys"),  # missing customer id
        (a, "2025-13-45", "12.50", 1, "home"),  # unparseable date
        (a, "2025-11-03", "-35.00", 1, "fashion"),  # a refund: negative amount
        (b, "2025-11-04", "n/a", 1, "groceries"),  # non-numeric amount
        (b, "2031-01-01", "10.00", 1, "groceries"),  # after as_of (when as_of is given)
    ]
    frame = pd.DataFrame(rows, columns=ORDER_COLUMNS[1:])
    frame.insert(0, "order_id", [f"O{i:010d}" for i in range(first_order, first_order + len(rows))])
    return frame


def write_orders(
    out: str, n: int, seed: int = 7, fmt: str = "parquet", dirty: bool = False
) -> dict[str, str]:
    """Write the customers and truth (as ``write_customers``) and ``<out>/orders.<fmt>/`` from them.

    With ``dirty``, a few orders to reject are added, and order_date and amount are written as text
    (as in a raw export), so that they can hold values that are not dates or numbers.
    """
    paths = write_customers(out, n, seed, fmt)
    paths["orders"] = os.path.join(out, f"orders.{fmt}")
    os.makedirs(paths["orders"], exist_ok=True)
    for old in os.listdir(paths["orders"]):
        os.remove(os.path.join(paths["orders"], old))
    rng = np.random.default_rng([seed, 1])  # a stream of its own: the customers stay as they are
    next_order = 1
    chunks = list(range(0, n, CHUNK_ROWS))
    for part, chunk in enumerate(customer_chunks(n, seed)):
        orders = orders_of(chunk, rng, next_order)
        next_order += len(orders)
        if dirty:
            orders["order_date"] = orders["order_date"].dt.strftime("%Y-%m-%d")
            orders["amount"] = orders["amount"].map("{:.2f}".format)
            if part == len(chunks) - 1:
                orders = pd.concat([orders, dirty_orders(chunk["customer_id"].tolist(), next_order)])
        else:
            orders["order_date"] = orders["order_date"].dt.date
        table = pa.Table.from_pandas(orders[ORDER_COLUMNS], preserve_index=False)
        name = os.path.join(paths["orders"], f"part-{part:05d}")
        if fmt == "csv":
            pacsv.write_csv(table, f"{name}.csv")
        else:
            pq.write_table(table, f"{name}.parquet")
    return paths
