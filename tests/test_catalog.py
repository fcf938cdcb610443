"""Catalog tables, latest views, history and drift: three runs into one lake with shifting customers
(one segment grows, one drifts), with a real embedded Hive/Derby catalog.

The runs happen in two driver processes (tests/catalog_driver.py): the first runs r1 and r2 (r2 with
csv files) with `segspark run`, which sets up the embedded catalog; the second starts a plain pyspark
session with the settings the README gives, reads what the first wrote, runs r3, fails runs on purpose
at every step after the first table write (into the database and into a new one), and last runs r3
again. Expected values come from pandas on the runs' written files, or by hand.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from segspark import catalog
from segspark.catalog import session_conf, session_settings
from segspark.config import settings_from_dict
from segspark.errors import ConfigError, OutputError
from segspark.generate import ARCHETYPES, BOUNDS, FEATURES, ROUNDING
from tests.conftest import REPO

RUNS = ["r1", "r2", "r3"]
COUNTS = [600, 400, 400, 300, 300]  # customers per archetype in r1 (generate.ARCHETYPES order)
MAINSTREAM, AFFLUENT, YOUNG, CAREFUL = 0, 1, 2, 3
GROWTH = 250  # r2: this many more young impulse buyers (20.0% -> 28.9% of the customers)
AGE_SHIFT = 12  # r3: the careful high earners are this many years older (about 1 sd of age)
MOVERS = 50  # r3: mainstream customers who now look affluent (a 2.2-point shift each way)
TABLES = ["assignments", "k_metrics", "profiles", "rules"]
VIEWS = ["assignments_latest", "k_metrics_latest", "profiles_latest"]


def _draw(rng: np.random.Generator, archetype: int, n: int) -> pd.DataFrame:
    spec = ARCHETYPES[archetype]
    frame = pd.DataFrame({f: rng.normal(spec.mean[f], spec.std[f], n) for f in FEATURES})
    for f in FEATURES:
        low, high = BOUNDS[f]
        frame[f] = frame[f].clip(low, high).round(ROUNDING[f])
    return frame.assign(true_segment=archetype)


def shifting_customers(seed: int = 5) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    r1 = pd.concat([_draw(rng, a, n) for a, n in enumerate(COUNTS)], ignore_index=True)
    r2 = pd.concat([r1, _draw(rng, YOUNG, GROWTH)], ignore_index=True)
    r2.insert(0, "customer_id", [f"C{i:05d}" for i in range(1, len(r2) + 1)])
    r1 = r2.head(len(r1))
    r3 = r2.copy()
    careful = r3["true_segment"] == CAREFUL
    r3.loc[careful, "age"] = (r3.loc[careful, "age"] + AGE_SHIFT).clip(*BOUNDS["age"])
    movers = r3.index[r3["true_segment"] == MAINSTREAM][:MOVERS]
    r3.loc[movers, FEATURES] = _draw(rng, AFFLUENT, MOVERS)[FEATURES].to_numpy()
    r3.loc[movers, "true_segment"] = AFFLUENT
    return {"r1": r1, "r2": r2, "r3": r3}


@dataclass
class Lake:
    work: Path
    inputs: dict[str, pd.DataFrame]
    first: dict
    second: dict

    def run_dir(self, run_id: str) -> Path:
        return self.work / "lake" / "runs" / run_id

    def read(self, run_id: str, name: str, lake: str = "lake") -> pd.DataFrame:
        """An output of a run, from its files (parquet, or csv as r2 writes them)."""
        folder = self.work / lake / "runs" / run_id / name
        if json.loads((folder.parent / "manifest.json").read_text())["settings"]["output"]["format"] == "csv":
            parts = sorted(folder.glob("part-*.csv"))
            frames = [pd.read_csv(p, dtype={"customer_id": str}) for p in parts]
            return pd.concat([f for f in frames if len(f)], ignore_index=True)  # some parts: a header only
        return pd.read_parquet(folder)

    def manifest(self, run_id: str) -> dict:
        return json.loads((self.run_dir(run_id) / "manifest.json").read_text())


def _driver(phase: str, work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "catalog_driver.py"), phase, str(work)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,  # a phase takes a few minutes, several times that on a busy machine
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    (work / f"{phase}.log").write_text(result.stderr)
    return json.loads((work / f"{phase}.json").read_text())


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    work = tmp_path_factory.mktemp("catalog")
    inputs = shifting_customers()
    for run_id, frame in inputs.items():
        frame.drop(columns="true_segment").to_parquet(work / f"{run_id}.parquet", index=False)
    config = {
        "spark": {
            "master": "local[2]",
            "conf": {"spark.ui.enabled": False, "spark.sql.shuffle.partitions": 2},
        },
        "input": {"customers": {"path": str(work / "r1.parquet")}},
        "model": {"k": 5, "seed": 42},
        "segments": {"drift": {"share": 0.05, "centroid": 0.5}},
        "output": {"path": str(work / "lake"), "catalog": {"database": "segs"}},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    return Lake(work, inputs, _driver("first", work), _driver("second", work))


def _segment_of(lake: Lake, run_id: str, archetype: int) -> int:
    """The segment most customers of a generated archetype were assigned to."""
    joined = lake.inputs[run_id].merge(lake.read(run_id, "assignments"), on="customer_id")
    return int(joined.loc[joined["true_segment"] == archetype, "segment"].mode()[0])


def _rows(lake: Lake, name: str) -> list[list]:
    """Rows per run of an output, from its files: [[run_id, rows], ...]."""
    return [[run_id, len(lake.read(run_id, name))] for run_id in RUNS]


@pytest.mark.slow
def test_tables_hold_each_run_as_a_partition_with_its_rows(lake):
    after = lake.second["after r3"]
    assert after["objects"] == sorted(TABLES + VIEWS)
    for name in TABLES:
        assert after[name]["partitions"] == [f"run_id={r}" for r in RUNS], name
        assert [run[:2] for run in after[name]["runs"]] == _rows(lake, name), name
        assert after[name]["columns"][-2:] == ["run_ts", "run_id"], name
        # r2 wrote its files as csv (output.format); the tables keep the session's default format
        assert after[name]["provider"] == "parquet", name
        assert list((lake.run_dir("r2") / name).glob("part-*.csv")), name
    assert _rows(lake, "assignments") == [["r1", 2000], ["r2", 2250], ["r3", 2250]]


@pytest.mark.slow
def test_tables_are_written_after_the_files_are_verified_and_the_views_move_last(lake):
    assert lake.second["order r3"] == [
        "verify",
        *[f"write segs.{name}" for name in ("assignments", "profiles", "k_metrics", "rules")],
        *[f"view segs.{name}" for name in ("assignments_latest", "profiles_latest", "k_metrics_latest")],
        "publish files",
    ]


@pytest.mark.slow
def test_a_rerun_of_a_run_id_replaces_its_partitions(lake):
    """r3 again, on r1's customers and without rules: its rows replace the first r3's everywhere."""
    before, after = lake.second["after r3"], lake.second["after r3 again"]
    assert after["objects"] == before["objects"]
    for name in ("assignments", "profiles", "k_metrics"):
        assert after[name]["partitions"] == [f"run_id={r}" for r in RUNS], name
        again = len(lake.read("r3", name, lake="rerun"))
        assert [run[:2] for run in after[name]["runs"]][2] == ["r3", again], name
        assert after[name]["runs"][:2] == before[name]["runs"][:2], name  # r1 and r2 as they were
        assert after[f"{name}_latest"]["runs"] == after[name]["runs"][2:], name
    assert len(lake.read("r3", "assignments", lake="rerun")) == 2000
    assert after["rules"]["partitions"] == ["run_id=r1", "run_id=r2"]  # the first r3's rules are gone
    assert after["rules"]["runs"] == before["rules"]["runs"][:2]


@pytest.mark.slow
def test_another_session_with_the_readme_settings_reads_the_first_two_runs(lake):
    before = lake.second["before r3"]  # a plain pyspark session, started after `segspark run` twice
    assert before["assignments"]["partitions"] == ["run_id=r1", "run_id=r2"]
    assert [run[:2] for run in before["assignments"]["runs"]] == [["r1", 2000], ["r2", 2250]]
    assert {before[view]["shows"] for view in VIEWS} == {"r2"}
    assert "catalog: partition run_id=r2 of segs.assignments, segs.profiles" in lake.first["r2"]


@pytest.mark.slow
def test_latest_views_show_the_third_run(lake):
    after = lake.second["after r3"]
    for view in VIEWS:
        table = view.removesuffix("_latest")
        assert after[view]["shows"] == "r3"
        assert after[view]["runs"] == [run for run in after[table]["runs"] if run[0] == "r3"], view
    latest = pd.read_parquet(lake.work / "assignments_latest.parquet").sort_values("customer_id")
    files = lake.read("r3", "assignments").sort_values("customer_id")
    pd.testing.assert_frame_equal(
        latest[files.columns].reset_index(drop=True), files.reset_index(drop=True), check_dtype=False
    )
    started = pd.Timestamp(lake.manifest("r3")["started_at"]).tz_convert(None)
    assert (latest["run_ts"] == started).all() and (latest["run_id"] == "r3").all()


def _shares(lake: Lake, run_id: str) -> pd.Series:
    """Each segment's share of the run's assigned customers."""
    return lake.read(run_id, "assignments")["segment"].value_counts(normalize=True)


def _moves(lake: Lake, before: str, after: str) -> pd.Series:
    """How far each segment's centre moved: the profiles' <feature>_centroid, in standard deviations of
    the later run's input, Euclidean."""
    std = lake.inputs[after][FEATURES].std(ddof=1).to_numpy()
    old, new = (
        lake.read(r, "profiles").set_index("segment")[[f"{f}_centroid" for f in FEATURES]]
        for r in (before, after)
    )
    return np.sqrt((((new - old) / std) ** 2).sum(axis=1))


