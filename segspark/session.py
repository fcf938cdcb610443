"""Building or reusing the SparkSession: local mode by default, whatever spark-submit set wins, or a
Spark Connect client with ``spark.remote`` / ``SPARK_REMOTE``."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

from pyspark.sql import SparkSession

from segspark.config import SparkSettings
from segspark.errors import ConfigError
from segspark.runtime import Runtime, first_line, is_connect

log = logging.getLogger(__name__)

APP_NAME = "segspark"
LOG4J2_CONFIG = Path(__file__).with_name("log4j2.properties")  # for the driver JVM of local sessions
# A local driver without spark.driver.memory gets this share of the machine's memory (pyspark's own
# default, 1g, runs out of heap caching ten million customers), within these bounds in MiB
DRIVER_MEMORY_SHARE = 0.25
DRIVER_MEMORY_MIB = (1024, 8192)


def launched_by_spark_submit() -> bool:
    """spark-submit starts the JVM first and hands the Python driver its gateway through the environment."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def local_cores(master: str) -> int:
    """Cores of a ``local[N]`` / ``local[*]`` / ``local[N,F]`` master; 1 for plain ``local``."""
    match = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", master.strip())
    if match is None:
        return 0
    cores = match.group(1)
    if cores is None:
        return 1
    if cores == "*":
        return os.cpu_count() or 1
    return int(cores)


def local_defaults(master: str) -> dict[str, str]:
    """Settings for a local session: one partition per core for shuffles (the sweep runs hundreds of small
    jobs, and every partition is a task to schedule), catalog files out of the working tree."""
    scratch = os.path.join(tempfile.gettempdir(), "segspark-spark")
    partitions = str(max(2, local_cores(master)))
    return {
        "spark.sql.shuffle.partitions": partitions,
        "spark.default.parallelism": partitions,
        "spark.sql.warehouse.dir": os.path.join(scratch, "warehouse"),
        "spark.driver.extraJavaOptions": (
            f"-Dderby.system.home={os.path.join(scratch, 'derby')} -Dlog4j2.configurationFile={LOG4J2_CONFIG}"
        ),
        "spark.ui.showConsoleProgress": "false",
    }


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or its container's limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def default_driver_memory(total: int | None = None) -> str:
    """spark.driver.memory for a local session that does not set it: DRIVER_MEMORY_SHARE of
    ``total`` (the machine's memory), within DRIVER_MEMORY_MIB.

    >>> default_driver_memory(24 * 2**30), default_driver_memory(2 * 2**30), default_driver_memory(2**40)
    ('6144m', '1024m', '8192m')
    """
    low, high = DRIVER_MEMORY_MIB
    share = int(DRIVER_MEMORY_SHARE * (total or machine_memory()) / 2**20)
    return f"{min(max(share, low), high)}m"


def get_session(settings: SparkSettings) -> SparkSession:
    """The active session if there is one; else a new one, with config filling only what is not set.

    Under spark-submit the master and ``--conf`` values given on its command line win; the config's
    ``spark.master`` is used only when nothing else chose a master. With ``spark.remote`` (or
    ``SPARK_REMOTE`` in the environment, as pyspark reads it) the session is a Spark Connect client.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        check_spark_conf(active, settings.effective_conf())
        return active
    wanted = settings.effective_conf()
    remote = settings.remote_url()
    if remote:
        session = connect_session(remote, wanted)
    elif launched_by_spark_submit():
        session = SparkSession.builder.appName(APP_NAME).getOrCreate()
        check_spark_conf(session, wanted)  # a bad value is a config error, not a setting to ignore
        for key, value in wanted.items():
            if Runtime(session).conf_value(key) is None:
                _set_runtime(session, key, value)
    else:
        session = local_session(settings, wanted)
    runtime = Runtime(session)
    runtime.set_log_level(settings.log_level, quiet=settings.log_level == "WARN")
    # profiles aggregate a few columns per feature; keep Spark from warning about long plan strings
    session.conf.set("spark.sql.debug.maxToStringFields", "1000")
    log.info("Spark %s, master %s", session.version, runtime.master)
    return session


def local_session(settings: SparkSettings, wanted: dict[str, str]) -> SparkSession:
    """A new session on ``spark.master`` with LOCAL_DEFAULTS and a driver memory fit for the machine
    under the config's settings."""
    _create_local_folder(wanted.get("spark.eventLog.dir"))
    merged = {**local_defaults(settings.master), **wanted}
    if local_cores(settings.master) == 0:
        merged = {k: v for k, v in merged.items() if k in wanted or "warehouse" in k}
    if settings.master.startswith("local") and "spark.driver.memory" not in wanted:
        merged["spark.driver.memory"] = default_driver_memory()
        log.info(
            "spark.driver.memory not set: %s, a quarter of this machine's memory",
            merged["spark.driver.memory"],
        )
    builder = SparkSession.builder.appName(APP_NAME).master(settings.master)
    for key, value in merged.items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # a core setting Spark cannot use stops the JVM from starting
        error = _setting_error(exc, wanted)
        if error is None:
            raise
        raise error from None
    try:
        check_spark_conf(session, wanted)
    except ConfigError:
        session.stop()  # its SQL state cannot be built with the bad value: the session is unusable
        raise
    return session


