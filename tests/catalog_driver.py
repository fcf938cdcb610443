"""A test-only driver for tests/test_catalog.py: runs into one lake with a real embedded Hive/Derby
catalog, in a process of its own (the suite's shared session has no Hive support, and Spark reads the
catalog settings only when its JVM starts). What it sees goes to WORK/<phase>.json for the test.

python tests/catalog_driver.py first  WORK   # runs r1 and r2 with `segspark run` (its own session)
python tests/catalog_driver.py second WORK   # a plain session with the README's settings reads them,
                                             # runs r3, shows the history, fails runs on purpose, and
                                             # runs r3 again
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from segspark import catalog
from segspark.cli import main
from segspark.config import load_settings
from segspark.errors import OutputError
from segspark.history import read_history
from segspark.job import run
from segspark.lake import Lake
from segspark.manifest import Manifest

DATABASE = "segs"


class InjectedError(RuntimeError):
    """The failure a test step raises on purpose."""


STARTED = time.perf_counter()


def mark(what: str) -> None:
    """A progress line with the seconds since the driver started (stderr)."""
    print(f"[{time.perf_counter() - STARTED:6.1f}s] {what}", file=sys.stderr, flush=True)


def cli(*args: str) -> str:
    mark(f"segspark {args[0]}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    assert code == 0, f"segspark {' '.join(args)} exited {code}"
    return out.getvalue()


def segspark_run(work: Path, run_id: str, *overrides: str) -> str:
    """`segspark run` of the test's config on the customers of ``run_id``: its summary."""
    path = f"input.customers.path={work / run_id}.parquet"
    overrides = [part for o in (f"output.run_id={run_id}", path, *overrides) for part in ("--set", o)]
    return cli("run", "--config", str(work / "config.yaml"), *overrides)


def first(work: Path) -> dict:
    # r2 writes its files as csv: output.format governs the files, the tables keep the session's format
    return {
        "r1": segspark_run(work, "r1", "output.report=false"),
        "r2": segspark_run(work, "r2", "output.report=false", "output.format=csv"),
    }


def snapshot(spark) -> dict:
    """Everything a SQL user could see of the database: objects, columns, rows per run (with a
    checksum of their values), partitions, and the run each view shows."""
    names = sorted(row["tableName"] for row in spark.sql(f"SHOW TABLES IN {DATABASE}").collect())
    counts = " UNION ALL ".join(  # one Spark job for all of them
        f"SELECT '{name}' AS name, run_id, count(*) AS n, bit_xor(xxhash64(*)) AS checksum "
        f"FROM {DATABASE}.{name} GROUP BY run_id"
        for name in names
    )
    runs = spark.sql(counts).collect() if names else []
    seen: dict = {"objects": names}
    for name in names:
        full = f"{DATABASE}.{name}"
        seen[name] = {
            "columns": spark.table(full).columns,
            "runs": sorted([r["run_id"], r["n"], r["checksum"]] for r in runs if r["name"] == name),
        }
        if name.endswith(catalog.LATEST):
            properties = spark.sql(f"SHOW TBLPROPERTIES {full}").collect()
            seen[name]["shows"] = {r["key"]: r["value"] for r in properties}.get(catalog.VIEW_RUN)
        else:
            seen[name]["partitions"] = sorted(r[0] for r in spark.sql(f"SHOW PARTITIONS {full}").collect())
            described = spark.sql(f"DESCRIBE TABLE EXTENDED {full}").collect()
            seen[name]["provider"] = {r["col_name"]: r["data_type"] for r in described}.get("Provider")
    return seen


def databases(spark) -> list[str]:
    return sorted(row[0] for row in spark.sql("SHOW DATABASES").collect())


@contextlib.contextmanager
def recording(events: list[str]):
    """Note, in order, the run's verify step, each table write, each view's move and the publishing of
    its files (each once it is done)."""
    from segspark import job

    def noting(owner, name: str, label):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            result = real(*args, **kwargs)
            events.append(label(*args))
            return result

        setattr(owner, name, wrapper)
        return real

    reals = [
        (job, "verify", noting(job, "verify", lambda *a: "verify")),
        (
            catalog,
            "write_partition",
            noting(catalog, "write_partition", lambda s, table, *a: f"write {table}"),
        ),
        (catalog, "point_view", noting(catalog, "point_view", lambda s, view, *a: f"view {view}")),
        (Lake, "publish", noting(Lake, "publish", lambda *a: "publish files")),
    ]
    try:
        yield
    finally:
        for owner, name, real in reals:
            setattr(owner, name, real)


