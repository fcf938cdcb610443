"""Reading sources from the lake and publishing a run's outputs to it.

A run is written under ``<output>/_staging/<run_id>/`` and only moved to ``<output>/runs/<run_id>/``
once every output is complete; then ``<output>/latest`` is replaced atomically. A failed run never
touches ``runs/`` or ``latest``. File operations go through the session's storage (``runtime``):
Hadoop's FileSystem API in a classic session, ``pyarrow.fs`` over Spark Connect.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

import pandas as pd
import pyspark.sql.functions as F
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from segspark.config import SourceSettings
from segspark.errors import InputDataError, OutputError
from segspark.runtime import Runtime, empty_frame, first_line
from segspark.validate import CORRUPT_RECORD

log = logging.getLogger(__name__)

CSV_DEFAULTS = {"header": "true", "inferSchema": "true"}
RUNS_DIR = "runs"
STAGING_DIR = "_staging"
LATEST = "latest"


def read_source(
    spark: SparkSession, source: SourceSettings, name: str = "input.customers", ids: tuple[str, ...] = ()
) -> DataFrame:
    """Read a table given by ``path`` + ``format`` (+ options, schema) or by catalog ``table``.

    ``ids``: identity columns. From csv and json they are read as text whatever schema inference
    makes of them (``00123`` is an id, not the number 123); a schema given in the config wins, and
    typed formats keep their types.
    """
    try:
        frame = _load(spark, source, ids)
        frame.schema  # noqa: B018 (Spark Connect analyses lazily: a missing path fails here, not later)
        return frame
    except AnalysisException as exc:
        where = f"table {source.table}" if source.table else f"{source.format} data at {source.path}"
        clash = re.search(r"COLUMN_ALREADY_EXISTS\][^`]*`([^`]+)`", str(exc))
        if clash:
            raise InputDataError(
                f"{name}: {where} has two columns named {clash.group(1)!r} when upper and lower case are "
                "not told apart (as Spark does by default), e.g. 'Income' and 'income'. Rename one of "
                "them, or set spark.conf.spark.sql.caseSensitive: true."
            ) from None
        raise InputDataError(
            f"{name}: cannot read {where}: {first_line(exc)}. Check {name}.path/table and format."
        ) from None


def _load(spark: SparkSession, source: SourceSettings, ids: tuple[str, ...]) -> DataFrame:
    if source.table:
        return spark.table(source.table)
    options = {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in source.options.items()}
    if source.format == "csv":
        options = {**CSV_DEFAULTS, **options}
    reader = spark.read.format(source.format).options(**options)
    if source.format not in ("csv", "json"):
        return (
            reader.schema(source.schema_ddl).load(source.path)
            if source.schema_ddl
            else reader.load(source.path)
        )
    # Text formats: keep each line that does not fit the schema in a column of its own, so the
    # row is rejected with its reason instead of being read as NULLs or dropped.
    schema = (
        spark.createDataFrame([], source.schema_ddl).schema
        if source.schema_ddl
        else ids_as_text(reader.load(source.path).schema, ids)
    )
    if CORRUPT_RECORD not in schema.fieldNames():
        schema = schema.add(CORRUPT_RECORD, T.StringType())
    return (
        reader.schema(schema)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT_RECORD)
        .load(source.path)
    )


def ids_as_text(schema: T.StructType, ids: tuple[str, ...]) -> T.StructType:
    """The inferred schema with the ``ids`` columns as strings."""
    return T.StructType(
        [
            T.StructField(f.name, T.StringType(), f.nullable, f.metadata) if f.name in ids else f
            for f in schema.fields
        ]
    )


def write_table(df: DataFrame, path: str, fmt: str) -> None:
    writer = df.write.mode("overwrite").format(fmt)
    if fmt == "csv":
        writer = writer.option("header", "true")
    writer.save(path)


def small_table(spark: SparkSession, frame: pd.DataFrame) -> DataFrame:
    """A Spark DataFrame of a small pandas one (profiles, metrics), parsed in the JVM from one JSON literal.

    No Python runs on the executors (``createDataFrame`` of local rows would ship them to Python
    workers there), the plan is one literal however many values there are (a literal per value costs a
    call into the JVM each: seconds for a profile of many features), and the schema is explicit, so a
    column of all NULLs (no playbook action, say) keeps its type on every Spark version. NaN is NULL.
    """

    def spark_type(dtype) -> T.DataType:
        if pd.api.types.is_bool_dtype(dtype):
            return T.BooleanType()
        if pd.api.types.is_integer_dtype(dtype):
            return T.LongType()
        if pd.api.types.is_float_dtype(dtype):
            return T.DoubleType()
        return T.StringType()

    schema = T.StructType([T.StructField(str(c), spark_type(t), True) for c, t in frame.dtypes.items()])
    if frame.empty:
        return empty_frame(spark, schema)

    def plain(value, field: T.StructField):
        if value is None:
            return None
        value = value.item() if hasattr(value, "item") else value  # numpy scalars
        return str(value) if isinstance(field.dataType, T.StringType) else value

    values = frame.astype(object).where(frame.notna(), None)
    records = [
        {field.name: plain(value, field) for value, field in zip(row, schema.fields, strict=True)}
        for row in values.itertuples(index=False, name=None)
    ]
    text = json.dumps(records)  # floats as repr (shortest exact), infinities as Infinity: Spark reads both
    rows = F.from_json(F.lit(text), T.ArrayType(schema), {"mode": "FAILFAST"})
    return spark.range(1).select(F.inline(rows))


@dataclass
class Lake:
    """A run's files in the lake, through the session's storage (see ``runtime``)."""

    spark: SparkSession
    root: str

    def __post_init__(self) -> None:
        self.root = self.root.rstrip("/") or "/"
        self.storage = Runtime(self.spark).storage()

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def staging_dir(self, run_id: str) -> str:
        return self.path(STAGING_DIR, run_id)

    def run_dir(self, run_id: str) -> str:
        return self.path(RUNS_DIR, run_id)

    def exists(self, path: str) -> bool:
        return self.storage.exists(path)

    def is_dir(self, path: str) -> bool:
        return self.storage.is_dir(path)

    def delete(self, path: str) -> None:
        self.storage.delete(path)

    def write_text(self, path: str, text: str) -> None:
        self.storage.write_text(path, text)

    def list_dirs(self, path: str) -> list[str]:
        """The names of the folders directly in ``path``, sorted (none when it does not exist)."""
        return self.storage.list_dirs(path)

    def read_text(self, path: str) -> str:
        return self.storage.read_text(path)

    def rename(self, source: str, target: str, overwrite: bool = False) -> None:
        """With ``overwrite`` it replaces ``target`` (atomically where the file system can)."""
        self.storage.rename(source, target, overwrite)

    # -- runs ---------------------------------------------------------------------------------------

    def check_writable(self, run_id: str = "check") -> None:
        """Fail early, before any work, when publishing could not complete.

        Publishing creates folders below the output, moves a folder from ``_staging/`` into ``runs/``
        and replaces the ``latest`` file in the output folder itself; each of these is tried on a
        small probe (one per run: runs may overlap), so a folder that is writable only below its
        top, say, stops the run here and not after all the work.
        """
        if self.exists(self.root) and not self.is_dir(self.root):
            raise OutputError(f"output.path {self.root} is a file; give a folder for the run outputs")
        latest = self.path(LATEST)
        if self.exists(latest) and self.is_dir(latest):
            raise OutputError(
                f"{latest} is a folder; segspark keeps the id of the newest run in that file: move it away"
            )
        probe = f".write-probe-{run_id}"
        # The move is tried into runs/ when it is there. Otherwise into _staging/ itself: runs/ would be
        # made like _staging/, and creating and removing it here would race with a run publishing now.
        into = RUNS_DIR if self.exists(self.path(RUNS_DIR)) else STAGING_DIR
        staged_dir, run_dir = self.path(STAGING_DIR, probe), self.path(into, f"{probe}.moved")
        staged_file, root_file = self.path(STAGING_DIR, f"{probe}.latest"), self.path(probe)
        try:
            self.storage.mkdirs(staged_dir)
            self.rename(staged_dir, run_dir)
            self.delete(run_dir)
            self.write_text(root_file, "probe")
            self.write_text(staged_file, "probe")
            self.rename(staged_file, root_file, overwrite=True)
            self.delete(root_file)
        except Exception as exc:  # a Java IOException (classic) or an OSError (Connect)
            for path in (staged_dir, run_dir, staged_file, root_file):
                self._quietly(self.delete, path)
            raise OutputError(
                f"output.path {self.root} is not writable: {first_line(exc)}. segspark needs to create, "
                "rename and replace files in it (runs/, _staging/ and the latest file)"
            ) from None

    def publish(self, run_id: str) -> str:
        """Move a complete staged run into ``runs/`` and point ``latest`` at it: all or nothing.

        If a step fails, the steps already done are undone: the run goes back to ``_staging/`` (the
        caller marks it failed there), an earlier run of the same id is put back, and no temporary
        file stays.
        """
        staged, final = self.staging_dir(run_id), self.run_dir(run_id)
        retired = self.path(STAGING_DIR, f"{run_id}.replaced")
        pointer = self.path(STAGING_DIR, f"{LATEST}.{run_id}")
        replaced = moved = False
        try:
            self.storage.mkdirs(self.path(RUNS_DIR))
            if self.exists(final):  # a re-run of the same run id replaces the earlier one whole
                self.delete(retired)
                self.rename(final, retired)
                replaced = True
            self.rename(staged, final)
            moved = True
            self.write_text(pointer, run_id + "\n")
            self.rename(pointer, self.path(LATEST), overwrite=True)
        except Exception as exc:
            if moved:
                self._quietly(self.rename, final, staged)
            if replaced:
                self._quietly(self.rename, retired, final)
            self._quietly(self.delete, pointer)
            raise OutputError(
                f"could not publish run {run_id} to {self.root}: {first_line(exc)}. Nothing was published: "
                f"the run is back in {staged}, and {self.path(LATEST)} names the run it named before"
            ) from None
        if replaced:
            self._quietly(self.delete, retired)
        log.info("published run %s; %s now points at it", run_id, self.path(LATEST))
        return final

    @staticmethod
    def _quietly(operation, *paths: str) -> None:
        """Clean-up that must not hide the error being handled."""
        try:
            operation(*paths)
        except Exception as exc:
            log.warning("could not clean up %s: %s", " -> ".join(paths), first_line(exc))

    def latest_run_id(self) -> str | None:
        latest = self.path(LATEST)
        return self.read_text(latest).strip() if self.exists(latest) else None
