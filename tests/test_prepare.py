"""The preparation Pipeline against numpy: median imputation, log1p, one-hot, standard scaling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pyspark.ml.functions import vector_to_array

from segspark.config import FeatureSettings
from segspark.prepare import FEATURES, RAW_FEATURES, build_pipeline
from segspark.validate import resolve_features

INCOME = [30.0, 45.0, None, 52.0, 61.0, 75.0, 90.0, 250.0]  # 7 known values: the median is exact
VISITS = [1.0, 4.0, 2.0, 8.0, 3.0, 5.0, 13.0, 40.0]
REGION = ["north", "south", "north", "east", None, "south", "north", "east"]


@pytest.fixture(scope="module")
def customers(spark):
    rows = [(f"c{i}", INCOME[i], VISITS[i], REGION[i]) for i in range(len(INCOME))]
    return spark.createDataFrame(rows, "customer_id STRING, income DOUBLE, visits DOUBLE, region STRING")


def _vectors(df, column: str) -> np.ndarray:
    rows = df.select("customer_id", vector_to_array(column).alias("v")).orderBy("customer_id").collect()
    return np.array([r.v for r in rows])


def _standardise(matrix: np.ndarray) -> np.ndarray:
    """Spark's StandardScaler(withMean, withStd) uses the sample standard deviation (ddof=1)."""
    return (matrix - matrix.mean(axis=0)) / matrix.std(axis=0, ddof=1)


def _expected_numeric(log_income: bool) -> np.ndarray:
    income = np.array([np.nan if v is None else v for v in INCOME])
    income[np.isnan(income)] = np.nanmedian(income)
    if log_income:
        income = np.log1p(income)
    return np.column_stack([income, VISITS])


def _fit(customers, **settings):
    spec = resolve_features(customers, "customer_id", FeatureSettings(**settings))
    return build_pipeline(spec).fit(customers)


def test_scaled_values_match_numpy_with_median_imputation(customers):
    prepared = _fit(customers, numeric=["income", "visits"]).transform(customers)
    expected = _expected_numeric(log_income=False)
    np.testing.assert_allclose(_vectors(prepared, RAW_FEATURES), expected, rtol=1e-12)
    np.testing.assert_allclose(_vectors(prepared, FEATURES), _standardise(expected), rtol=1e-9, atol=1e-12)


def test_log_features_are_log1p_before_scaling(customers):
    prepared = _fit(customers, numeric=["income", "visits"], log=["income"]).transform(customers)
    expected = _standardise(_expected_numeric(log_income=True))
    np.testing.assert_allclose(_vectors(prepared, FEATURES), expected, rtol=1e-9, atol=1e-12)


def test_categories_are_one_hot_encoded_in_alphabetical_order(customers, spark):
    model = _fit(customers, numeric=["visits"], categorical=["region"])
    unscaled = _vectors(model.transform(customers), RAW_FEATURES)
    dummies = pd.get_dummies(pd.Series(REGION, dtype="object").fillna("\uffff")).astype(float).to_numpy()
    # columns: visits, east, north, south, then the bucket for missing and unseen values
    np.testing.assert_array_equal(unscaled[:, 0], VISITS)
    np.testing.assert_array_equal(unscaled[:, 1:], dummies)

    unseen = spark.createDataFrame([("z1", 2.0, "west")], "customer_id STRING, visits DOUBLE, region STRING")
    np.testing.assert_array_equal(_vectors(model.transform(unseen), RAW_FEATURES), [[2.0, 0, 0, 0, 1]])
