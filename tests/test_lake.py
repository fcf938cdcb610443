"""Reading every supported source, and publishing runs to the lake."""

from __future__ import annotations

import subprocess

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.orc as orc
import pyarrow.parquet as pq
import pytest

from segspark.config import CustomersInput
from segspark.errors import InputDataError, OutputError
from segspark.lake import Lake, read_source, small_table

ROWS = pd.DataFrame(
    {
        "customer_id": ["a1", "a2", "a3", "a4"],
        "annual_income": [52000.0, 61000.5, np.nan, 88000.0],
        "visits": [3, 10, 7, 1],
    }
)


def _rows(df) -> list[tuple]:
    """Rows of a Spark DataFrame as sorted tuples, NaN/NULL both as None."""
    frame = df.select("customer_id", "annual_income", "visits").toPandas()
    frame = frame.astype(object).where(frame.notna(), None)
    return sorted(tuple(r) for r in frame.itertuples(index=False))


EXPECTED = sorted(
    tuple(None if isinstance(v, float) and np.isnan(v) else v for v in row)
    for row in ROWS.itertuples(index=False)
)


def _write(tmp_path, fmt: str) -> str:
    """Write ROWS with pandas/pyarrow (not Spark), as a producer upstream of segspark would."""
    path = tmp_path / f"customers.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pandas(ROWS, preserve_index=False), path)
    elif fmt == "orc":
        orc.write_table(pa.Table.from_pandas(ROWS, preserve_index=False), str(path))
    elif fmt == "csv":
        ROWS.to_csv(path, index=False)
    elif fmt == "json":
        ROWS.to_json(path, orient="records", lines=True)
    return str(path)


@pytest.mark.parametrize("fmt", ["parquet", "orc", "csv", "json"])
def test_reads_each_format(spark, tmp_path, fmt):
    source = CustomersInput(path=_write(tmp_path, fmt), format=fmt)
    df = read_source(spark, source)
    assert _rows(df) == EXPECTED


def test_csv_infers_numbers_by_default(spark, tmp_path):
    df = read_source(spark, CustomersInput(path=_write(tmp_path, "csv"), format="csv"))
    types = dict(df.dtypes)
    assert types["annual_income"] == "double" and types["visits"] == "int"


def test_csv_with_a_given_schema_uses_it(spark, tmp_path):
    source = CustomersInput(
        path=_write(tmp_path, "csv"),
        format="csv",
        schema="customer_id STRING, annual_income DOUBLE, visits LONG",
    )
    df = read_source(spark, source)
    assert dict(df.dtypes) == {
        "customer_id": "string",
        "annual_income": "double",
        "visits": "bigint",
        "_corrupt_record": "string",  # lines that do not fit the schema, rejected by validation
    }
    assert _rows(df) == EXPECTED


