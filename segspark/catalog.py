"""Catalog tables: every run's outputs as SQL tables, one partition per run, and views of the latest run.

With ``output.catalog: {database: NAME}`` a run also writes its assignments, profiles and k_metrics (and
rules, when it has them) as the partition ``run_id=<run id>`` of the tables ``NAME.<output>``, each row
with ``run_id`` and ``run_ts`` (when the run started, UTC), and points the views ``NAME.<output>_latest``
(assignments, profiles, k_metrics) at that partition. The rows come from the run's staged files after they
were verified; the tables use the session's default table format.

All or nothing (``catalog_tables``): every table and view is checked before the first write. Then the
database is created when missing, a missing table is created with the run's rows as its first partition,
an existing table's partition is written (the partition of an earlier run with the same id is copied
aside first; a re-run without rules drops the rules the id had), the views move, and last the run's
files are published.
Each step records how to undo itself first; when any later step fails, the undo steps run in reverse:
the views show the run they showed, the partitions written are dropped and a replaced one is restored
from its copy, the tables and the database this run created are dropped. Only a column this run added
to a table stays (empty for every other run): Spark cannot drop columns of these tables.

Local mode (no spark-submit, master ``local[...]``): the session gets Hive support with an embedded
Derby metastore and the warehouse under ``output.catalog.dir`` (``session_settings``), so the tables
outlive the session; Derby lets one JVM at a time open it, so a run checks first that no other process
has it open (``check_catalog_free``). Elsewhere the session's own catalog is used.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyspark.sql.functions as F
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import types as T

from segspark.config import CatalogSettings, OutputSettings, Settings, SparkSettings
from segspark.errors import ConfigError, OutputError
from segspark.lake import CSV_DEFAULTS, STAGING_DIR, Lake, first_line, ids_as_text
from segspark.manifest import Catalog, Manifest
from segspark.runtime import Runtime
from segspark.segments import OUTPUT_ID
from segspark.session import launched_by_spark_submit, local_cores
from segspark.validate import col

log = logging.getLogger(__name__)

TABLES = ("assignments", "profiles", "k_metrics", "rules")  # written when the run has the output
VIEWS = ("assignments", "profiles", "k_metrics")  # each with a view <name>_latest
RUN_ID, RUN_TS = "run_id", "run_ts"
LATEST = "_latest"
VIEW_RUN = "segspark.run_id"  # the view's property naming the run it shows
DEFAULT_DIR = "_catalog"  # under output.path
WAREHOUSE, METASTORE = "warehouse", "metastore_db"
DERBY_LOCK = "dbex.lck"  # in metastore_db: Derby holds a lock on it while a JVM has the database open
CONNECTION_URL = "spark.hadoop.javax.jdo.option.ConnectionURL"  # the Hive metastore's database
HELD = (  # what to do when another process has the embedded catalog open
    "is open in another process, and Derby lets one at a time open it: stop that Spark session (a "
    "pyspark shell or notebook, a Spark Connect server started on it, another run) and run again, or give "
    "this run another output.catalog.dir"
)
HIVE = "hive"
TEXT_FORMATS = ("csv", "json")  # output formats whose files keep no column types
PARTITION_SECTION = "# Partition Information"  # DESCRIBE TABLE: the partition columns follow
BACKUP_SUFFIX = ".catalog"  # _staging/<run_id>.catalog/<table>: a replaced partition, until the run is done


def catalog_dir(output: OutputSettings) -> str:
    """The embedded catalog's folder: ``output.catalog.dir``, by default ``<output.path>/_catalog``.

    >>> catalog_dir(OutputSettings(path="/lake/seg", catalog={"database": "segs"}))
    '/lake/seg/_catalog'
    """
    folder = output.catalog.dir or f"{output.path.rstrip('/')}/{DEFAULT_DIR}"
    local = re.sub(r"^file:(//)?", "", folder)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", local):
        key = "output.catalog.dir" if output.catalog.dir else "output.path"
        raise ConfigError(
            f"{key}: the embedded catalog of a local run keeps its metastore in a folder on this machine, "
            f"not at {folder}; set output.catalog.dir to a local folder"
        )
    return os.path.abspath(local)


def session_conf(settings: Settings) -> dict[str, str]:
    """What a new local session needs for the embedded catalog: Hive support, the warehouse in
    ``<dir>/warehouse`` and Derby's metastore in ``<dir>/metastore_db``. Empty without
    ``output.catalog``, under spark-submit, on a cluster and over Spark Connect, where the session's own
    catalog is used."""
    if (
        settings.output.catalog is None
        or settings.spark.remote_url()
        or launched_by_spark_submit()
        or local_cores(settings.spark.master) == 0
    ):
        return {}
    folder = catalog_dir(settings.output)
    return {
        "spark.sql.catalogImplementation": HIVE,
        "spark.sql.warehouse.dir": os.path.join(folder, WAREHOUSE),
        # the same database as a relative "metastore_db" under -Dderby.system.home=<dir> (see the README)
        CONNECTION_URL: f"jdbc:derby:;databaseName={os.path.join(folder, METASTORE)};create=true",
        # one attempt to open the metastore: Hive's default is 10, 2 s apart, each logging its stack
        # traces, and an embedded database that cannot open now will not open 2 s later
        "spark.hadoop.hive.hmshandler.retry.attempts": "1",
    }


def session_settings(settings: Settings) -> SparkSettings:
    """``settings.spark`` with ``session_conf`` added (entries of ``spark.conf`` win): the settings
    ``job.run`` builds its session from."""
    extra = session_conf(settings)
    if not extra:
        return settings.spark
    return settings.spark.model_copy(update={"conf": {**extra, **settings.spark.conf}})


def catalog_in_use(metastore: str) -> bool:
    """Whether a process has the embedded Derby database ``metastore`` (a ``metastore_db`` folder) open:
    Derby keeps an exclusive lock on its ``dbex.lck`` while it does. A process does not see its own
    lock, so ask before this process's JVM opens the catalog."""
    try:
        with open(os.path.join(metastore, DERBY_LOCK), "rb+") as lock:
            try:
                fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:  # EACCES or EAGAIN: another process holds it; else, Derby will tell
                return exc.errno in (errno.EACCES, errno.EAGAIN)
            fcntl.lockf(lock, fcntl.LOCK_UN)
    except OSError:  # no such file (never opened), or not ours to write: Derby will say what is wrong
        return False
    return False


