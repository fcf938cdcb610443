"""Session settings that need no Spark: local defaults and what ``spark.event_log`` stands for."""

from __future__ import annotations

from segspark.config import SparkSettings
from segspark.session import local_cores, local_defaults


def test_local_shuffles_have_one_partition_per_core_and_at_least_two():
    assert local_cores("local[3]") == 3 and local_cores("local[2,3]") == 2 and local_cores("local") == 1
    assert local_defaults("local[3]")["spark.sql.shuffle.partitions"] == "3"
    assert local_defaults("local[3]")["spark.default.parallelism"] == "3"
    assert local_defaults("local")["spark.sql.shuffle.partitions"] == "2"


def test_event_log_stands_for_the_two_spark_settings_and_yields_to_explicit_ones():
    assert SparkSettings().effective_conf() == {}
    logged = SparkSettings(event_log="/var/log/spark-events", conf={"spark.ui.enabled": False})
    assert logged.effective_conf() == {
        "spark.ui.enabled": "False",
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": "/var/log/spark-events",
    }
    explicit = SparkSettings(event_log="/a", conf={"spark.eventLog.dir": "hdfs:///history"})
    assert explicit.effective_conf()["spark.eventLog.dir"] == "hdfs:///history"