@pytest.mark.slow
def test_history_equals_pandas_on_the_runs_outputs(lake):
    history = lake.second["history"]
    assert history["runs"] == RUNS
    for run_id in RUNS:
        actual = {int(s): v for s, v in history["shares"][run_id].items()}
        assert actual == pytest.approx(_shares(lake, run_id).to_dict(), abs=1e-12), run_id
    for before, after in zip(RUNS, RUNS[1:], strict=False):
        actual = {int(s): v for s, v in history["moves"][after].items()}
        assert actual == pytest.approx(_moves(lake, before, after).to_dict(), rel=1e-9, abs=1e-12), after
        both = lake.read(before, "assignments").merge(
            lake.read(after, "assignments"), on="customer_id", how="outer", suffixes=("_0", "_1")
        )
        present = both["segment_0"].notna() & both["segment_1"].notna()
        assert history["stayed"][after] == (present & (both["segment_0"] == both["segment_1"])).sum()
        assert history["changed"][after] == (present & (both["segment_0"] != both["segment_1"])).sum()
        assert history["new"][after] == both["segment_0"].isna().sum()
        assert history["gone"][after] == both["segment_1"].isna().sum()
        changed = both[present & (both["segment_0"] != both["segment_1"])]
        flows = changed.groupby(["segment_0", "segment_1"]).size().reset_index(name="n")
        flows = flows.sort_values(["n", "segment_0", "segment_1"], ascending=[False, True, True]).head(3)
        assert [tuple(f) for f in history["flows"][after]] == [
            (int(a), int(b), int(n)) for a, b, n in flows.itertuples(index=False)
        ], after
    assert history["new"]["r2"] == GROWTH and history["changed"]["r3"] >= MOVERS
    assert history["gone"] == {"r2": 0, "r3": 0}


