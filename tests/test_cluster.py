"""The job on a multi-process Spark cluster (``local-cluster``: a master, workers and separate executor
JVMs), submitted with spark-submit and the built zip, against an in-process local run of the same input
and seed; and the same result when an executor JVM is killed mid-sweep or a task's first attempt fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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
MASTER_MAIN = "org.apache.spark.deploy.master.Master"
FLAKY_DRIVER = REPO / "tests" / "flaky_driver.py"
K_RANGE = {"k": {"min": 4, "max": 6}, "restarts": 1}  # three k, one start each: short runs; five segments


@pytest.fixture(scope="session")
def segspark_zip(tmp_path_factory) -> Path:
    return build_zip(tmp_path_factory.mktemp("dist") / "segspark.zip")


@pytest.fixture(scope="module")
def local_run(spark, demo_data, tmp_path_factory) -> dict:
    """The reference: the same input, settings and seed, in this process's local-mode session."""
    lake = tmp_path_factory.mktemp("local-lake")
    settings = settings_from_dict(
        base_config(demo_data["customers"], str(lake), model=K_RANGE, output={"run_id": "local"})
    )
    result = run(settings, spark)
    return read_run(Path(result.run_dir))


def _job_args(tmp_path: Path, customers: str) -> tuple[list[str], Path]:
    lake = tmp_path / "lake"
    config = write_config(tmp_path / "config.yaml", customers, lake, model=K_RANGE)
    return ["--config", str(config), "--set", "output.run_id=submitted"], lake / "runs" / "submitted"


def test_local_cluster_run_matches_the_local_run(segspark_zip, demo_data, local_run, tmp_path):
    args, run_dir = _job_args(tmp_path, demo_data["customers"])
    # Executors get a Python that does not exist: the run passes only if no Python runs on them.
    no_python_on_executors = {
        "spark.pyspark.python": "/nonexistent/no-python-on-executors",
        "spark.pyspark.driver.python": sys.executable,
    }
    conf = {**SMALL_EXECUTORS, **no_python_on_executors}
    command = submit_command(LOCAL_CLUSTER, ENTRY_POINT, args, py_files=segspark_zip, conf=conf)
    run_submit(command, cwd=tmp_path)
    submitted = read_run(run_dir)
    assert submitted["manifest"]["spark_master"] == LOCAL_CLUSTER
    assert_same_result(submitted, local_run)


def _descendants(root: int) -> dict[int, str]:
    """Processes below ``root`` (pid -> full command line), from /proc (ps would cut long java lines)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = {}, [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            try:
                found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            todo.append(pid)
    return found


def test_job_survives_a_killed_executor_jvm(segspark_zip, demo_data, local_run, tmp_path):
    args, run_dir = _job_args(tmp_path, demo_data["customers"])
    command = submit_command(LOCAL_CLUSTER, ENTRY_POINT, args, py_files=segspark_zip, conf=SMALL_EXECUTORS)
    # spark-submit passes the Python driver's stderr (segspark's log) on to its own stdout
    job = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=submit_env(), cwd=tmp_path
    )
    output: list[str] = []
    sweep_started = threading.Event()

    def follow() -> None:
        for line in job.stdout:
            output.append(line)
            if "segspark.job: sweep ..." in line:
                sweep_started.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        assert sweep_started.wait(timeout=300), "".join(output[-50:])
        executors = {pid: a for pid, a in _descendants(job.pid).items() if EXECUTOR_MAIN in a}
        assert len(executors) == 2, executors  # one JVM per worker, both children of this spark-submit
        victim = min(executors)
        assert job.poll() is None, "the job finished before an executor could be killed"
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        replacements: set[int] = set()
        while job.poll() is None and not replacements and time.monotonic() - killed_at < 300:
            time.sleep(0.5)
            current = {pid for pid, a in _descendants(job.pid).items() if EXECUTOR_MAIN in a}
            replacements = current - set(executors)
        job.wait(timeout=600)
        reader.join(timeout=10)
    finally:
        if job.poll() is None:
            job.kill()
    log = "".join(output)
    assert job.returncode == 0, log[-4000:]
    assert not _alive(victim)
    # the driver saw the executor go, and the worker started a new executor JVM for the application
    assert "Lost executor" in log, log[-4000:]
    assert replacements, "no new executor JVM was started after the kill"
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


CLUSTER_SH = REPO / "scripts" / "cluster.sh"


def _cluster_sh(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(CLUSTER_SH), command], capture_output=True, text=True, env=env, timeout=180
    )


def _pids(run_folder: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in run_folder.glob("*.pid")}


def test_job_on_the_standalone_cluster_of_cluster_sh(segspark_zip, demo_data, local_run, tmp_path):
    run_folder = tmp_path / "cluster"
    env = {**submit_env(), "CLUSTER_DIR": str(run_folder), "PYTHON": sys.executable}
    # a process that looks like a Spark master but was not started by cluster.sh: `down` must spare it
    decoy = subprocess.Popen(["bash", "-c", f"exec -a 'java {MASTER_MAIN}' sleep 600"])
    up = _cluster_sh("up", env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        master = (run_folder / "master.url").read_text().strip()
        assert up.stdout.strip().endswith(master) and master.startswith("spark://127.0.0.1:")
        pids = _pids(run_folder)
        assert sorted(pids) == ["master", "worker-1", "worker-2"]
        status = _cluster_sh("status", env)
        assert status.returncode == 0
        for name, pid in pids.items():
            assert f"{name} running (pid {pid})" in status.stdout
            assert (run_folder / f"{name}.log").stat().st_size > 0

        args, run_dir = _job_args(tmp_path, demo_data["customers"])
        command = submit_command(master, ENTRY_POINT, args, py_files=segspark_zip, conf=SMALL_EXECUTORS)
        run_submit(command, cwd=tmp_path)
        submitted = read_run(run_dir)
        assert submitted["manifest"]["spark_master"] == master
        assert_same_result(submitted, local_run)
        # both workers ran an executor of the application (their logs are under the run folder)
        for worker in ("work-1", "work-2"):
            assert list((run_folder / worker).glob("app-*/*/stderr")), worker
    finally:
        down = _cluster_sh("down", env)
        spared = decoy.poll() is None
        decoy.kill()
    assert down.returncode == 0, down.stderr
    assert "stopped 3 processes" in down.stdout
    assert not any(_alive(pid) for pid in pids.values())
    assert _cluster_sh("status", env).returncode == 1
    assert spared, "cluster.sh down killed a process it had not started"
