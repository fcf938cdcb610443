"""Property tests on random dirty tables: every row is accounted for with the right reason, and the
preparation matches numpy on whatever finite values it gets."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.ml.functions import vector_to_array

from segspark.config import FeatureSettings
from segspark.prepare import FEATURES, build_pipeline
from segspark.validate import DUPLICATE, resolve_features, split_rejects, with_reject_reason

FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

ids = st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d", "e", "f"]))
cells = st.one_of(
    st.none(),
    st.sampled_from(["nan", "inf", "-inf", "lots", ""]),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(repr),
)
rows = st.lists(st.tuples(ids, cells, cells), min_size=1, max_size=25)


def _expected_reason(customer_id, cells: tuple, missing: str) -> str | None:
    """The first problem of a row, worked out in plain Python, in the documented order."""
    if customer_id is None:
        return "missing customer id"
    for column, cell in zip(("spend", "visits"), cells, strict=True):
        value = None
        if cell not in (None, ""):
            try:
                value = float(cell)
            except ValueError:
                return f"non-numeric value in {column}"
        if missing == "reject" and (value is None or math.isnan(value)):
            return f"missing value in {column}"
        if value is not None and math.isinf(value):
            return f"infinite value in {column}"
    return None


@FAST
@given(table=rows, missing=st.sampled_from(["impute", "reject"]))
def test_every_row_is_assigned_or_rejected_with_its_reason(spark, table, missing):
    df = spark.createDataFrame(table, "customer_id STRING, spend STRING, visits STRING")
    spec = resolve_features(df, "customer_id", FeatureSettings(numeric=["spend", "visits"]))
    valid, rejects = split_rejects(with_reject_reason(df, spec, missing), spec)

    reasons = [_expected_reason(cid, (a, b), missing) for cid, a, b in table]
    usable_ids = [cid for (cid, _, _), reason in zip(table, reasons, strict=True) if reason is None]
    expected = Counter(r for r in reasons if r is not None)
    expected[DUPLICATE] = len(usable_ids) - len(set(usable_ids))
    +expected  # noqa: B018  (drops zero counts)

    got_valid = valid.collect()
    assert len(got_valid) + rejects.count() == len(table)
    assert sorted(r.customer_id for r in got_valid) == sorted(set(usable_ids))
    assert Counter(r.reason for r in rejects.collect()) == +expected


finite_rows = st.lists(
    st.tuples(st.floats(-1e4, 1e4), st.floats(0, 1e4)), min_size=3, max_size=20, unique_by=lambda r: r[0]
)


@FAST
@given(table=finite_rows)
def test_scaled_features_match_numpy_standardisation(spark, table):
    data = [(f"c{i:02d}", a, b) for i, (a, b) in enumerate(table)]
    df = spark.createDataFrame(data, "customer_id STRING, spend DOUBLE, visits DOUBLE")
    spec = resolve_features(df, "customer_id", FeatureSettings(log=["visits"]))
    prepared = build_pipeline(spec).fit(df).transform(df)
    got = np.array(
        [
            r.v
            for r in prepared.select(vector_to_array(FEATURES).alias("v"), "customer_id")
            .orderBy("customer_id")
            .collect()
        ]
    )

    values = np.array([[a, np.log1p(b)] for a, b in table])
    std = values.std(axis=0, ddof=1)
    expected = np.where(std > 0, (values - values.mean(axis=0)) / np.where(std > 0, std, 1), 0.0)
    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-7)