def _drifted(lake: Lake, run_id: str) -> set[int]:
    """Segments named by the run's drift warnings (manifest)."""
    warnings = [w for w in lake.manifest(run_id)["warnings"] if w.startswith("drift:")]
    return {int(re.search(r"segment (\d+) \(", w).group(1)) for w in warnings}


@pytest.mark.slow
def test_drift_warnings_fire_exactly_for_the_segment_that_grew_and_the_one_that_moved(lake):
    expected = {}
    for before, after in zip(RUNS, RUNS[1:], strict=False):
        shares, moves = _shares(lake, after) - _shares(lake, before), _moves(lake, before, after)
        expected[after] = set(shares.index[shares.abs() > 0.05]) | set(moves.index[moves > 0.5])
    assert expected == {"r2": {_segment_of(lake, "r2", YOUNG)}, "r3": {_segment_of(lake, "r3", CAREFUL)}}
    assert _drifted(lake, "r1") == set()
    assert {run_id: _drifted(lake, run_id) for run_id in ("r2", "r3")} == expected
    summary = lake.second["summary r3"]
    assert f"! drift: the centre of segment {_segment_of(lake, 'r3', CAREFUL)} (" in summary
    assert "(most in age: +" in summary
    assert f"! drift: segment {_segment_of(lake, 'r2', YOUNG)} (" in lake.first["r2"]  # the summary of r2
    assert "grew from 20.0% to 28.9% of the customers since run r1" in lake.first["r2"]


