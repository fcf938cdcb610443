"""Building or reusing the SparkSession: local mode by default, whatever spark-submit set wins, or a
Spark Connect client with ``spark.remote`` / ``SPARK_REMOTE``."""

from __future__ import annotations

import atexit
import contextlib
import glob
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pyspark
from pyarrow import fs
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
# The class-data-sharing archive of a local driver JVM (see ClassArchive)
CLASS_ARCHIVE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segspark"
NO_CLASS_ARCHIVE = "SEGSPARK_NO_CLASS_ARCHIVE"  # set to 1 to start local JVMs without one
CLASS_ARCHIVES_KEPT = 3  # one per pyspark and Java installation, the most recently used
CLASS_ARCHIVE_WAIT_S = 120  # the dump at the JVM's exit takes a few seconds
QUIET_CDS = "-Xlog:cds=off -Xlog:cds+dynamic=off"  # no line per class the archive leaves out
# A local run whose input files are smaller than this gets a driver JVM that compiles with the JIT's
# first tier only (C1): see quick_jit
QUICK_JIT_BYTES = 4 * 2**20
QUICK_JIT = "-XX:TieredStopAtLevel=1"
# Hadoop's local file system without a chmod process per new file and folder (see LocalFileSystemJar)
LOCAL_FS_SOURCE = Path(__file__).with_name("java") / "NioLocalFileSystem.java"
LOCAL_FS_CLASS = "segspark.hadoop.NioLocalFileSystem"


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
    jobs, and every partition is a task to schedule), an uncompressed columnar cache, catalog files out
    of the working tree."""
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
        # cached rows are mostly doubles, which the columnar cache's encodings hardly shrink: building
        # the cache without trying them took 0.94x the time of a 10M-customer run, in the same memory
        "spark.sql.inMemoryColumnarStorage.compressed": "false",
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


@dataclass(frozen=True)
class ClassArchive:
    """A class-data-sharing archive of a local driver JVM's classes (Java 17+), one per pyspark and
    Java installation, in CLASS_ARCHIVE_DIR.

    Loading and verifying Spark's classes is most of a local session's start on a small machine: about
    half of the 9 s to a session and of the 5 s of its first job on 2 cores. The JVM maps them from the
    archive instead. The first local session without an archive records the classes it loads, and when
    the program ends it waits for its JVM to write them (a few seconds, once); the archive is put in
    place only after the JVM exited cleanly, so a half-written one is never used.
    """

    path: Path

    @classmethod
    def for_this_spark(cls, first_jar: Path | None = None) -> ClassArchive | None:
        """The archive for this pyspark and Java, with ``first_jar`` first on the driver's class path
        (an archive maps only for the class path it was written with, the jar as it was then); None
        when off or the Java is older than 17."""
        if os.environ.get(NO_CLASS_ARCHIVE, "") not in ("", "0"):
            return None
        java = _this_java()
        if java is None or java[1] < 17:
            return None
        key = _installation_key(*java)
        if first_jar is not None:
            key += f"|{first_jar}@{first_jar.stat().st_mtime_ns}"
        return cls(CLASS_ARCHIVE_DIR / f"spark-{_digest(key)}.jsa")

    @property
    def part(self) -> Path:
        """Where this process's JVM writes the archive; only a clean exit moves it to ``path``."""
        return self.path.with_name(f"{self.path.stem}.{os.getpid()}.part")

    def java_options(self) -> str:
        """Use the archive, or record one (see ``keep_when_written``) when there is none yet."""
        if self.path.exists():
            # used now: the archives kept are the ones used last (see evict); in someone else's cache
            # folder it cannot be touched, and is still read
            with contextlib.suppress(OSError):
                os.utime(self.path)
            return f"-XX:SharedArchiveFile={self.path} {QUIET_CDS}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for stale in self.path.parent.glob("*.part"):  # of a program killed while its JVM wrote one
                if time.time() - stale.stat().st_mtime > 3600:
                    stale.unlink(missing_ok=True)
        except OSError:  # no writable cache folder: start without an archive
            return ""
        return f"-XX:ArchiveClassesAtExit={self.part} {QUIET_CDS}"

    def keep_when_written(self, session: SparkSession, options: str) -> None:
        """If ``options`` record the archive, wait at exit for the JVM to write it and put it in place."""
        process = Runtime(session).driver_process()
        if "ArchiveClassesAtExit" in options and process is not None:
            atexit.register(self._finish, process)

    def _finish(self, process: subprocess.Popen) -> None:
        log.info("writing the JVM's class archive %s (once: later local runs start faster)", self.path)
        process.stdin.close()  # the JVM exits at the end of its input, and writes the archive then
        try:
            code = process.wait(timeout=CLASS_ARCHIVE_WAIT_S)
        except subprocess.TimeoutExpired:
            code = None
        if code != 0 or not self.part.exists():
            self.part.unlink(missing_ok=True)
            return
        os.replace(self.part, self.path)
        self.evict(self.path.parent)

    @staticmethod
    def evict(folder: Path) -> None:
        """Keep the CLASS_ARCHIVES_KEPT archives used last (``java_options`` touches the one it uses), so
        installations used in turn keep theirs: ``make test`` runs two pysparks."""
        archives = sorted(folder.glob("spark-*.jsa"), key=os.path.getmtime)
        for old in archives[:-CLASS_ARCHIVES_KEPT]:
            old.unlink(missing_ok=True)