def connect_session(remote: str, conf: dict[str, str]) -> SparkSession:
    """A Spark Connect client of the server at ``remote`` (``sc://host:port``) with the ``conf`` settings
    a client may set (runtime ones such as ``spark.sql.*``); the server's own (master, memory, other
    static ones) stay the server's, and asking for one is a warning."""
    try:
        session = SparkSession.builder.remote(remote).getOrCreate()
        session.range(1).collect()  # the builder does not connect until the first request
    except Exception as exc:
        raise ConfigError(
            f"spark.remote: cannot reach a Spark Connect server at {remote}: {first_line(exc)}. "
            "Check the address (sc://host:port) and that the server runs"
        ) from None
    check_spark_conf(session, conf)
    for key, value in conf.items():
        if not key.startswith("spark.sql."):
            _set_runtime(session, key, value)
    return session


def stop_if_connect(session: SparkSession | None) -> None:
    """Close a Spark Connect client (its server runs on). A process that ends with fitted models still
    cached on the server would otherwise hang in gRPC at interpreter shutdown."""
    if session is not None and is_connect(session):
        session.stop()


def check_spark_conf(session: SparkSession, conf: dict[str, str]) -> None:
    """Every ``spark.sql.*`` value of ``conf`` checked by Spark's own converter, before any work: a bad
    one would otherwise fail the first query with a JVM stack trace instead of naming the key."""
    runtime = Runtime(session)
    for key, value in conf.items():
        if key.startswith("spark.sql."):
            error = runtime.sql_conf_error(key, str(value))
            if error is not None:
                raise _setting_error(error, {key: value}) from None


def _setting_error(exc: Exception, conf: dict[str, str]) -> ConfigError | None:
    """A ConfigError naming the setting of ``conf`` that Spark's message is about (None: none is)."""
    text = str(exc)
    key = next((k for k in conf if k in text), None)
    if key is None:
        return None
    reason = text.strip().splitlines()[0]
    reason = re.sub(r"^\[[A-Z_.]+\]\s*|\s*SQLSTATE: \w+$", "", reason)
    return ConfigError(
        f"spark.conf.{key}: Spark cannot use the value {conf[key]!r} ({reason}); fix or remove the setting"
    )


def _create_local_folder(path: str | None) -> None:
    """Spark refuses to start when the event-log folder is missing; make it if it is a local one."""
    if path and ("://" not in path or path.startswith("file:")):
        os.makedirs(path.removeprefix("file://").removeprefix("file:"), exist_ok=True)


def _set_runtime(session: SparkSession, key: str, value: object) -> None:
    """Apply a config setting to a running session where Spark allows it; say so where it does not."""
    try:
        session.conf.set(key, str(value))
    except Exception:  # static settings cannot change once the JVM (or the Connect server) runs
        where = (
            "set it on the Spark Connect server"
            if is_connect(session)
            else f"give it to spark-submit with --conf {key}={value}"
        )
        log.warning("Spark setting %s=%s is ignored: Spark reads it only at start; %s", key, value, where)