def test_malformed_csv_lines_are_kept_whole_for_the_rejects(spark, tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text("customer_id,annual_income,visits\na1,100.5,3\na2,7,not-a-number\na3,5\na4,1,2,extra\n")
    source = CustomersInput(
        path=str(path), format="csv", schema="customer_id STRING, annual_income DOUBLE, visits INT"
    )
    rows = {r.customer_id: r._corrupt_record for r in read_source(spark, source).collect()}
    assert rows == {"a1": None, "a2": "a2,7,not-a-number", "a3": "a3,5", "a4": "a4,1,2,extra"}


def test_csv_reader_options_are_passed_through(spark, tmp_path):
    path = tmp_path / "semicolon.csv"
    ROWS.to_csv(path, index=False, sep=";")
    df = read_source(spark, CustomersInput(path=str(path), format="csv", options={"sep": ";"}))
    assert _rows(df) == EXPECTED


def test_reads_a_catalog_table(spark):
    spark.createDataFrame(ROWS).write.mode("overwrite").saveAsTable("test_customers")
    df = read_source(spark, CustomersInput(table="test_customers"))
    assert _rows(df) == EXPECTED


def test_missing_input_path_is_named(spark, tmp_path):
    missing = str(tmp_path / "nowhere.parquet")
    with pytest.raises(
        InputDataError, match=r"input\.customers: cannot read parquet data at .*nowhere\.parquet"
    ):
        read_source(spark, CustomersInput(path=missing))


def test_publish_moves_the_run_and_replaces_latest(spark, tmp_path):
    lake = Lake(spark, str(tmp_path / "lake"))
    lake.check_writable()
    for run_id in ("run-1", "run-2"):
        lake.write_text(f"{lake.staging_dir(run_id)}/manifest.json", run_id)
        lake.publish(run_id)
        assert lake.latest_run_id() == run_id
        assert (tmp_path / "lake" / "runs" / run_id / "manifest.json").read_text() == run_id
        assert not (tmp_path / "lake" / "_staging" / run_id).exists()
    assert (tmp_path / "lake" / "latest").read_text() == "run-2\n"


def test_republishing_a_run_id_replaces_it_whole(spark, tmp_path):
    lake = Lake(spark, str(tmp_path / "lake"))
    lake.write_text(f"{lake.staging_dir('r')}/old-only.txt", "old")
    lake.publish("r")
    lake.write_text(f"{lake.staging_dir('r')}/new.txt", "new")
    lake.publish("r")
    assert sorted(p.name for p in (tmp_path / "lake" / "runs" / "r").iterdir()) == ["new.txt"]


def test_a_run_publishing_while_another_checks_the_lake_keeps_its_run(spark, tmp_path, monkeypatch):
    """Two runs started at once into a new lake: one publishes between the other's probe steps."""
    root = tmp_path / "lake"
    publisher, checker = Lake(spark, str(root)), Lake(spark, str(root))
    publisher.write_text(f"{publisher.staging_dir('r1')}/manifest.json", "r1")
    rename = checker.storage.rename

    def publish_first(source, target, overwrite=False):
        if not (root / "runs" / "r1").exists():
            publisher.publish("r1")
        rename(source, target, overwrite)

    monkeypatch.setattr(checker.storage, "rename", publish_first)
    checker.check_writable("r2")
    assert (root / "runs" / "r1" / "manifest.json").read_text() == "r1"
    assert sorted(p.name for p in root.rglob("*")) == ["_staging", "latest", "manifest.json", "r1", "runs"]


def test_output_path_that_is_a_file_is_refused(spark, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    with pytest.raises(OutputError, match="is a file"):
        Lake(spark, str(target)).check_writable()


def _immutable(path) -> bool:
    """Make a folder immutable (nothing can be created, renamed or deleted in it, even by root)."""
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    return done.returncode == 0


def test_a_lake_writable_only_below_its_top_is_refused_before_any_work(spark, tmp_path):
    root = tmp_path / "lake"
    (root / "_staging").mkdir(parents=True)
    (root / "runs").mkdir()
    if not _immutable(root):
        pytest.skip("chattr +i is not available here")
    try:
        with pytest.raises(OutputError, match=r"is not writable: .*the latest file"):
            Lake(spark, str(root)).check_writable("r1")
        assert sorted(p.name for p in root.rglob("*")) == ["_staging", "runs"]  # no probe left
    finally:
        subprocess.run(["chattr", "-i", str(root)], check=True)


def test_latest_that_is_a_folder_is_refused_before_any_work(spark, tmp_path):
    (tmp_path / "lake" / "latest").mkdir(parents=True)
    with pytest.raises(OutputError, match=r"latest is a folder"):
        Lake(spark, str(tmp_path / "lake")).check_writable()


def test_a_failed_replace_of_latest_puts_the_run_back_in_staging(spark, tmp_path):
    root = tmp_path / "lake"
    lake = Lake(spark, str(root))
    for run_id in ("r1", "r2"):
        lake.write_text(f"{lake.staging_dir(run_id)}/manifest.json", run_id)
        lake.publish(run_id)
    lake.write_text(f"{lake.staging_dir('r2')}/manifest.json", "r2 again")  # a re-run of r2
    lake.write_text(f"{lake.staging_dir('r3')}/manifest.json", "r3")
    (root / "latest").unlink()
    (root / "latest").mkdir()  # something else took the name: it cannot be replaced by a file
    (root / "latest" / "x").write_text("x")
    for run_id in ("r2", "r3"):
        with pytest.raises(
            OutputError, match=rf"could not publish run {run_id} .*back in .*_staging/{run_id}"
        ):
            lake.publish(run_id)
    assert sorted(p.name for p in (root / "runs").iterdir()) == ["r1", "r2"]
    assert (root / "runs" / "r2" / "manifest.json").read_text() == "r2"  # the earlier r2 is back
    assert sorted(p.name for p in (root / "_staging").iterdir()) == ["r2", "r3"]  # no latest.<id>
    assert (root / "_staging" / "r2" / "manifest.json").read_text() == "r2 again"


@pytest.fixture(params=["hadoop", "arrow"])
def storage(request, spark):
    """Both storages of ``runtime``: Hadoop's FileSystem (classic sessions) and pyarrow.fs (Connect)."""
    from segspark.runtime import ArrowStorage, HadoopStorage

    return HadoopStorage(spark) if request.param == "hadoop" else ArrowStorage()


def test_both_storages_do_what_publishing_needs(storage, tmp_path):
    root = tmp_path / "lake"
    file = f"{root}/_staging/r1/manifest.json"
    storage.write_text(file, '{"a": 1}\nsecond line\n')  # folders made on the way
    assert (root / "_staging" / "r1" / "manifest.json").read_text() == '{"a": 1}\nsecond line\n'
    assert storage.read_text(file) == '{"a": 1}\nsecond line'  # lines, without the last line break
    assert storage.exists(file) and not storage.is_dir(file)
    assert storage.is_dir(f"{root}/_staging") and not storage.exists(f"{root}/absent")

    for name in ("zeta", "alpha", "mid"):
        storage.mkdirs(f"{root}/runs/{name}")
    (root / "runs" / "a-file").write_text("not a folder")
    assert storage.list_dirs(f"{root}/runs") == ["alpha", "mid", "zeta"]
    assert storage.list_dirs(f"{root}/absent") == []

    storage.rename(f"{root}/_staging/r1", f"{root}/runs/r1")  # a whole folder
    assert (root / "runs" / "r1" / "manifest.json").exists() and not (root / "_staging" / "r1").exists()
    with pytest.raises(Exception, match="exists"):  # no overwrite: an existing target is an error
        storage.rename(f"{root}/runs/alpha", f"{root}/runs/r1")
    assert (root / "runs" / "r1" / "manifest.json").exists()

    storage.write_text(f"{root}/latest", "r0\n")
    storage.write_text(f"{root}/_staging/latest.r1", "r1\n")
    storage.rename(f"{root}/_staging/latest.r1", f"{root}/latest", overwrite=True)
    assert (root / "latest").read_text() == "r1\n" and not (root / "_staging" / "latest.r1").exists()

    storage.delete(f"{root}/runs")  # a folder with everything in it
    storage.delete(f"{root}/absent")  # nothing there: nothing to do
    assert not (root / "runs").exists() and (root / "latest").exists()


def test_arrow_storage_reads_spark_style_file_uris(tmp_path):
    from segspark.runtime import ArrowStorage

    (tmp_path / "latest").write_text("r7\n")
    storage = ArrowStorage()
    assert storage.read_text(f"file:{tmp_path}/latest") == "r7"
    assert storage.read_text(f"file://{tmp_path}/latest") == "r7"
    assert storage.exists(f"file:{tmp_path}") and storage.is_dir(f"file://{tmp_path}")


def test_a_small_table_keeps_every_value_and_type(spark):
    frame = pd.DataFrame(
        {
            "segment": np.array([0, 1, 2], dtype=np.int64),
            "big": [2**53 + 1, -(2**62), 0],
            "share": [0.1 + 0.2, 1e-300, np.nan],
            "edge": [np.inf, -np.inf, 123456789.12345679],
            "flag": [True, False, True],
            "name": ['say "hi"\nnow', "Ünïcode · €", None],
            "action": [None, None, None],
        }
    )
    table = small_table(spark, frame)
    assert [(f.name, f.dataType.simpleString()) for f in table.schema.fields] == [
        ("segment", "bigint"),
        ("big", "bigint"),
        ("share", "double"),
        ("edge", "double"),
        ("flag", "boolean"),
        ("name", "string"),
        ("action", "string"),
    ]
    rows = [tuple(r) for r in table.collect()]
    assert rows == [
        (0, 2**53 + 1, 0.30000000000000004, float("inf"), True, 'say "hi"\nnow', None),
        (1, -(2**62), 1e-300, float("-inf"), False, "Ünïcode · €", None),
        (2, 0, None, 123456789.12345679, True, None, None),
    ]
    assert small_table(spark, frame.iloc[:0]).schema == table.schema