@dataclass(frozen=True)
class LocalFileSystemJar:
    """A jar with ``NioLocalFileSystem`` (LOCAL_FS_SOURCE), Hadoop's local file system setting the
    permissions of new files and folders through java.nio, for local sessions' ``fs.file.impl``.

    Without Hadoop's native library (pyspark ships none) Hadoop starts a ``chmod`` process for every
    file and folder it creates: about 160 in a demo run (part files, checksum files, the commit
    protocol's temporary folders, the catalog's tables), 3-5 ms each from the driver JVM. The jar is
    compiled once per pyspark and Java installation with the JDK's ``javac`` into CLASS_ARCHIVE_DIR;
    without a ``javac`` (a JRE only) or a writable cache folder, sessions keep Hadoop's own.
    """

    path: Path

    @classmethod
    def for_this_spark(cls) -> LocalFileSystemJar | None:
        java = _this_java()
        javac = java[0] / "bin" / "javac" if java else None
        if javac is None or not javac.exists():
            return None
        key = "|".join([_installation_key(*java), LOCAL_FS_SOURCE.read_text()])
        jar = cls(CLASS_ARCHIVE_DIR / f"hadoop-fs-{_digest(key)}.jar")
        if not jar.path.exists():
            try:
                jar.compile(javac)
            except (OSError, subprocess.SubprocessError) as exc:
                log.info("Hadoop's local file system kept (cannot compile %s: %s)", LOCAL_FS_SOURCE.name, exc)
                return None
            log.info("compiled %s into %s (once)", LOCAL_FS_SOURCE.name, jar.path)
        return jar

    def compile(self, javac: Path) -> None:
        """Compile LOCAL_FS_SOURCE against this pyspark's jars into the jar at ``path``; a jar already
        there (another process's) is kept: the class archives of sessions that used it need it as it is."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.path.parent) as scratch:
            classes = Path(scratch) / "classes"
            jars = _spark_home() / "jars" / "*"
            command = [str(javac), "-nowarn", "-cp", str(jars), "-d", str(classes), str(LOCAL_FS_SOURCE)]
            subprocess.run(command, check=True, capture_output=True, timeout=120)
            built = Path(scratch) / "built.jar"
            with zipfile.ZipFile(built, "w") as archive:
                for item in sorted(classes.rglob("*.class")):
                    archive.write(item, item.relative_to(classes).as_posix())
            with contextlib.suppress(FileExistsError):
                os.link(built, self.path)  # never replaces one that is there

    def conf(self) -> dict[str, str]:
        return {"spark.driver.extraClassPath": str(self.path), "spark.hadoop.fs.file.impl": LOCAL_FS_CLASS}


def quick_jit(input_bytes: int | None) -> bool:
    """Whether a local driver JVM for ``input_bytes`` of input compiles with C1 only.

    A short run spends much of its CPU in the JIT's second tier (C2) compiling Spark's planner and
    generated code that it then hardly runs. With C1 only, the 20,000-customer demo took 0.75x the
    time and 200,000 customers 0.90x, but 1M customers 1.35x, whose scans and aggregations need C2's
    code: hence a bound on the input (4 MiB is about 300,000 customers in parquet). None (a catalog
    table, a remote path: unknown before Spark starts): both tiers.

    >>> quick_jit(330_000), quick_jit(12_000_000), quick_jit(None)
    (True, False, False)
    """
    return input_bytes is not None and input_bytes < QUICK_JIT_BYTES


def local_input_bytes(paths: list[str | None]) -> int | None:
    """Bytes of the files at ``paths`` (files or folders) when every one is on this machine; None when
    one is not (a URI, a glob pattern, a catalog table, a missing path)."""
    disk, total = fs.LocalFileSystem(), 0
    for path in paths:
        if not path or ("://" in path and not path.startswith("file://")) or glob.has_magic(path):
            return None
        local = os.path.abspath(re.sub(r"^file:(//)?", "", path))
        info = disk.get_file_info(local)
        if info.type == fs.FileType.File:
            total += info.size
        elif info.type == fs.FileType.Directory:
            entries = disk.get_file_info(fs.FileSelector(local, recursive=True))
            total += sum(e.size for e in entries if e.type == fs.FileType.File)
        else:
            return None
    return total


def _spark_home() -> Path:
    return Path(os.environ.get("SPARK_HOME") or Path(pyspark.__file__).parent)


def _installation_key(java: Path, version: int) -> str:
    """What a compiled jar and a class archive belong to: this pyspark, its jars, this Java."""
    spark_home = _spark_home()
    jars = sorted(p.name for p in (spark_home / "jars").glob("*.jar"))
    return "|".join([pyspark.__version__, str(java.resolve()), str(version), str(spark_home), *jars])


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _this_java() -> tuple[Path, int] | None:
    """The Java installation pyspark launches and its major version; None when either is unknown."""
    java = _java_home()
    version = _java_version(java) if java else None
    return None if version is None else (java, version)


def _java_home() -> Path | None:
    """The Java installation pyspark launches: JAVA_HOME's, else the first ``java`` on the PATH."""
    if os.environ.get("JAVA_HOME"):
        return Path(os.environ["JAVA_HOME"])
    java = shutil.which("java")
    return Path(java).resolve().parent.parent if java else None


