"""The job end to end over Spark Connect: a real local Connect server started from the installed pyspark,
and ``segspark run`` / ``score`` / ``report`` as separate processes with ``SPARK_REMOTE`` pointing at it,
against in-process classic runs of the same input and seed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from segspark.config import settings_from_dict
from segspark.generate import write_orders
from segspark.job import run
from tests.conftest import base_config
from tests.connect import connect_server
from tests.submit import PROFILE_RTOL, TIMINGS, read_run

pyspark = pytest.importorskip("pyspark")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        int(pyspark.__version__.split(".")[0]) < 4, reason="the tests' Connect server needs pyspark 4"
    ),
]
K_RANGE = {"k": {"min": 3, "max": 6}}


@pytest.fixture(scope="module")
def remote(tmp_path_factory) -> str:
    with connect_server(tmp_path_factory.mktemp("connect")) as url:
        yield url


def segspark_cli(remote: str, *args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python -m segspark <args>`` in a process of its own with SPARK_REMOTE set."""
    env = {**os.environ, "SPARK_REMOTE": remote}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    return subprocess.run(
        [sys.executable, "-m", "segspark", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def _config(tmp_path: Path, config: dict) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _run_both(spark, remote: str, tmp_path: Path, config: dict) -> tuple[dict, dict, Path]:
    """The same config run classic (in this process) and over Connect; both runs as plain data."""
    output = {**config["output"], "path": str(tmp_path / "classic")}
    classic = run(settings_from_dict({**config, "output": output}), spark)
    lake = tmp_path / "lake"
    done = segspark_cli(
        remote, "run", "--config", _config(tmp_path, config), "--set", f"output.path={lake}",
        "--set", "output.run_id=connect", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return read_run(Path(classic.run_dir)), read_run(lake / "runs" / "connect"), lake


def assert_identical_runs(connect: dict, classic: dict) -> None:
    """The same segment for every customer (not up to a relabelling), metrics and profiles within 1e-9."""
    assert connect["manifest"]["rows"] == classic["manifest"]["rows"]
    assert connect["manifest"]["k"]["chosen"] == classic["manifest"]["k"]["chosen"]
    both = classic["assignments"].merge(connect["assignments"], on="customer_id", suffixes=("", "_c"))
    assert len(both) == len(classic["assignments"]) == len(connect["assignments"])
    assert (both["segment"] == both["segment_c"]).all()
    assert (both["segment_name"] == both["segment_name_c"]).all()
    np.testing.assert_allclose(both["distance_c"], both["distance"], rtol=PROFILE_RTOL, atol=1e-12)
    pd.testing.assert_frame_equal(
        connect["k_metrics"].drop(columns=TIMINGS),
        classic["k_metrics"].drop(columns=TIMINGS),
        check_dtype=False,
        rtol=PROFILE_RTOL,
    )
    profiles = [run["profiles"].sort_values("segment").reset_index(drop=True) for run in (connect, classic)]
    pd.testing.assert_frame_equal(*profiles, check_dtype=False, rtol=PROFILE_RTOL)


def test_run_score_and_report_over_connect_match_a_classic_run(spark, remote, demo_data, tmp_path):
    config = base_config(demo_data["customers"], "unused", model=K_RANGE)
    classic, connect, lake = _run_both(spark, remote, tmp_path, config)
    assert_identical_runs(connect, classic)
    manifest = connect["manifest"]
    assert manifest["spark_application"]["remote"] == remote
    assert manifest["spark_master"] == "local[2]"  # the server's, as it reports it
    assert (lake / "latest").read_text().strip() == "connect"
    assert (lake / "runs" / "connect" / "rules.sql").read_text().replace("connect", "RUN") == (
        Path(classic["manifest"]["outputs"]["rules.sql"])
        .read_text()
        .replace(classic["manifest"]["run_id"], "RUN")
    )

    # score the run's own input over Connect: every customer gets the segment the run gave it
    scored = tmp_path / "scored"
    done = segspark_cli(
        remote, "score", "--run", "latest", "--lake", str(lake), "--input", demo_data["customers"],
        "--output", str(scored), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    again = pd.read_parquet(scored / "assignments").set_index("customer_id")
    ran = connect["assignments"].set_index("customer_id")
    assert (again.loc[ran.index, "segment"] == ran["segment"]).all()

    # rebuild the report over Connect: the same page the run wrote, but for its time stamp
    report = lake / "runs" / "connect" / "report.html"
    written = report.read_text()
    report.unlink()
    done = segspark_cli(remote, "report", str(lake / "runs" / "connect"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _without_time(report.read_text()) == _without_time(written)


def _without_time(page: str) -> str:
    return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\+00:00|Z)?", "<time>", page)


def test_orders_become_the_same_features_over_connect(spark, remote, tmp_path):
    paths = write_orders(str(tmp_path / "orders-data"), 800, seed=5, dirty=True)
    config = {
        "input": {"orders": {"path": paths["orders"], "format": "parquet"}},
        "model": {**K_RANGE, "seed": 42},
        "output": {"path": "unused"},
    }
    classic, connect, _ = _run_both(spark, remote, tmp_path, config)
    assert_identical_runs(connect, classic)
    assert connect["manifest"]["orders"] == classic["manifest"]["orders"]


def test_spark_ml_sweep_of_k_2_to_10_with_restarts_stays_within_the_model_cache(remote, demo_data, tmp_path):
    """A Gaussian mixture swept over k = 2..10 with up to 4 starts each: every model the sweep does not
    keep is freed on the server, whose model cache keeps its default limits."""
    config = base_config(
        demo_data["customers"], str(tmp_path / "lake"),
        model={"algorithm": "gaussian_mixture", "k": {"min": 2, "max": 10}, "restarts": 4, "max_iter": 30},
        segments={"rule_depth": 0}, output={"report": False, "run_id": "gmm"},
    )  # fmt: skip
    done = segspark_cli(remote, "run", "--config", _config(tmp_path, config), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = read_run(tmp_path / "lake" / "runs" / "gmm")
    assert sorted(result["k_metrics"]["k"]) == list(range(2, 11))
    assert result["manifest"]["k"]["chosen"] == 5  # the five generated segments


def test_a_failed_run_over_connect_leaves_the_published_run_alone(remote, demo_data, tmp_path):
    lake = tmp_path / "lake"
    good = base_config(demo_data["customers"], str(lake), model=K_RANGE, output={"run_id": "good"})
    done = segspark_cli(remote, "run", "--config", _config(tmp_path, good), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    before = {p.relative_to(lake): p.stat().st_mtime_ns for p in (lake / "runs").rglob("*")}

    bad = base_config(str(tmp_path / "absent.parquet"), str(lake), output={"run_id": "bad"})
    done = segspark_cli(remote, "run", "--config", _config(tmp_path, bad), cwd=tmp_path)
    assert done.returncode == 3
    assert "absent.parquet" in done.stderr
    assert (lake / "latest").read_text().strip() == "good"
    assert {p.relative_to(lake): p.stat().st_mtime_ns for p in (lake / "runs").rglob("*")} == before
    assert json.loads((lake / "runs" / "good" / "manifest.json").read_text())["status"] == "succeeded"
