"""A local Spark Connect server for the tests, started from the installed pyspark (its jars ship the
Connect server) on a free port, and stopped by the pid it was started with."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from segspark.session import LOG4J2_CONFIG
from tests.submit import SAME_AS_TEST_SESSION, SPARK_SUBMIT, submit_env

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
START_TIMEOUT = 180  # seconds until the server takes connections (a busy 2-core machine is slow)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def connect_server(folder: Path, master: str = "local[2]") -> Iterator[str]:
    """Yield the server's ``sc://`` address; its log is ``folder/connect-server.log``."""
    port = free_port()
    conf = {
        **SAME_AS_TEST_SESSION,
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
        "spark.driver.memory": "2g",
        "spark.sql.warehouse.dir": str(folder / "warehouse"),
    }
    command = [str(SPARK_SUBMIT), "--class", SERVER_CLASS, "--master", master, "--name", "segspark tests"]
    for key, value in conf.items():
        command += ["--conf", f"{key}={value}"]
    command += ["--driver-java-options", f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}"]
    log = (folder / "connect-server.log").open("w")
    env = {**submit_env(), "SPARK_CONNECT_MODE": "0"}
    # spark-submit execs the JVM, so this pid is the server's own
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _listening(port):
            if server.poll() is not None:
                raise RuntimeError(f"the Connect server exited ({server.returncode}); see {log.name}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the Connect server did not listen within {START_TIMEOUT}s; see {log.name}"
                )
            time.sleep(1)
        yield f"sc://127.0.0.1:{port}"
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(server.pid, signal.SIGKILL)
                server.wait()
        log.close()