@contextlib.contextmanager
def failing(module, name: str, after: int):
    """``module.name`` raises InjectedError once, right after its ``after``-th call has done its work."""
    real, calls = getattr(module, name), []

    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(name)
        if len(calls) == after:
            raise InjectedError(f"injected after {name} #{after}")
        return result

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, real)


def failed_attempts(
    spark, lake: Lake, settings, run_id: str, points: list[tuple[str, int]], database: str = DATABASE
) -> dict:
    """Publish run r3's outputs again as run ``run_id`` into ``database``, failing at each point; what a
    SQL user sees after each (the databases, and the database's objects when it exists)."""
    staged = Path(lake.staging_dir(run_id))
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(Path(lake.run_dir("r3")), staged)
    # another start time: the rows differ from the ones they would replace (a re-run of r3)
    manifest = Manifest.model_validate(
        json.loads((staged / "manifest.json").read_text())
        | {"run_id": run_id, "started_at": "2030-01-01T00:00:00+00:00"}
    )
    output = settings.output.model_copy(
        update={"catalog": settings.output.catalog.model_copy(update={"database": database})}
    )
    seen = {}
    for name, after in points:
        label = f"{run_id}: after {name} #{after}"
        mark(label)
        try:
            if name == "publish":  # the files' publishing, the last step, fails
                with catalog.catalog_tables(spark, lake, output, manifest):
                    raise InjectedError("injected in publishing the files")
            with (
                failing(catalog, name, after),
                catalog.catalog_tables(spark, lake, output, manifest),
            ):
                pass
        except InjectedError:
            seen[label] = snapshot(spark) if database in databases(spark) else {"databases": databases(spark)}
        else:
            raise AssertionError(f"{label}: no failure")
    shutil.rmtree(staged)
    return seen