def check_catalog_free(settings: Settings) -> None:
    """Before this process starts a local session with the embedded catalog: stop at once when another
    process (a pyspark shell or notebook on it, a Spark Connect server started on it, another run) has
    its metastore open (the one ``spark.conf`` names, if it names another). Without this check, Hive
    tries to open it, fails, and says only that it could not instantiate its metastore client, after a
    screenful of stack traces."""
    if not session_conf(settings) or SparkSession.getActiveSession() is not None:
        return
    url = session_settings(settings).effective_conf().get(CONNECTION_URL, "")
    embedded = re.match(r"jdbc:derby:;databaseName=([^;]+)", url)
    if embedded and catalog_in_use(embedded.group(1)):
        raise OutputError(f"output.catalog: the embedded catalog's metastore {embedded.group(1)} {HELD}")


def check_catalog(spark: SparkSession, output: OutputSettings) -> list[str]:
    """Before any work: the catalog opens (embedded Derby takes one JVM at a time). Returns sentences
    for the manifest's warnings when the session's catalog is not the one asked for."""
    if output.catalog is None:
        return []
    try:
        spark.catalog.databaseExists(output.catalog.database)
    except Exception as exc:
        # (pyspark 3.5 carries Derby's own words in the message; check_catalog_free saw it first otherwise)
        reason = f"it {HELD}" if "Another instance of Derby" in str(exc) else first_line(exc)
        raise OutputError(
            f"output.catalog: cannot open the catalog of {output.catalog.database}: {reason}"
        ) from None
    implementation = spark.conf.get("spark.sql.catalogImplementation", "in-memory")
    if implementation != HIVE:
        warnings = [
            f"output.catalog: this Spark session keeps its catalog in memory ({implementation}), so the "
            f"tables of {output.catalog.database} last only as long as the session; run segspark run "
            "(which sets up the embedded catalog) or give Spark a persistent catalog"
        ]
    elif Runtime(spark).local and not launched_by_spark_submit():
        wanted = os.path.join(catalog_dir(output), WAREHOUSE)
        actual = spark.conf.get("spark.sql.warehouse.dir", "")
        same = os.path.abspath(re.sub(r"^file:(//)?", "", actual)) == wanted
        warnings = (
            []
            if same
            else [
                f"output.catalog.dir: the Spark session was started before this run, with its warehouse at "
                f"{actual}; the tables go to that catalog, not to {wanted}"
            ]
        )
    else:
        warnings = []
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


