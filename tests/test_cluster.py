"""The job on a multi-process Spark cluster (``local-cluster``: a master, workers and separate executor
JVMs), submitted with spark-submit and the built zip, against an in-process local run of the same input
and seed; and the same result when an executor JVM is killed mid-sweep or a task's first attempt fails."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from segspark.config import settings_from_dict
from segspark.job import run
from tests.conftest import REPO, base_config
from tests.submit import (
    ENTRY_POINT,
    SMALL_EXECUTORS,
    assert_same_result,
    build_zip,
    read_run,
    run_submit,
    submit_command,
    submit_env,
    write_config,
)

pytestmark = pytest.mark.slow

LOCAL_CLUSTER = "local-cluster[2,1,1024]"  # two workers, each one executor JVM with 1 core and 1 GiB
EXECUTOR_MAIN = "org.apache.spark.executor.CoarseGrainedExecutorBackend"
FLAKY_DRIVER = REPO / "tests" / "flaky_driver.py"
K_RANGE = {"k": {"min": 4, "max": 6}}  # three k keep each submitted run short; the data has five segments


@pytest.fixture(scope="session")
def segspark_zip(tmp_path_factory) -> Path:
    return build_zip(tmp_path_factory.mktemp("dist") / "segspark.zip")


@pytest.fixture(scope="module")
def local_run(spark, demo_data, tmp_path_factory) -> dict:
    """The reference: the same input, settings and seed, in this process's local-mode session."""
    lake = tmp_path_factory.mktemp("local-lake")
    settings = settings_from_dict(base_config(demo_data["customers"], str(lake), model=K_RANGE, output={"run_id": "local"}))
    result = run(settings, spark)
    return read_run(Path(result.run_dir))


def _job_args(tmp_path: Path, customers: str) -> tuple[list[str], Path]:
    lake = tmp_path / "lake"
    config = write_config(tmp_path / "config.yaml", customers, lake, model=K_RANGE)
    return ["--config", str(config), "--set", "output.run_id=submitted"], lake / "runs" / "submitted"


def test_local_cluster_run_matches_the_local_run(segspark_zip, demo_data, local_run, tmp_path):
    args, run_dir = _job_args(tmp_path, demo_data["customers"])
    command = submit_command(LOCAL_CLUSTER, ENTRY_POINT, args, py_files=segspark_zip, conf=SMALL_EXECUTORS)
    run_submit(command, cwd=tmp_path)
    submitted = read_run(run_dir)
    assert submitted["manifest"]["spark_master"] == LOCAL_CLUSTER
    assert_same_result(submitted, local_run)


def _descendants(root: int) -> dict[int, str]:
    """Processes below ``root`` (pid -> command line), from ps."""
    listing = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    children: dict[int, list[tuple[int, str]]] = {}
    for line in listing.splitlines():
        pid, ppid, args = line.strip().split(None, 2) if len(line.split()) > 2 else (*line.split(), "")
        children.setdefault(int(ppid), []).append((int(pid), args))
    found, todo = {}, [root]
    while todo:
        for pid, args in children.get(todo.pop(), []):
            found[pid] = args
            todo.append(pid)
    return found


def test_job_survives_a_killed_executor_jvm(segspark_zip, demo_data, local_run, tmp_path):
    args, run_dir = _job_args(tmp_path, demo_data["customers"])
    command = submit_command(LOCAL_CLUSTER, ENTRY_POINT, args, py_files=segspark_zip, conf=SMALL_EXECUTORS)
    job = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=submit_env(), cwd=tmp_path
    )
    stderr: list[str] = []
    sweep_started = threading.Event()

    def follow() -> None:
        for line in job.stderr:
            stderr.append(line)
            if "sweep ..." in line:
                sweep_started.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        assert sweep_started.wait(timeout=300), "".join(stderr[-50:])
        executors = {pid: a for pid, a in _descendants(job.pid).items() if EXECUTOR_MAIN in a}
        assert len(executors) == 2, executors  # one JVM per worker, both children of this spark-submit
        victim = min(executors)
        assert job.poll() is None, "the job finished before an executor could be killed"
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        stdout, _ = job.communicate(timeout=600)
        reader.join(timeout=10)
    finally:
        if job.poll() is None:
            job.kill()
    log = "".join(stderr)
    assert job.returncode == 0, log[-4000:]
    assert not _alive(victim)
    # the driver saw the executor go and the master gave the application a new one
    assert "Lost executor" in log or "Executor lost" in log or "removed" in log.lower(), log[-4000:]
    print(f"killed executor pid {victim}; the job finished {time.monotonic() - killed_at:.1f}s later")
    assert_same_result(read_run(run_dir), local_run)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_job_survives_a_failed_first_task_attempt(segspark_zip, demo_data, local_run, tmp_path):
    """``local[2,3]`` allows 3 attempts per task; the driver under tests/ fails partition 0's first one."""
    args, run_dir = _job_args(tmp_path, demo_data["customers"])
    marker = tmp_path / "failed-once"
    command = submit_command("local[2,3]", FLAKY_DRIVER, [str(marker), *args], py_files=segspark_zip)
    result = run_submit(command, cwd=tmp_path)
    assert marker.read_text() == "partition 0, attempt 0"
    assert "injected failure in the first attempt" in result.stderr
    assert_same_result(read_run(run_dir), local_run)