def _java_version(home: Path) -> int | None:
    """The major version in a Java installation's ``release`` file (``JAVA_VERSION="17.0.15"``)."""
    try:
        text = (home / "release").read_text()
    except OSError:
        return None
    match = re.search(r'^JAVA_VERSION="(?:1\.)?(\d+)', text, re.MULTILINE)
    return int(match.group(1)) if match else None


def get_session(settings: SparkSettings, input_bytes: int | None = None) -> SparkSession:
    """The active session if there is one; else a new one, with config filling only what is not set.
    ``input_bytes``: the size of the input the session will read, if known (see ``quick_jit``).

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
        session = local_session(settings, wanted, input_bytes)
    runtime = Runtime(session)
    runtime.set_log_level(settings.log_level, quiet=settings.log_level == "WARN")
    # profiles aggregate a few columns per feature; keep Spark from warning about long plan strings
    session.conf.set("spark.sql.debug.maxToStringFields", "1000")
    log.info("Spark %s, master %s", session.version, runtime.master)
    return session


def local_session(settings: SparkSettings, wanted: dict[str, str], input_bytes: int | None) -> SparkSession:
    """A new session on ``spark.master`` with LOCAL_DEFAULTS and a driver memory fit for the machine
    under the config's settings; in local mode a driver JVM from the class archive, with C1 only for a
    small input (unless the config sets spark.driver.extraJavaOptions itself), and Hadoop's local file
    system without a chmod process per file (unless it sets the class path or ``fs.file.impl``)."""
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
    archive, archive_options, local_fs = None, "", None
    own_class_path = {"spark.driver.extraClassPath", "spark.hadoop.fs.file.impl"} & wanted.keys()
    if local_cores(settings.master) and not own_class_path:
        local_fs = LocalFileSystemJar.for_this_spark()
        if local_fs is not None:
            merged |= local_fs.conf()
    own_jvm_options = "spark.driver.extraJavaOptions" in wanted  # the config's stay as they are
    if local_cores(settings.master) and not own_jvm_options:
        archive = ClassArchive.for_this_spark(local_fs.path if local_fs else None)
        if quick_jit(input_bytes):
            log.info(
                "input of %.1f MB: the driver JVM compiles with C1 only (%s)", input_bytes / 1e6, QUICK_JIT
            )
            merged["spark.driver.extraJavaOptions"] += " " + QUICK_JIT
    if archive is not None:
        archive_options = archive.java_options()
        merged["spark.driver.extraJavaOptions"] += " " + archive_options
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
    if archive is not None:
        archive.keep_when_written(session, archive_options)
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
