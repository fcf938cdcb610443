"""Helpers for tests that submit the job with a real ``spark-submit``: the command, its environment,
the built zip, and comparing a submitted run with an in-process one."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from segspark.metrics import SEGMENT
from tests.conftest import REPO, base_config

SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"
ENTRY_POINT = REPO / "jobs" / "segment_customers.py"
# The same partitioning as the tests' in-process session, so the two runs see the same splits.
SAME_AS_TEST_SESSION = {
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.ui.enabled": "false",
}
SMALL_EXECUTORS = {"spark.executor.memory": "1g", "spark.executor.cores": "1"}
PROFILE_RTOL = 1e-9
TIMINGS = ["seconds"]  # the only k_metrics column that may differ between two runs


def build_zip(out: Path) -> Path:
    """``dist/segspark.zip`` as ``make dist`` builds it (the same script), written to ``out``."""
    spec = importlib.util.spec_from_file_location("build_zip", REPO / "scripts" / "build_zip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_zip(out)


def submit_env() -> dict[str, str]:
    """As in an activated virtual env: spark-submit finds Spark and runs Python with this interpreter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    env["PATH"] = f"{SPARK_SUBMIT.parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYSPARK_PYTHON"] = sys.executable
    env.pop("SPARK_HOME", None)  # the pip-installed pyspark's own jars, whatever the machine has
    return env


def write_config(path: Path, customers: str, lake: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(base_config(customers, str(lake), **sections)))
    return path


def submit_command(
    master: str, app: Path, app_args: list[str], py_files: Path | None = None, conf: dict | None = None
) -> list[str]:
    command = [str(SPARK_SUBMIT), "--master", master]
    if py_files is not None:
        command += ["--py-files", str(py_files)]
    for key, value in {**SAME_AS_TEST_SESSION, **(conf or {})}.items():
        command += ["--conf", f"{key}={value}"]
    return [*command, str(app), *app_args]


def run_submit(command: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, capture_output=True, text=True, env=submit_env(), cwd=cwd, timeout=timeout
    )
    # the Python driver's own log and traceback come out on spark-submit's stdout
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def read_run(run_dir: Path) -> dict:
    """A published run as plain data: manifest, assignments, profiles and k metrics (pandas)."""
    return {
        "manifest": json.loads((run_dir / "manifest.json").read_text()),
        "assignments": pd.read_parquet(run_dir / "assignments"),
        "profiles": pd.read_parquet(run_dir / "profiles"),
        "k_metrics": pd.read_parquet(run_dir / "k_metrics"),
    }


def assert_same_result(actual: dict, expected: dict) -> None:
    """Same k, the same assignments up to a relabelling of segments, profiles equal within 1e-9."""
    assert actual["manifest"]["status"] == "succeeded"
    assert actual["manifest"]["rows"] == expected["manifest"]["rows"]
    assert actual["manifest"]["k"]["chosen"] == expected["manifest"]["k"]["chosen"]

    both = expected["assignments"].merge(
        actual["assignments"], on="customer_id", how="outer", suffixes=("_expected", "_actual")
    )
    assert len(both) == len(expected["assignments"]) == len(actual["assignments"])
    pairs = both[[f"{SEGMENT}_expected", f"{SEGMENT}_actual"]].drop_duplicates()
    # a relabelling: each expected segment maps to exactly one actual segment, and back
    assert pairs[f"{SEGMENT}_expected"].is_unique and pairs[f"{SEGMENT}_actual"].is_unique, pairs
    relabel = dict(zip(pairs[f"{SEGMENT}_actual"], pairs[f"{SEGMENT}_expected"], strict=True))
    distance = both["distance_actual"] - both["distance_expected"]
    assert np.abs(distance).max() <= PROFILE_RTOL * max(1.0, both["distance_expected"].abs().max())

    profiles = actual["profiles"].assign(**{SEGMENT: lambda p: p[SEGMENT].map(relabel)})
    profiles = profiles.sort_values(SEGMENT).reset_index(drop=True)
    wanted = expected["profiles"].sort_values(SEGMENT).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        profiles[wanted.columns], wanted, check_dtype=False, rtol=PROFILE_RTOL, atol=0.0
    )
    metrics = actual["k_metrics"].drop(columns=TIMINGS).sort_values("k").reset_index(drop=True)
    pd.testing.assert_frame_equal(
        metrics,
        expected["k_metrics"].sort_values("k").reset_index(drop=True)[metrics.columns],
        check_dtype=False,
        rtol=PROFILE_RTOL,
    )