def second(work: Path) -> dict:
    from pyspark.sql import SparkSession

    folder = work / "lake" / "_catalog"
    spark = (  # exactly the settings the README gives for another session
        SparkSession.builder.master("local[2]")
        .enableHiveSupport()
        .config("spark.sql.warehouse.dir", f"{folder}/warehouse")
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={folder}")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    seen = {"before r3": snapshot(spark)}
    # this session's JVM has the catalog open now: a run in another process stops before its own JVM
    # starts, saying why (Derby lets one process at a time open it)
    seen["in use"] = catalog.catalog_in_use(str(folder / "metastore_db"))
    mark("a run while the catalog is open here")
    held = subprocess.run(
        [sys.executable, "-m", "segspark", "run", "--config", str(work / "config.yaml")],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")},  # not spark-submit
    )
    seen["held"] = {"code": held.returncode, "stdout": held.stdout, "stderr": held.stderr}
    seen["order r3"] = []
    with recording(seen["order r3"]):
        seen["summary r3"] = segspark_run(work, "r3")
    seen["after r3"] = snapshot(spark)
    spark.table(f"{DATABASE}.assignments_latest").toPandas().to_parquet(work / "assignments_latest.parquet")
    seen["history text"] = cli("history", "--lake", str(work / "lake"))
    report = work / "lake" / "runs" / "r3" / "report.html"
    written = report.read_text()
    cli("report", str(report.parent))
    seen["report rebuilt the same"] = report.read_text() == written
    lake = Lake(spark, str(work / "lake"))
    history = read_history(lake)
    seen["history"] = {
        "runs": history.run_ids,
        "shares": {run_id: row.dropna().to_dict() for run_id, row in history.shares().iterrows()},
        "moves": {s.run_id: {c.segment: c.centroid_move for c in s.changes} for s in history.steps},
        "stayed": {s.run_id: s.moves.stayed for s in history.steps},
        "changed": {s.run_id: s.moves.changed for s in history.steps},
        "new": {s.run_id: s.moves.new for s in history.steps},
        "gone": {s.run_id: s.moves.gone for s in history.steps},
        "flows": {s.run_id: s.moves.flows for s in history.steps},
    }
    seen["history text, 2 runs"] = cli("history", "--lake", str(work / "lake"), "--runs", "2")

    inputs = [f"input.customers.path={work / 'r3'}.parquet"]
    settings = load_settings(work / "config.yaml", inputs)
    # run r4 fails right after each table write and after each of the first two views moved ...
    points = [("write_partition", n) for n in (1, 2, 3, 4)] + [("point_view", n) for n in (1, 2)]
    seen["failed"] = failed_attempts(spark, lake, settings, "r4", points)

    # ... and, after the third, as the job publishes the run's files (quickly: one start per fit, no
    # rules, no report; it fails anyway)
    def disk_full(self, run_id):
        raise InjectedError(f"injected: the disk is full as run {run_id} publishes")

    real_publish, Lake.publish = Lake.publish, disk_full
    mark("r4 through the job")
    try:
        quick = ["output.run_id=r4", "model.restarts=1", "output.report=false", "segments.rule_depth=0"]
        run(load_settings(work / "config.yaml", [*inputs, *quick]), spark)
    except InjectedError:
        seen["after failed r4"] = snapshot(spark)
    finally:
        Lake.publish = real_publish
    seen["history text after failed r4"] = cli("history", "--lake", str(work / "lake"))
    # a re-run of r3 that fails as it publishes its files: the replaced partitions come back from copies
    seen["failed again"] = failed_attempts(spark, lake, settings, "r3", [("publish", 0)])
    seen["backups left"] = sorted(p.name for p in (work / "lake" / "_staging").glob("*.catalog"))

    # a table segspark did not make is refused before anything is written
    spark.sql("CREATE DATABASE IF NOT EXISTS other")
    spark.sql("CREATE TABLE IF NOT EXISTS other.profiles (segment INT) USING parquet")
    other = settings.output.model_copy(
        update={"catalog": settings.output.catalog.model_copy(update={"database": "other"})}
    )
    manifest = Manifest.model_validate(
        json.loads((Path(lake.run_dir("r3")) / "manifest.json").read_text()) | {"run_id": "r5"}
    )
    shutil.copytree(Path(lake.run_dir("r3")), Path(lake.staging_dir("r5")))
    try:
        with catalog.catalog_tables(spark, lake, other, manifest):
            pass
    except OutputError as exc:
        seen["refused"] = str(exc)
    seen["other"] = sorted(row["tableName"] for row in spark.sql("SHOW TABLES IN other").collect())

    # a first run into a database that does not exist yet fails after its first table write and as
    # it publishes its files: no database is left, nor a folder in the warehouse; then it succeeds
    seen["databases before fresh"] = databases(spark)
    points = [("write_partition", 1), ("publish", 0)]
    seen["fresh failed"] = failed_attempts(spark, lake, settings, "r6", points, database="fresh")
    seen["fresh folders"] = sorted(p.name for p in (work / "lake" / "_catalog" / "warehouse").iterdir())
    fresh = settings.output.model_copy(
        update={"catalog": settings.output.catalog.model_copy(update={"database": "fresh"})}
    )
    manifest = Manifest.model_validate(
        json.loads((Path(lake.run_dir("r3")) / "manifest.json").read_text()) | {"run_id": "r6"}
    )
    shutil.copytree(Path(lake.run_dir("r3")), Path(lake.staging_dir("r6")))
    with catalog.catalog_tables(spark, lake, fresh, manifest):
        pass
    seen["fresh"] = sorted(row["tableName"] for row in spark.sql("SHOW TABLES IN fresh").collect())

    # r3 runs again, successfully, on the customers of r1 and without rules, into another folder but
    # the same catalog (output.catalog.dir): its partitions replace those of the first r3, and the
    # rules table keeps no rows of the first r3
    mark("r3 again")
    rerun = [
        f"input.customers.path={work / 'r1'}.parquet",
        "output.run_id=r3",
        f"output.path={work / 'rerun'}",
        f"output.catalog.dir={work / 'lake' / '_catalog'}",
        "model.restarts=1",
        "output.report=false",
        "segments.rule_depth=0",
    ]
    seen["summary r3 again"] = cli(
        "run", "--config", str(work / "config.yaml"), *[part for o in rerun for part in ("--set", o)]
    )
    seen["after r3 again"] = snapshot(spark)
    spark.stop()
    return seen


if __name__ == "__main__":
    phase, work = sys.argv[1], Path(sys.argv[2])
    observed = {"first": first, "second": second}[phase](work)
    mark("done")
    (work / f"{phase}.json").write_text(json.dumps(observed, indent=1, default=str))
