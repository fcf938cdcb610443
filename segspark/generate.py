"""Synthetic customers with known segments, for the demo, the tests and the benchmarks.

Five archetypes modelled on the articles' income-vs-spending examples, each a Gaussian blob in six
numeric features. Rows are written in chunks with numpy and pyarrow, so ten million customers need
only one chunk's memory. The true segment of every customer goes to a separate ``truth`` table, so
that it can never be picked up as a feature.
"""

from __future__ import annotations

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
