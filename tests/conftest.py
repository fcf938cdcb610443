"""One local SparkSession for the whole test run (starting Spark is the slow part)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from segspark.generate import write_customers

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> SparkSession:
    scratch = tmp_path_factory.mktemp("spark")
    session = (
        SparkSession.builder.master("local[2]")
        .appName("segspark-tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.warehouse.dir", str(scratch / "warehouse"))
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={scratch / 'derby'}")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """3000 generated customers in five known segments: ``customers`` (parquet) and ``truth``."""
    return write_customers(str(tmp_path_factory.mktemp("demo")), 3000, seed=11)


def base_config(customers: str, lake: str, **sections) -> dict:
    """A settings dict for tests: the generated customers in, a temporary lake out."""
    config = {
        "input": {"customers": {"path": customers, "format": "parquet"}},
        "model": {"k": {"min": 2, "max": 7}, "seed": 42},
        "output": {"path": lake},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config