@pytest.mark.slow
def test_a_failed_run_at_any_step_leaves_tables_and_views_as_they_were(lake):
    after = lake.second["after r3"]
    for attempts in (lake.second["failed"], lake.second["failed again"]):
        for label, seen in attempts.items():
            assert seen == after, label
    # r4 fails after each of the 4 table writes and the first 2 views' moves, then (the job's run) in
    # publishing the files after the third; a re-run of r3 fails there too
    assert len(lake.second["failed"]) == 4 + 2 and len(lake.second["failed again"]) == 1
    assert lake.second["backups left"] == []  # the copies of replaced partitions are gone
    assert lake.second["after failed r4"] == after
    assert lake.second["history text after failed r4"] == lake.second["history text"]
    assert (lake.work / "lake" / "latest").read_text().strip() == "r3"
    assert sorted(p.name for p in (lake.work / "lake" / "runs").iterdir()) == RUNS
    failed = json.loads((lake.work / "lake" / "_staging" / "r4" / "manifest.json").read_text())
    assert failed["status"] == "failed" and "disk is full" in failed["error"]


@pytest.mark.slow
def test_a_failed_first_run_into_a_new_database_leaves_no_database(lake):
    before = lake.second["databases before fresh"]
    assert "fresh" not in before
    for label, seen in lake.second["fresh failed"].items():
        assert seen == {"databases": before}, label
    assert len(lake.second["fresh failed"]) == 2
    assert "fresh.db" not in lake.second["fresh folders"]  # and no folder left in the warehouse ...
    assert lake.second["fresh"] == sorted(TABLES + VIEWS)  # ... to stop the same run succeeding after


@pytest.mark.slow
def test_a_table_segspark_did_not_make_is_refused_before_any_write(lake):
    assert "other.profiles exists but is not partitioned by run_id" in lake.second["refused"]
    assert lake.second["other"] == ["profiles"]  # no assignments table was created first


@pytest.mark.slow
def test_a_run_stops_at_once_while_another_process_has_the_catalog_open(lake):
    metastore = lake.work / "lake" / "_catalog" / "metastore_db"
    assert lake.second["in use"]  # the driver's JVM had it open: another process than the driver's Python
    held = lake.second["held"]
    assert held["code"] == 4 and held["stdout"] == ""
    # one line, before a JVM started (no Spark log line, no Hive or Derby stack trace)
    assert held["stderr"].splitlines() == [
        f"segspark: error: output.catalog: the embedded catalog's metastore {metastore} is open in another "
        "process, and Derby lets one at a time open it: stop that Spark session (a pyspark shell or "
        "notebook, a Spark Connect server started on it, another run) and run again, or give this run "
        "another output.catalog.dir"
    ]
    assert not catalog.catalog_in_use(str(metastore))  # the drivers have ended: nobody has it open
    assert (metastore / catalog.DERBY_LOCK).exists()  # ... though Derby's lock file stays


@pytest.mark.slow
def test_history_command_and_report_show_the_segments_over_time(lake):
    text = lake.second["history text"]
    careful, young = _segment_of(lake, "r3", CAREFUL), _segment_of(lake, "r2", YOUNG)
    assert "segments over the last 3 runs of" in text
    assert re.search(rf"\n  r1 -> r2: [\d,]+ stayed, \d+ changed segment.*, {GROWTH} new, 0 gone\n", text)
    assert f"! r2: segment {young} (" in text and f"! r3: the centre of segment {careful} (" in text
    two = lake.second["history text, 2 runs"]  # --runs 2: the last two
    assert "segments over the last 2 runs of" in two and "\n  r1 " not in two and "\n  r2 -> r3: " in two
    report = (lake.run_dir("r3") / "report.html").read_text()
    assert "<h2>Segments over time</h2>" in report
    assert lake.second["report rebuilt the same"]  # `segspark report` reads the same runs as the run did
    assert f"run r3: the centre of segment {careful} (" in report
    assert f"drift: the centre of segment {careful} (" in report  # among the warnings of its summary
    assert f"run r2: segment {young} (" in report and "grew from 20.0% to 28.9%" in report


def _settings(**output) -> object:
    return settings_from_dict({"input": {"customers": {"path": "x"}}, "output": output})