def catalog_section(catalog: CatalogSettings, manifest: Manifest) -> Catalog:
    """The manifest's ``catalog``: the tables this run writes (those of its outputs), the views, run_ts."""
    database = catalog.database
    return Catalog(
        database=database,
        tables=[f"{database}.{name}" for name in TABLES if name in manifest.outputs],
        views=[f"{database}.{name}{LATEST}" for name in VIEWS],
        run_ts=manifest.started_at,
    )


@contextmanager
def catalog_tables(
    spark: SparkSession, lake: Lake, output: OutputSettings, manifest: Manifest
) -> Iterator[None]:
    """Write the run's partitions and move the views, then run the body (publishing the files); if
    anything fails, undo it all (see the module's docstring). Nothing happens without ``output.catalog``."""
    if output.catalog is None:
        yield
        return
    run_id, database = manifest.run_id, output.catalog.database
    staging = lake.staging_dir(run_id)
    rows = {
        name: _staged(spark, f"{staging}/{name}", output.format).withColumn(
            RUN_TS, F.lit(manifest.started_at).cast(T.TimestampType())
        )
        for name in TABLES
        if name in manifest.outputs
    }
    text = output.format in TEXT_FORMATS
    database_exists = spark.catalog.databaseExists(database)
    objects = _objects(spark, database) if database_exists else {}
    shapes = {name: _describe(spark, f"{database}.{name}") for name in TABLES if name in objects}
    for name in TABLES:  # a table of an output this run lacks loses the run id's rows of a re-run
        _check_table(f"{database}.{name}", shapes.get(name), rows.get(name), text)
    shown = {  # refuses a view segspark did not make
        name: _view_run(spark, f"{database}.{name}{LATEST}", objects.get(f"{name}{LATEST}")) for name in VIEWS
    }
    backups = lake.path(STAGING_DIR, f"{run_id}{BACKUP_SUFFIX}")
    lake.delete(backups)  # left by a killed attempt
    undo: list[tuple[str, Callable[[], None]]] = []
    try:
        if not database_exists:
            undo.append(
                (f"drop database {database}", lambda: spark.sql(f"DROP DATABASE {_quoted(database)}"))
            )
            spark.sql(f"CREATE DATABASE IF NOT EXISTS {_quoted(database)}")
        for name in TABLES:
            table, backup = f"{database}.{name}", f"{backups}/{name}"
            if name in rows:
                _replace_partition(spark, table, shapes.get(name), rows[name], run_id, backup, undo)
            elif name in shapes:
                _clear_partition(spark, table, run_id, backup, undo)
        for name in VIEWS:
            _move_view(spark, f"{database}.{name}", run_id, shown[name], undo)
        yield
    except BaseException:
        for what, action in reversed(undo):
            try:
                action()
            except Exception as exc:  # keep undoing; the original error is the one to raise
                log.error("catalog: could not %s: %s", what, first_line(exc))
        log.warning("catalog: run %s undone in %s; tables and views are as before", run_id, database)
        raise
    finally:
        try:
            lake.delete(backups)
        except Exception as exc:
            log.warning("catalog: could not remove %s: %s", backups, exc)
    log.info("catalog: run %s is in the tables of %s, and the %s views show it", run_id, database, LATEST)


@dataclass(frozen=True)
class Shape:
    """An existing table as ``DESCRIBE TABLE`` gives it: every column (partition columns too) in the
    table's order with its SQL type (``bigint``, ``array<double>``), and the partition columns."""

    columns: dict[str, str]
    partitions: list[str]


