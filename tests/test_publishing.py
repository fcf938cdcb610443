"""Safe publishing: a killed run costs nothing published; overlapping runs do not corrupt each other;
logs carry no customer identifiers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from segspark.cli import main
from segspark.config import settings_from_dict
from segspark.job import run
from tests.conftest import REPO, base_config

SMALL_SWEEP = {"k": {"min": 4, "max": 5}}


def _config(tmp_path: Path, customers: str, lake: Path, run_id: str) -> str:
    path = tmp_path / f"{run_id}.yaml"
    config = base_config(customers, str(lake), model=SMALL_SWEEP, output={"run_id": run_id})
    config["spark"] = {"master": "local[1]", "conf": {"spark.ui.enabled": False}}
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _start(config: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    return subprocess.Popen(
        [sys.executable, "-m", "segspark", "run", "--config", config],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the kill reaches the Spark JVM too
    )


def _assignments(lake: Path, run_id: str) -> pd.DataFrame:
    return pd.read_parquet(lake / "runs" / run_id / "assignments")


@pytest.mark.slow
def test_a_run_killed_while_writing_leaves_the_previous_run_published(spark, demo_data, tmp_path):
    lake = tmp_path / "lake"
    run(
        settings_from_dict(
            base_config(demo_data["customers"], str(lake), model=SMALL_SWEEP, output={"run_id": "good"})
        ),
        spark,
    )
    before = _assignments(lake, "good")

    process = _start(_config(tmp_path, demo_data["customers"], lake, "killed"))
    deadline = time.monotonic() + 300
    for line in process.stderr:  # progress lines: kill as soon as the writing starts
        if "write assignments ..." in line or time.monotonic() > deadline:
            break
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL

    assert (lake / "latest").read_text().strip() == "good"
    assert sorted(p.name for p in (lake / "runs").iterdir()) == ["good"]
    pd.testing.assert_frame_equal(_assignments(lake, "good"), before)
    assert not (lake / "_staging" / "killed" / "manifest.json").exists()  # never marked complete

    # the same run id again: it replaces the half-written attempt and publishes whole
    again = run(
        settings_from_dict(
            base_config(demo_data["customers"], str(lake), model=SMALL_SWEEP, output={"run_id": "killed"})
        ),
        spark,
    )
    assert again.rows == {"read": 3000, "assigned": 3000, "rejected": 0}
    assert (lake / "latest").read_text().strip() == "killed"
    assert len(_assignments(lake, "killed")) == 3000


@pytest.mark.slow
def test_two_runs_into_one_lake_at_once_both_publish_whole(demo_data, tmp_path):
    lake = tmp_path / "lake"
    processes = {rid: _start(_config(tmp_path, demo_data["customers"], lake, rid)) for rid in ("p1", "p2")}
    for rid, process in processes.items():
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, f"{rid}: {err[-2000:]}"
    for rid in processes:
        manifest = json.loads((lake / "runs" / rid / "manifest.json").read_text())
        assert manifest["status"] == "succeeded"
        assert manifest["rows"] == {"read": 3000, "assigned": 3000, "rejected": 0}
        assert len(_assignments(lake, rid)) == 3000
    assert (lake / "latest").read_text().strip() in {"p1", "p2"}


def test_logs_and_summary_carry_no_customer_identifiers(spark, demo_data, tmp_path, capfd):
    dirty = pd.read_parquet(demo_data["customers"]).head(300).astype({"age": float})
    dirty.loc[0:9, "age"] = float("inf")  # rejected rows: their ids must not reach the log
    dirty = pd.concat([dirty, dirty.head(5)])  # duplicates, likewise
    dirty.to_parquet(tmp_path / "dirty.parquet", index=False)
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            base_config(str(tmp_path / "dirty.parquet"), str(tmp_path / "lake"), model=SMALL_SWEEP)
        )
    )
    assert main(["run", "--config", str(config)]) == 0
    captured = capfd.readouterr()
    text = captured.out + captured.err
    assert "rows: 305 read, 290 assigned, 15 rejected" in text
    leaked = [cid for cid in dirty["customer_id"] if cid in text]
    assert leaked == []
