"""The command line end to end: summary, exit codes, generate, python -m, and spark-submit."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from segspark.cli import main
from tests.conftest import base_config
from tests.submit import ENTRY_POINT, run_submit, submit_command, submit_env


def _config_file(tmp_path: Path, customers: str, **sections) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base_config(customers, str(tmp_path / "lake"), **sections)))
    return str(path)


def test_run_prints_a_summary_then_score_uses_the_latest_run(spark, demo_data, tmp_path, capsys):
    config = _config_file(tmp_path, demo_data["customers"])
    code = main(
        ["run", "--config", config, "--set", "model.k={min: 4, max: 6}", "--set", "output.run_id=cli"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "rows: 3000 read, 3000 assigned, 0 rejected" in out
    assert "k = 5 by highest silhouette over k=4..6 (silhouette 0." in out
    segment_lines = [line for line in out.splitlines() if line.startswith("    ") and "%" in line]
    assert len(segment_lines) == 5
    assert f"outputs: {tmp_path / 'lake'}/runs/cli" in out
    assert (tmp_path / "lake" / "latest").read_text().strip() == "cli"

    # score the latest run's own input: every customer gets the segment the run gave it
    scored = tmp_path / "scored"
    args = ["score", "--run", "latest", "--lake", str(tmp_path / "lake"), "--input", demo_data["customers"]]
    assert main([*args, "--output", str(scored), "--output-format", "csv"]) == 0
    assert "scored with run cli: 3000 read, 3000 assigned, 0 rejected" in capsys.readouterr().out
    ran = pd.read_parquet(tmp_path / "lake" / "runs" / "cli" / "assignments").set_index("customer_id")
    parts = sorted((scored / "assignments").glob("part-*.csv"))
    again = pd.concat(pd.read_csv(part) for part in parts).set_index("customer_id").loc[ran.index]
    assert (again["segment"] == ran["segment"]).all()


def test_score_without_a_published_run_exits_3(spark, tmp_path, capsys):
    args = ["score", "--run", "latest", "--lake", str(tmp_path / "empty"), "--input", "x", "--output", "y"]
    assert main(args) == 3
    assert "no published run under" in capsys.readouterr().err


def test_config_error_exits_2_with_the_key_named(tmp_path, capsys):
    config = _config_file(tmp_path, "unused.parquet")
    code = main(["run", "--config", config, "--set", "model.k.min=9", "--set", "model.k.max=3"])
    assert code == 2
    assert "model.k: min (9) is greater than max (3)" in capsys.readouterr().err


def test_missing_input_exits_3_naming_the_path(spark, tmp_path, capsys):
    config = _config_file(tmp_path, str(tmp_path / "absent.parquet"))
    assert main(["run", "--config", config]) == 3
    assert "absent.parquet" in capsys.readouterr().err


def test_output_path_that_is_a_file_exits_4(spark, demo_data, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    config = _config_file(tmp_path, demo_data["customers"], output={"path": str(blocker)})
    assert main(["run", "--config", config]) == 4
    assert "is a file" in capsys.readouterr().err


def test_generate_writes_customers_and_their_true_segments(tmp_path, capsys):
    assert main(["generate", "--customers", "250", "--out", str(tmp_path), "--seed", "3"]) == 0
    customers = pd.read_parquet(tmp_path / "customers.parquet")
    truth = pd.read_parquet(tmp_path / "truth.parquet")
    assert len(customers) == len(truth) == 250
    assert customers["customer_id"].is_unique and "true_segment" not in customers
    assert set(truth["true_segment"]) == {0, 1, 2, 3, 4}
    again = tmp_path / "again"
    main(["generate", "--customers", "250", "--out", str(again), "--seed", "3"])
    pd.testing.assert_frame_equal(customers, pd.read_parquet(again / "customers.parquet"))


def test_generate_without_customers_is_a_usage_error(tmp_path, capsys):
    assert main(["generate", "--customers", "0", "--out", str(tmp_path)]) == 2
    assert "--customers must be at least 1" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "segspark", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("segspark ")


@pytest.mark.slow
def test_job_runs_under_spark_submit(demo_data, tmp_path):
    config = _config_file(tmp_path, demo_data["customers"], spark={"conf": {"spark.ui.enabled": False}})
    args = ["--config", config, "--set", "model.k={min: 4, max: 6}", "--set", "output.run_id=submitted"]
    # event logging is fixed when the JVM starts: under spark-submit the key can only say how to get it
    args += ["--set", f"spark.event_log={tmp_path / 'events'}"]
    command = submit_command("local[2]", ENTRY_POINT, args, conf={"spark.sql.shuffle.partitions": "3"})
    result = run_submit(command, cwd=tmp_path)
    # spark-submit passes the Python driver's stderr (segspark's log) on to its stdout
    assert "k = 5 by highest silhouette over k=4..6" in result.stdout
    assert "give it to spark-submit with --conf spark.eventLog.enabled=true" in result.stdout
    manifest = json.loads((tmp_path / "lake" / "runs" / "submitted" / "manifest.json").read_text())
    assert manifest["rows"] == {"read": 3000, "assigned": 3000, "rejected": 0}
    # what spark-submit set wins over the config's local default
    assert manifest["spark_master"] == "local[2]"
    assert manifest["spark_application"]["event_log"] is None


@pytest.mark.slow
def test_event_log_names_each_step(demo_data, tmp_path):
    """spark.event_log turns on Spark's event log; its jobs carry segspark's step descriptions, which the
    history server shows. The sweep itself runs on the driver: its only jobs build the chosen model."""
    events = tmp_path / "events"
    config = _config_file(tmp_path, demo_data["customers"], spark={"conf": {"spark.ui.enabled": False}})
    command = [sys.executable, "-m", "segspark", "--quiet", "run", "--config", config]
    command += ["--set", "model.k={min: 4, max: 5}", "--set", "output.run_id=logged"]
    command += ["--set", f"spark.event_log={events}", "--set", "spark.conf.spark.eventLog.compress=false"]
    result = subprocess.run(command, capture_output=True, text=True, env=submit_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    manifest = json.loads((tmp_path / "lake" / "runs" / "logged" / "manifest.json").read_text())
    application = manifest["spark_application"]
    assert application["event_log"] == str(events)
    # Spark 3.5 writes one file named after the application; 4.x a folder with events_1_<id> in it,
    # beside an empty appstatus file; Hadoop adds hidden .crc files
    logs = [
        p
        for p in events.rglob("*")
        if p.is_file() and application["id"] in str(p) and p.stat().st_size and not p.name.startswith(".")
    ]
    assert logs, list(events.rglob("*"))
    descriptions = collections.Counter()
    for line in (line for log in logs for line in log.read_text().splitlines()):
        event = json.loads(line)
        if event["Event"] == "SparkListenerJobStart":
            descriptions[event.get("Properties", {}).get("spark.job.description")] += 1
    for step in ["validate", "prepare", "sweep", "assign", "write assignments"]:
        assert f"segspark: {step}" in descriptions, sorted(map(str, descriptions))
    assert descriptions["segspark: sweep"] <= 10, descriptions
    # the profiles (numeric features only) come from assign's one pass over the clustered customers
    assert "segspark: profile" not in descriptions, descriptions


# The one line a Spark 4 JVM prints on start that no log setting reaches (Spark loads the module).
JVM_NOTICE = "WARNING: Using incubator modules: jdk.incubator.vector"


@pytest.mark.slow
def test_a_successful_run_logs_only_segspark_progress_lines(demo_data, tmp_path):
    small = tmp_path / "small.parquet"
    pd.read_parquet(demo_data["customers"]).head(400).to_parquet(small, index=False)
    config = _config_file(tmp_path, str(small), model={"k": {"min": 2, "max": 3}, "restarts": 1})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    done = subprocess.run(
        [sys.executable, "-m", "segspark", "run", "--config", config],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    foreign = [
        line
        for line in done.stderr.splitlines()
        if line != JVM_NOTICE
        and not re.match(r"^\d{4}-\d\d-\d\d [\d:,]+ (INFO|WARNING) segspark[.\w]*: ", line)
    ]
    assert foreign == []