def _objects(spark: SparkSession, database: str) -> dict[str, str]:
    """The tables and views of an existing database, ``VIEW`` or ``TABLE`` by name: two calls to the
    metastore for all of them, where asking for each object (tableExists, getTable) takes one per object
    and question."""
    quoted = _identifier(database)
    views = {
        row["viewName"] for row in spark.sql(f"SHOW VIEWS IN {quoted}").collect() if not row["isTemporary"]
    }
    return {
        row["tableName"]: "VIEW" if row["tableName"] in views else "TABLE"
        for row in spark.sql(f"SHOW TABLES IN {quoted}").collect()
        if not row["isTemporary"]
    }


def _describe(spark: SparkSession, table: str) -> Shape:
    """One ``DESCRIBE TABLE``: the columns and their types, then, under ``# Partition Information`` and
    a ``# col_name`` header, the partition columns (a view has none)."""
    columns: dict[str, str] = {}
    partitions: list[str] = []
    in_partitions = False
    for name, data_type, _ in spark.sql(f"DESCRIBE TABLE {_quoted(table)}").collect():
        if name == PARTITION_SECTION:
            in_partitions = True
        elif in_partitions and name == "# col_name":
            continue
        elif not name or name.startswith("# "):  # another section (clustering, ...): not needed
            break
        elif in_partitions:
            partitions.append(name)
        else:
            columns[name] = data_type
    return Shape(columns, partitions)


def write_partition(
    spark: SparkSession, table: str, rows: DataFrame, run_id: str, create: bool = False
) -> None:
    """Replace the table's partition ``run_id`` with ``rows`` (in the table's column order); ``create``:
    make the table, with ``rows``' columns and this partition (one write, not an empty table first)."""
    if create:
        log.info("catalog: creating %s with partition run_id=%s", table, run_id)
        rows.withColumn(RUN_ID, F.lit(run_id)).write.partitionBy(RUN_ID).saveAsTable(table)
        return
    log.info("catalog: writing %s, partition run_id=%s", table, run_id)
    spark.sql(
        f"INSERT OVERWRITE TABLE {_quoted(table)} PARTITION ({RUN_ID} = {_literal(run_id)}) "
        "SELECT * FROM {rows}",
        rows=rows,
    )


def point_view(spark: SparkSession, view: str, table: str, run_id: str) -> None:
    """``view``: the rows of run ``run_id`` in ``table``; its property ``segspark.run_id`` names the run."""
    spark.sql(
        f"CREATE OR REPLACE VIEW {_quoted(view)} TBLPROPERTIES ('{VIEW_RUN}' = {_literal(run_id)}) "
        f"AS SELECT * FROM {_quoted(table)} WHERE {RUN_ID} = {_literal(run_id)}"
    )


def _replace_partition(
    spark: SparkSession,
    table: str,
    shape: Shape | None,
    frame: DataFrame,
    run_id: str,
    backup: str,
    undo: list,
) -> None:
    """Write ``frame`` as the table's partition ``run_id``, creating the table (``shape`` None) or adding
    columns first; ``undo`` gets how to take it back (drop the table or the partition, or restore a
    replaced one)."""
    if shape is None:
        undo.append((f"drop table {table}", lambda: spark.sql(f"DROP TABLE IF EXISTS {_quoted(table)}")))
        write_partition(spark, table, frame, run_id, create=True)
        return
    new = [f for f in frame.schema.fields if f.name not in shape.columns]
    if new:  # a column this run has and earlier runs had not: NULL for them
        added = ", ".join(f"{_identifier(f.name)} {f.dataType.simpleString()}" for f in new)
        spark.sql(f"ALTER TABLE {_quoted(table)} ADD COLUMNS ({added})")
        shape = _describe(spark, table)
    if not _set_aside(spark, table, run_id, backup, undo):
        undo.append(
            (f"drop partition run_id={run_id} of {table}", lambda: _drop_partition(spark, table, run_id))
        )
    write_partition(spark, table, _aligned(frame, shape), run_id)


def _clear_partition(spark: SparkSession, table: str, run_id: str, backup: str, undo: list) -> None:
    """A re-run without this output (rules, with ``segments.rule_depth: 0``): the rows the run id had
    there go, so the table holds no rows of the earlier run under this run's id; ``undo`` puts them back."""
    if _set_aside(spark, table, run_id, backup, undo):
        log.info("catalog: this run has no %s; dropping partition run_id=%s", table, run_id)
        _drop_partition(spark, table, run_id)