def test_a_local_run_gets_the_embedded_catalog_under_the_lake(tmp_path):
    settings = _settings(path=str(tmp_path / "lake"), catalog={"database": "segs"})
    assert session_conf(settings) == {
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": f"{tmp_path}/lake/_catalog/warehouse",
        "spark.hadoop.javax.jdo.option.ConnectionURL": (
            f"jdbc:derby:;databaseName={tmp_path}/lake/_catalog/metastore_db;create=true"
        ),
        "spark.hadoop.hive.hmshandler.retry.attempts": "1",
    }
    mine = settings.model_copy(
        update={"spark": settings.spark.model_copy(update={"conf": {"spark.sql.warehouse.dir": "/w"}})}
    )
    assert session_settings(mine).effective_conf()["spark.sql.warehouse.dir"] == "/w"  # spark.conf wins


def test_the_sessions_own_catalog_is_used_on_a_cluster_under_spark_submit_and_without_catalog(monkeypatch):
    assert session_conf(_settings(catalog={"database": "segs", "dir": "/c"}))  # local[*]: the embedded one
    assert session_conf(_settings()) == {}
    on_cluster = settings_from_dict(
        {
            "input": {"customers": {"path": "x"}},
            "spark": {"master": "yarn"},
            "output": {"catalog": {"database": "s"}},
        }
    )
    assert session_conf(on_cluster) == {}
    over_connect = settings_from_dict(
        {
            "input": {"customers": {"path": "x"}},
            "spark": {"remote": "sc://localhost:15002"},
            "output": {"catalog": {"database": "s", "dir": "/c"}},
        }
    )
    assert session_conf(over_connect) == {}
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "12345")  # what spark-submit hands its Python driver
    assert session_conf(_settings(catalog={"database": "segs"})) == {}


def test_a_catalog_nobody_has_opened_is_not_in_use(tmp_path):
    assert not catalog.catalog_in_use(str(tmp_path / "never" / "metastore_db"))  # not there at all
    (tmp_path / "metastore_db").mkdir()
    (tmp_path / "metastore_db" / catalog.DERBY_LOCK).write_bytes(b"")  # left by a JVM that ended
    assert not catalog.catalog_in_use(str(tmp_path / "metastore_db"))


