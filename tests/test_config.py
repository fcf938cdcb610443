"""Config loading and validation: every mistake named by its key."""

from __future__ import annotations

import pytest

from segspark.config import DEFAULT_SENSITIVE, load_settings, settings_from_dict
from segspark.errors import ConfigError
from tests.conftest import REPO

MINIMAL = {"input": {"customers": {"path": "data/customers.parquet"}}}


def test_defaults_follow_the_design():
    settings = settings_from_dict(MINIMAL)
    assert settings.spark.master == "local[*]"
    assert settings.input.customers.format == "parquet"
    assert settings.input.customers.id_column == "customer_id"
    assert settings.features.missing == "impute"
    assert settings.features.sensitive == DEFAULT_SENSITIVE
    assert settings.model.k_values == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert (settings.model.algorithm, settings.model.selection, settings.model.seed) == (
        "kmeans",
        "silhouette",
        42,
    )
    assert (settings.output.path, settings.output.format) == ("lake/segmentation", "parquet")


def test_unknown_key_is_named_with_the_keys_allowed_there():
    with pytest.raises(ConfigError) as error:
        settings_from_dict({"input": {"customers": {"paht": "x.parquet"}}})
    message = str(error.value)
    assert "input.customers.paht: unknown key" in message
    assert "path, table, format, options, schema, id_column" in message


def test_wrong_type_names_the_key_and_the_value():
    with pytest.raises(ConfigError, match=r"model\.seed: .*'forty-two'"):
        settings_from_dict({**MINIMAL, "model": {"seed": "forty-two"}})


def test_unsupported_format_lists_the_supported_ones():
    with pytest.raises(ConfigError, match=r"input\.customers\.format: .*'parquet', 'csv', 'json' or 'orc'"):
        settings_from_dict({"input": {"customers": {"path": "x", "format": "xlsx"}}})


def test_missing_input_section_says_what_to_set():
    with pytest.raises(ConfigError, match=r"input: required .*input\.customers\.path.*input\.orders\.path"):
        settings_from_dict({})


def test_customers_without_path_or_table_is_refused():
    with pytest.raises(ConfigError, match=r"input\.customers: missing: give path .* or table"):
        settings_from_dict({"input": {"customers": {"format": "csv"}}})


def test_path_and_table_together_are_refused():
    with pytest.raises(ConfigError, match="either path or table"):
        settings_from_dict({"input": {"customers": {"path": "x", "table": "db.t"}}})


@pytest.mark.parametrize(
    ("k", "message"),
    [
        ({"min": 6, "max": 3}, r"min \(6\) is greater than max \(3\)"),
        (1, "greater than or equal to 2"),
        ({"min": 1, "max": 4}, r"model\.k\.min: .*greater than or equal to 2"),
    ],
)
def test_k_ranges_that_make_no_sense_are_refused(k, message):
    with pytest.raises(ConfigError, match=message):
        settings_from_dict({**MINIMAL, "model": {"k": k}})


def test_single_k_is_a_range_of_one():
    assert settings_from_dict({**MINIMAL, "model": {"k": 4}}).model.k_values == [4]


