"""Building or reusing the SparkSession: local mode by default, whatever spark-submit set wins."""

from __future__ import annotations

import ctypes.util
import logging
import os
import re
import tempfile
from pathlib import Path

from pyspark.sql import SparkSession

from segspark.config import SparkSettings
from segspark.errors import ConfigError

log = logging.getLogger(__name__)

APP_NAME = "segspark"
LOG4J2_CONFIG = Path(__file__).with_name("log4j2.properties")  # for the driver JVM of local sessions
# Loggers whose warnings a successful run raises on purpose or that nobody can act on (see
# log4j2.properties); set again once the session runs, for JVMs started without that file.
QUIET_LOGGERS = (
    "org.apache.spark.ml.util.Instrumentation",  # "Input vectors will be blockified ... double caching"
    "dev.ludovic.netlib",  # no native BLAS: the Java implementation is used
    "org.apache.hadoop.util.NativeCodeLoader",
)
ALLOW_NATIVE_BLAS = "dev.ludovic.netlib.blas.allowNative"
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
    ``spark.master`` is used only when nothing else chose a master.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        check_spark_conf(active, settings.effective_conf())
        return active
    builder = SparkSession.builder.appName(APP_NAME)
    wanted = settings.effective_conf()
    if launched_by_spark_submit():
        session = builder.getOrCreate()
        check_spark_conf(session, wanted)  # a bad value is a config error, not a setting to ignore
        conf = session.sparkContext.getConf()
        for key, value in wanted.items():
            if not conf.contains(key):
                _set_runtime(session, key, value)
    else:
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
        builder = builder.master(settings.master)
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
    session.sparkContext.setLogLevel(settings.log_level)
    if settings.log_level == "WARN":
        quiet_logs(session)
    # profiles aggregate a few columns per feature; keep Spark from warning about long plan strings
    session.conf.set("spark.sql.debug.maxToStringFields", "1000")
    log.info("Spark %s, master %s", session.version, session.sparkContext.master)
    return session


def quiet_logs(session: SparkSession) -> None:
    """Keep a successful run's log to segspark's progress lines: the QUIET_LOGGERS at ERROR, and no
    attempt to load a native BLAS the machine does not have (its loader prints a ``dlopen`` failure
    from C, past any log setting; Spark then uses its Java BLAS anyway)."""
    jvm = session.sparkContext._jvm
    error = jvm.org.apache.logging.log4j.Level.ERROR
    for name in QUIET_LOGGERS:
        jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, error)
    local = session.sparkContext.master.startswith("local")
    if (
        local
        and ctypes.util.find_library("blas") is None
        and jvm.java.lang.System.getProperty(ALLOW_NATIVE_BLAS) is None
    ):
        jvm.java.lang.System.setProperty(ALLOW_NATIVE_BLAS, "false")


def check_spark_conf(session: SparkSession, conf: dict[str, str]) -> None:
    """Every ``spark.sql.*`` value of ``conf`` checked by Spark's own converter, before any work: a bad
    one would otherwise fail the first query with a JVM stack trace instead of naming the key."""
    jvm = session.sparkContext._jvm
    probe = jvm.org.apache.spark.sql.internal.SQLConf()  # a scratch copy: nothing is applied
    for key, value in conf.items():
        if not key.startswith("spark.sql."):
            continue
        try:
            probe.setConfString(key, str(value))
        except Exception as exc:
            raise _setting_error(exc, {key: value}) from None


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


def event_log_dir(session: SparkSession) -> str | None:
    """Where this application's event log goes, or None when event logging is off."""
    conf = session.sparkContext.getConf()
    if conf.get("spark.eventLog.enabled", "false").lower() != "true":
        return None
    return conf.get("spark.eventLog.dir", "file:/tmp/spark-events")


def _create_local_folder(path: str | None) -> None:
    """Spark refuses to start when the event-log folder is missing; make it if it is a local one."""
    if path and ("://" not in path or path.startswith("file:")):
        os.makedirs(path.removeprefix("file://").removeprefix("file:"), exist_ok=True)


def _set_runtime(session: SparkSession, key: str, value: object) -> None:
    """Apply a config setting to a running session where Spark allows it; say so where it does not."""
    try:
        session.conf.set(key, str(value))
    except Exception:  # static settings cannot change once the JVM runs
        log.warning(
            "Spark setting %s=%s is ignored: Spark reads it only at start; give it to spark-submit "
            "with --conf %s=%s",
            key,
            value,
            key,
            value,
        )