def test_the_metastore_checked_is_the_one_the_session_would_open(tmp_path, monkeypatch):
    """spark.conf may name another metastore than <dir>/metastore_db: that one is checked."""
    mine, other = tmp_path / "lake" / "_catalog" / "metastore_db", tmp_path / "elsewhere" / "metastore_db"
    for folder in (mine, other):
        folder.mkdir(parents=True)
        (folder / catalog.DERBY_LOCK).write_bytes(b"")
    holder = subprocess.Popen(  # another process holding the lock as Derby does (fcntl, whole file)
        [sys.executable, "-c", HOLD_LOCK, str(other / catalog.DERBY_LOCK)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "held\n"
        monkeypatch.setattr(catalog.SparkSession, "getActiveSession", staticmethod(lambda: None))  # a CLI run
        catalog.check_catalog_free(_settings(path=str(tmp_path / "lake"), catalog={"database": "segs"}))
        url = f"jdbc:derby:;databaseName={other};create=true"
        elsewhere = settings_from_dict(
            {
                "input": {"customers": {"path": "x"}},
                "spark": {"conf": {catalog.CONNECTION_URL: url}},
                "output": {"path": str(tmp_path / "lake"), "catalog": {"database": "segs"}},
            }
        )
        refused = f"^output.catalog: the embedded catalog's metastore {other} is open in another process"
        with pytest.raises(OutputError, match=refused):
            catalog.check_catalog_free(elsewhere)
    finally:
        holder.kill()
        holder.wait()
    catalog.check_catalog_free(elsewhere)  # its holder has ended


HOLD_LOCK = """
import fcntl, sys, time
lock = open(sys.argv[1], "rb+")
fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("held", flush=True)
time.sleep(600)
"""


def test_an_embedded_catalog_in_an_object_store_is_refused_with_the_key_to_set():
    with pytest.raises(ConfigError, match=r"^output\.path: the embedded catalog .* set output\.catalog\.dir"):
        session_conf(_settings(path="s3a://bucket/seg", catalog={"database": "segs"}))
    local = _settings(path="s3a://bucket/seg", catalog={"database": "segs", "dir": "file:/tmp/cat"})
    assert session_conf(local)["spark.sql.warehouse.dir"] == "/tmp/cat/warehouse"


def test_csv_and_json_files_go_into_the_tables_by_their_values_not_by_guessed_types(spark, tmp_path):
    """Spark guesses the types of csv and json files from their values: a column without a value reads
    as text from csv, whole numbers as bigint from json. They still go into a table a parquet run made."""
    spark.sql("CREATE DATABASE IF NOT EXISTS textual")
    table = "textual.k_metrics"
    made = "k int, silhouette double, gap double, run_id string"  # as a parquet run made it
    spark.createDataFrame([(2, 0.5, None, "r1")], made).write.partitionBy("run_id").saveAsTable(table)
    written = "k int, silhouette double, gap double"
    as_csv, as_json, bad = (str(tmp_path / name) for name in ("csv", "json", "bad"))
    spark.createDataFrame([(3, 0.7, None)], written).write.option("header", "true").csv(as_csv)
    spark.createDataFrame([(4, 0.6, None)], written).write.json(as_json)
    spark.createDataFrame([("x", 0.6)], "k string, silhouette double").write.option("header", "true").csv(bad)

    shape = catalog._describe(spark, table)
    assert shape == catalog.Shape(
        {"k": "int", "silhouette": "double", "gap": "double", "run_id": "string"}, ["run_id"]
    )
    from_csv = catalog._staged(spark, as_csv, "csv")
    assert from_csv.columns == ["k", "silhouette"]  # gap, without a value, has no type to give the table
    catalog._check_table(table, shape, from_csv, text=True)
    from_json = catalog._staged(spark, as_json, "json")
    assert from_json.dtypes == [("k", "bigint"), ("silhouette", "double")]
    catalog._check_table(table, shape, from_json, text=True)  # 4 is an int
    with pytest.raises(OutputError, match="k is int there and bigint in this run"):
        catalog._check_table(table, shape, from_json)  # parquet files keep their types: bigint is bigint
    with pytest.raises(OutputError, match="k is int there and string in this run"):
        catalog._check_table(table, shape, catalog._staged(spark, bad, "csv"), text=True)


def test_latest_views_are_told_apart_from_objects_segspark_did_not_make(spark):
    """What a database holds comes from one SHOW TABLES and one SHOW VIEWS: a view segspark made shows
    its run; a view without segspark's property, and a table under a view's name, are refused."""
    spark.sql("CREATE DATABASE IF NOT EXISTS objects")
    spark.createDataFrame([(1, "r1")], "k int, run_id string").write.partitionBy("run_id").saveAsTable(
        "objects.k_metrics"
    )
    catalog.point_view(spark, "objects.k_metrics_latest", "objects.k_metrics", "r1")
    spark.sql("CREATE OR REPLACE VIEW objects.profiles_latest AS SELECT * FROM objects.k_metrics")
    spark.createDataFrame([(1,)], "k int").write.saveAsTable("objects.assignments_latest")

    objects = catalog._objects(spark, "objects")
    assert objects == {
        "k_metrics": "TABLE",
        "k_metrics_latest": "VIEW",
        "profiles_latest": "VIEW",
        "assignments_latest": "TABLE",
    }
    assert catalog._view_run(spark, "objects.k_metrics_latest", objects["k_metrics_latest"]) == "r1"
    assert catalog._view_run(spark, "objects.rules_latest", objects.get("rules_latest")) is None
    for view in ("profiles_latest", "assignments_latest"):
        with pytest.raises(OutputError, match=f"objects.{view} exists and was not made by segspark"):
            catalog._view_run(spark, f"objects.{view}", objects[view])
    shape = catalog._describe(spark, "objects.k_metrics")
    assert shape.partitions == ["run_id"] and catalog._has_partition(spark, "objects.k_metrics", "r1")
    assert not catalog._has_partition(spark, "objects.k_metrics", "r2")
    assert catalog._describe(spark, "objects.k_metrics_latest").partitions == []


def test_a_table_without_hive_partitions_is_asked_for_a_runs_rows_instead(spark):
    """SHOW PARTITIONS fails on a table whose run_id is a plain column (as in formats without Hive-style
    partitions); whether the run is there then comes from its rows."""
    spark.sql("CREATE DATABASE IF NOT EXISTS flat")
    spark.createDataFrame([(1, "r1")], "k int, run_id string").write.saveAsTable("flat.k_metrics")
    assert catalog._describe(spark, "flat.k_metrics").partitions == []
    assert catalog._has_partition(spark, "flat.k_metrics", "r1")
    assert not catalog._has_partition(spark, "flat.k_metrics", "r2")