def test_set_overrides_are_read_as_yaml_values(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("input:\n  customers:\n    path: a.parquet\n")
    settings = load_settings(
        config,
        [
            "model.k=5",
            "features.numeric=[income, score]",
            "output.report=false",
            "input.customers.options.header=true",
            "spark.conf.spark.sql.shuffle.partitions=8",
        ],
    )
    assert settings.model.k_values == [5]
    assert settings.features.numeric == ["income", "score"]
    assert settings.output.report is False
    assert settings.input.customers.options == {"header": True}
    assert settings.spark.conf == {"spark.sql.shuffle.partitions": 8}


def test_set_without_equals_sign_is_a_usage_error():
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_settings(None, ["model.k"])


def test_set_into_a_value_is_refused():
    with pytest.raises(ConfigError, match=r"input\.customers\.path is a value, not a section"):
        load_settings(None, ["input.customers.path=x", "input.customers.path.deeper=1"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_settings(tmp_path / "nope.yaml")


def test_yaml_is_read_with_the_safe_loader(tmp_path):
    config = tmp_path / "evil.yaml"
    config.write_text("input: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(config)


def test_run_id_must_be_a_safe_folder_name():
    with pytest.raises(ConfigError, match=r"output\.run_id: use letters"):
        settings_from_dict({**MINIMAL, "output": {"run_id": "../../etc"}})


@pytest.mark.parametrize("path", ["lake-local[2]", "/data/{a,b}", "runs*"])
def test_output_path_without_glob_characters(path):
    # Spark would write lake-local[2]/ and then read lake-local[2] back as a pattern matching lake-local2
    with pytest.raises(ConfigError, match=r"output\.path: the folder name .* Spark reads as a file pattern"):
        settings_from_dict({**MINIMAL, "output": {"path": path}})


def test_spark_remote_must_be_a_connect_address(monkeypatch):
    with pytest.raises(ConfigError, match=r"spark\.remote: a Spark Connect address starts with sc://"):
        settings_from_dict({**MINIMAL, "spark": {"remote": "http://host:15002"}})
    settings = settings_from_dict({**MINIMAL, "spark": {"remote": "sc://host:15002"}})
    assert settings.spark.remote_url() == "sc://host:15002"
    monkeypatch.setenv("SPARK_REMOTE", "sc://from-env:15002")
    assert settings_from_dict(MINIMAL).spark.remote_url() == "sc://from-env:15002"
    monkeypatch.delenv("SPARK_REMOTE")
    assert settings_from_dict(MINIMAL).spark.remote_url() is None


@pytest.mark.parametrize("name", ["local.yaml", "cluster.yaml"])
def test_shipped_configs_are_valid(name):
    settings = load_settings(REPO / "conf" / name)
    assert settings.input.customers.path


def test_orders_alone_are_enough_and_have_sensible_defaults():
    settings = settings_from_dict({"input": {"orders": {"path": "orders.csv", "format": "csv"}}})
    assert settings.input.customers is None
    orders = settings.input.orders
    assert (orders.customer_id, orders.order_date, orders.amount) == ("customer_id", "order_date", "amount")
    assert (orders.quantity, orders.category, orders.as_of, orders.top_categories) == (None, None, None, 5)


def test_input_without_customers_or_orders_names_both_keys():
    with pytest.raises(ConfigError, match=r"nothing to segment: give input\.customers .*input\.orders"):
        settings_from_dict({"input": {}})


def test_orders_as_of_must_be_a_date():
    with pytest.raises(ConfigError, match=r"input\.orders\.as_of: .*'last friday'"):
        settings_from_dict({"input": {"orders": {"path": "o.csv", "as_of": "last friday"}}})


def test_malformed_yaml_in_a_set_value_names_the_key_without_internal_names():
    with pytest.raises(ConfigError) as error:
        load_settings(None, ["input.customers.path=x.parquet", "model.k={min: 3"])
    message = str(error.value)
    assert "could not parse the value of model.k as YAML" in message
    assert "KRange" not in message and "Error" not in message


def test_a_wrong_type_for_k_does_not_show_pydantic_class_names():
    with pytest.raises(ConfigError) as error:
        load_settings(None, ["input.customers.path=x.parquet", "model.k=[3, 4]"])
    assert "model.k:" in str(error.value) and "KRange" not in str(error.value)


def test_a_spark_value_that_is_no_yaml_stays_text_for_spark_to_check():
    settings = load_settings(None, ["input.customers.path=x", "spark.conf.spark.sql.shuffle.partitions={bad"])
    assert settings.spark.conf == {"spark.sql.shuffle.partitions": "{bad"}


def test_catalog_and_drift_settings_are_checked_with_the_key_named():
    settings = settings_from_dict({**MINIMAL, "output": {"catalog": {"database": "main.segments"}}})
    assert (settings.output.catalog.database, settings.output.catalog.dir) == ("main.segments", None)
    assert (settings.segments.drift.share, settings.segments.drift.centroid) == (0.05, 0.5)
    for output, message in [
        ({"catalog": {}}, r"output\.catalog\.database: required .*\{database: segments\}"),
        (
            {"catalog": "segments"},
            r"output\.catalog: write it as a mapping: output\.catalog: \{database: segments\}",
        ),
        ({"catalog": {"database": "my-segments"}}, r"output\.catalog\.database: use letters, digits and '_'"),
        (
            {"catalog": {"database": "s", "path": "x"}},
            r"output\.catalog\.path: unknown key; .*: database, dir",
        ),
    ]:
        with pytest.raises(ConfigError, match=message):
            settings_from_dict({**MINIMAL, "output": output})
    with pytest.raises(
        ConfigError, match=r"segments\.drift\.share: .*0\.05 means 5 percentage points \(got 5\)"
    ):
        settings_from_dict({**MINIMAL, "segments": {"drift": {"share": 5}}})
    with pytest.raises(ConfigError, match=r"segments\.drift\.centroid: .*greater than 0"):
        settings_from_dict({**MINIMAL, "segments": {"drift": {"centroid": 0}}})