def _set_aside(spark: SparkSession, table: str, run_id: str, backup: str, undo: list) -> bool:
    """A re-run: copy the rows the table holds for ``run_id`` to ``backup`` until the run is done, and
    give ``undo`` how to write them back. False when the table has no partition ``run_id``."""
    if not _has_partition(spark, table, run_id):
        return False
    earlier = _run_rows(spark, table, run_id).drop(RUN_ID)
    earlier.write.mode("overwrite").parquet(backup)

    def restore() -> None:
        write_partition(spark, table, _aligned(spark.read.parquet(backup), _describe(spark, table)), run_id)

    undo.append((f"restore partition run_id={run_id} of {table}", restore))
    return True


def _has_partition(spark: SparkSession, table: str, run_id: str) -> bool:
    """Whether the table has a partition ``run_id``: a question to the metastore, not a Spark job (a new
    run id has none; run ids are unique but for a re-run)."""
    try:
        query = f"SHOW PARTITIONS {_quoted(table)} PARTITION ({RUN_ID} = {_literal(run_id)})"
        return bool(spark.sql(query).collect())
    except Exception:  # table formats without Hive-style partitions (Delta, Iceberg): look for a row
        return bool(_run_rows(spark, table, run_id).limit(1).collect())


def _run_rows(spark: SparkSession, table: str, run_id: str) -> DataFrame:
    """The table's rows of run ``run_id`` (with their ``run_id``)."""
    return spark.table(table).filter(F.col(RUN_ID) == F.lit(run_id))


def _move_view(spark: SparkSession, table: str, run_id: str, shown: str | None, undo: list) -> None:
    """Point ``<table>_latest`` at ``run_id``; ``shown``: the run it showed (None: no such view yet)."""
    view = f"{table}{LATEST}"
    if shown is None:
        undo.append((f"drop view {view}", lambda: spark.sql(f"DROP VIEW IF EXISTS {_quoted(view)}")))
    else:
        undo.append((f"point {view} back at run {shown}", lambda: point_view(spark, view, table, shown)))
    point_view(spark, view, table, run_id)


def _view_run(spark: SparkSession, view: str, kind: str | None) -> str | None:
    """The run a ``_latest`` view shows (``kind`` None: no such view yet, else ``VIEW`` or ``TABLE`` as
    ``_objects`` gives it); refuses anything segspark did not make."""
    if kind is None:
        return None
    properties = (
        {row["key"]: row["value"] for row in spark.sql(f"SHOW TBLPROPERTIES {_quoted(view)}").collect()}
        if kind == "VIEW"
        else {}
    )
    if VIEW_RUN not in properties:
        raise OutputError(
            f"output.catalog: {view} exists and was not made by segspark; rename or drop it, or choose "
            "another output.catalog.database"
        )
    return properties[VIEW_RUN]


def _check_table(table: str, shape: Shape | None, frame: DataFrame | None, text: bool = False) -> None:
    """An existing table (``shape``; None: no such table) must be partitioned by run_id and hold this
    run's columns (``frame``; None: the run has no such output) in types that fit. ``text``: the run's
    files are csv or json, whose types Spark guessed from the values (a number column of whole numbers
    reads as bigint from json), so a column of another type fits when every value of it converts to the
    table's type."""
    if shape is None:
        return
    if shape.partitions != [RUN_ID]:
        raise OutputError(
            f"output.catalog: table {table} exists but is not partitioned by {RUN_ID} alone, so segspark did "
            "not make it; rename or drop it, or choose another output.catalog.database"
        )
    if frame is None:
        return
    types = shape.columns
    unfit = [f for f in frame.schema.fields if f.name in types and not _fits(f.dataType, types[f.name])]
    if unfit and text:
        lost = frame.agg(  # values that do not convert (try_cast: NULL instead of an error under ANSI)
            *[
                F.count(F.when(col(f.name).isNotNull() & _try_cast(f.name, types[f.name]).isNull(), 1))
                for f in unfit
            ]
        ).first()
        unfit = [f for f, n in zip(unfit, lost, strict=True) if n]
    clashes = [
        f"{f.name} is {types[f.name]} there and {f.dataType.simpleString()} in this run" for f in unfit
    ]
    if clashes:
        raise OutputError(
            f"output.catalog: this run's rows do not fit table {table}: {'; '.join(clashes)}. Write to "
            "another output.catalog.database, or drop the table to start it afresh"
        )


def _fits(new: T.DataType, old: str) -> bool:
    """A value of type ``new`` can go into a column of SQL type ``old`` without loss.

    >>> _fits(T.IntegerType(), "bigint"), _fits(T.LongType(), "double")
    (True, True)
    >>> _fits(T.StringType(), "bigint"), _fits(T.DoubleType(), "bigint")
    (False, False)
    """
    if new.simpleString() == old:
        return True
    if old == "double":
        return isinstance(new, T.NumericType)
    return old == "bigint" and isinstance(new, T.IntegralType)


def _aligned(frame: DataFrame, shape: Shape) -> DataFrame:
    """``frame`` in the table's column order (run_id aside): cast to the table's types, NULL where absent.
    One SQL select list, not a Column per field: each of those is a call into the JVM."""
    present = {f.name: f.dataType.simpleString() for f in frame.schema.fields}

    def aligned(name: str, to: str) -> str:
        if present.get(name) == to:
            return _identifier(name)
        value = _identifier(name) if name in present else "NULL"
        return f"CAST({value} AS {to}) AS {_identifier(name)}"

    return frame.selectExpr(*[aligned(name, to) for name, to in shape.columns.items() if name != RUN_ID])


def _drop_partition(spark: SparkSession, table: str, run_id: str) -> None:
    try:
        spark.sql(f"ALTER TABLE {_quoted(table)} DROP IF EXISTS PARTITION ({RUN_ID} = {_literal(run_id)})")
    except Exception:  # table formats without Hive-style partitions (Delta, Iceberg) delete rows instead
        spark.sql(f"DELETE FROM {_quoted(table)} WHERE {RUN_ID} = {_literal(run_id)}")


def _staged(spark: SparkSession, path: str, fmt: str) -> DataFrame:
    """A staged output as written; from csv and json the customer id is read as text, as it was written,
    and a column without a single value is left out (see ``_without_empty_columns``)."""
    reader = spark.read.format(fmt).options(**(CSV_DEFAULTS if fmt == "csv" else {}))
    frame = reader.load(path)
    if fmt in TEXT_FORMATS:
        frame = _without_empty_columns(reader.schema(ids_as_text(frame.schema, (OUTPUT_ID,))).load(path))
    return frame


def _without_empty_columns(frame: DataFrame) -> DataFrame:
    """Read from csv, a column without a value (``gap`` when k was not chosen by the gap statistic) is
    text whatever it held, and json leaves it out: it says nothing of the column's type. Left out, it is
    NULL in the run's rows like any column a run lacks, and the table keeps (or gets from the next run
    that has values) the column's real type, not text."""
    strings = [f.name for f in frame.schema.fields if isinstance(f.dataType, T.StringType)]
    if not strings:
        return frame
    counts = frame.agg(*[F.count(col(name)) for name in strings]).first()
    empty = {name for name, n in zip(strings, counts, strict=True) if n == 0}
    return frame.select(*[col(name) for name in frame.columns if name not in empty]) if empty else frame


def _try_cast(name: str, to: str) -> Column:
    """``try_cast`` of a column to a SQL type (a method of Column only from Spark 4.0; the SQL function in
    3.5 too)."""
    return F.expr(f"try_cast({_identifier(name)} AS {to})")


def _identifier(name: str) -> str:
    """A column name in backticks: ``spend.score_mean`` is one name, not a field of a struct."""
    return "`" + name.replace("`", "``") + "`"


def _quoted(name: str) -> str:
    """``db.table`` (database names have no dots of their own, see config.DATABASE_PATTERN).

    >>> _quoted("segs.k_metrics")
    '`segs`.`k_metrics`'
    """
    return ".".join(_identifier(part) for part in name.split("."))


def _literal(text: str) -> str:
    """A SQL string literal (run ids are letters, digits, '_', '.' and '-' anyway).

    >>> _literal("20261128T091235Z-3ba4c9")
    "'20261128T091235Z-3ba4c9'"
    """
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
