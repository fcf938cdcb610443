"""The one place segspark reaches the Spark runtime and the lake's storage, classic or Spark Connect.

A classic session (local mode, spark-submit, a cluster) has a JVM in this process: the runtime is read
from its ``SparkContext`` and files go through Hadoop's FileSystem API, so whatever file systems the
cluster's Hadoop configuration knows (HDFS, s3a, abfs, ...) work as they do for Spark itself.

A Spark Connect session (``sc://``: Databricks serverless and shared clusters, a Spark 4 Connect server)
has no JVM here: no ``sparkContext``, no RDDs, no py4j. The runtime is read from the session's
configuration, jobs are labelled with job tags, and files go through ``pyarrow.fs`` from this process:
local paths, ``hdfs://`` (with libhdfs) and ``s3://``. The lake must therefore be storage that this
process and the Connect server both reach under the same path. What degrades, and how:
  - job labels are tags (``segspark-<step>``, no commas); the server's UI lists them per job;
  - the log level and the quiet loggers belong to the server; segspark leaves them alone;
  - replacing ``latest``: atomic on a local or HDFS file system (a rename), copy-then-delete on S3.
Nothing else in segspark imports py4j or touches ``sparkContext``.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import pyspark.sql.functions as F
from pyarrow import fs
from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

# Loggers whose warnings a successful run raises on purpose or that nobody can act on (see
# log4j2.properties); set again once a classic session runs, for JVMs started without that file.
QUIET_LOGGERS = (
    "org.apache.spark.ml.util.Instrumentation",  # "Input vectors will be blockified ... double caching"
    "dev.ludovic.netlib",  # no native BLAS: the Java implementation is used
    "org.apache.hadoop.util.NativeCodeLoader",
)
ALLOW_NATIVE_BLAS = "dev.ludovic.netlib.blas.allowNative"
DEFAULT_EVENT_LOG_DIR = "file:/tmp/spark-events"


def is_connect(spark: SparkSession) -> bool:
    """Whether ``spark`` is a Spark Connect session (pyspark 3.4+ has both kinds)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def first_line(exc: Exception) -> str:
    """The first line of an error's message (a Java one runs on for pages)."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def quiet_gateway_logging() -> None:
    """py4j logs every closed gateway connection at INFO; keep that out of segspark's log."""
    logging.getLogger("py4j").setLevel(logging.WARNING)


class Storage(Protocol):
    """File operations on the lake: what publishing a run needs."""

    def exists(self, path: str) -> bool: ...
    def is_dir(self, path: str) -> bool: ...
    def delete(self, path: str) -> None: ...  # a file or a whole folder; nothing when it is missing
    def mkdirs(self, path: str) -> None: ...
    def list_dirs(self, path: str) -> list[str]: ...  # folder names directly in path, sorted
    def read_text(self, path: str) -> str: ...
    def write_text(self, path: str, text: str) -> None: ...
    def rename(self, source: str, target: str, overwrite: bool = False) -> None: ...


@dataclass
class Runtime:
    """The Spark runtime behind a session: where it runs, its application, job labels, log settings."""

    spark: SparkSession

    @property
    def connect(self) -> bool:
        return is_connect(self.spark)

    @property
    def master(self) -> str:
        """``local[*]``, ``yarn``, ``spark://...``; over Connect, the server's master as it reports it."""
        if self.connect:
            return self.spark.conf.get("spark.master", None) or "unknown (Spark Connect)"
        return self.spark.sparkContext.master

    @property
    def local(self) -> bool:
        return self.master.startswith("local")

    @property
    def application_id(self) -> str | None:
        if self.connect:
            return self.spark.conf.get("spark.app.id", None)
        return self.spark.sparkContext.applicationId

    @property
    def remote(self) -> str | None:
        """The ``sc://host:port`` of a Connect session's server (no token), None for a classic one."""
        if not self.connect:
            return None
        try:
            return f"sc://{self.spark.client._builder.endpoint}"
        except AttributeError:  # another client version: the address it was given, less any token
            return re.sub(r"/;.*$", "", os.environ.get("SPARK_REMOTE", "sc://")) or None

    def driver_process(self):
        """The ``subprocess.Popen`` of the driver JVM this process launched (a local session started by
        pyspark), else None (spark-submit started the JVM, or Connect has none here)."""
        if self.connect:
            return None
        return getattr(self.spark.sparkContext._gateway, "proc", None)

    def conf_value(self, key: str) -> str | None:
        """A setting as the application started with it (static ones included)."""
        if self.connect:
            return self.spark.conf.get(key, None)
        conf = self.spark.sparkContext.getConf()
        return conf.get(key) if conf.contains(key) else None

    def event_log_dir(self) -> str | None:
        """Where this application's event log goes, or None when event logging is off."""
        if (self.conf_value("spark.eventLog.enabled") or "false").lower() != "true":
            return None
        return self.conf_value("spark.eventLog.dir") or DEFAULT_EVENT_LOG_DIR

    @contextmanager
    def label(self, name: str) -> Iterator[None]:
        """Label the Spark jobs started inside: a job description (classic) or a job tag (Connect)."""
        if self.connect:
            tag = "segspark-" + re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")
            self.spark.addTag(tag)
            try:
                yield
            finally:
                self.spark.removeTag(tag)
            return
        context = self.spark.sparkContext
        context.setJobDescription(f"segspark: {name}")
        try:
            yield
        finally:
            context.setJobDescription(None)

    def set_log_level(self, level: str, quiet: bool) -> None:
        """The JVM's log level, and with ``quiet`` the QUIET_LOGGERS at ERROR and no native BLAS probe
        (its loader prints a ``dlopen`` failure from C, past any log setting). Over Connect the log is the
        server's: nothing to do here."""
        if self.connect:
            return
        self.spark.sparkContext.setLogLevel(level)
        if not quiet:
            return
        jvm = self.spark.sparkContext._jvm
        error = jvm.org.apache.logging.log4j.Level.ERROR
        for name in QUIET_LOGGERS:
            jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, error)
        if (
            self.local
            and ctypes.util.find_library("blas") is None
            and jvm.java.lang.System.getProperty(ALLOW_NATIVE_BLAS) is None
        ):
            jvm.java.lang.System.setProperty(ALLOW_NATIVE_BLAS, "false")

    def sql_conf_error(self, key: str, value: str) -> Exception | None:
        """Spark's own objection to ``key=value`` for a ``spark.sql.*`` setting, without applying it
        (classic: a scratch SQLConf); over Connect the server checks it as the session sets it."""
        try:
            if self.connect:
                self.spark.conf.set(key, value)
            else:
                self.spark.sparkContext._jvm.org.apache.spark.sql.internal.SQLConf().setConfString(key, value)
        except Exception as exc:
            return exc
        return None

    def storage(self) -> Storage:
        return ArrowStorage() if self.connect else HadoopStorage(self.spark)


class Caches:
    """DataFrames persisted for one run (or one scoring), unpersisted together when it ends.

    Call it on a DataFrame to persist it and keep it; ``release`` unpersists them all."""

    def __init__(self) -> None:
        self._frames: list[DataFrame] = []

    def __call__(self, df: DataFrame) -> DataFrame:
        self._frames.append(df.persist())
        return self._frames[-1]

    def __len__(self) -> int:
        return len(self._frames)

    def release(self) -> None:
        for df in self._frames:
            df.unpersist()
        self._frames.clear()


def empty_frame(spark: SparkSession, schema) -> DataFrame:
    """An empty DataFrame of ``schema``, built in Spark itself (no RDD, no Python worker)."""
    columns = [F.lit(None).cast(field.dataType).alias(field.name) for field in schema.fields]
    return spark.range(0).select(*columns)


class HadoopStorage:
    """Storage through Hadoop's FileSystem API in the driver's JVM (classic sessions)."""

    def __init__(self, spark: SparkSession) -> None:
        self._context = spark.sparkContext
        self._jvm = self._context._jvm
        self._conf = self._context._jsc.hadoopConfiguration()

    def _path(self, path: str):
        return self._jvm.org.apache.hadoop.fs.Path(path)

    def _fs(self, path: str):
        return self._path(path).getFileSystem(self._conf)

    def exists(self, path: str) -> bool:
        return bool(self._fs(path).exists(self._path(path)))

    def is_dir(self, path: str) -> bool:
        return bool(self._fs(path).isDirectory(self._path(path)))

    def delete(self, path: str) -> None:
        self._fs(path).delete(self._path(path), True)

    def mkdirs(self, path: str) -> None:
        self._fs(path).mkdirs(self._path(path))

    def list_dirs(self, path: str) -> list[str]:
        if not self.exists(path):
            return []
        statuses = self._fs(path).listStatus(self._path(path))
        return sorted(str(s.getPath().getName()) for s in statuses if s.isDirectory())

    def read_text(self, path: str) -> str:
        stream = self._fs(path).open(self._path(path))
        try:
            reader = self._jvm.java.io.BufferedReader(self._jvm.java.io.InputStreamReader(stream, "UTF-8"))
            lines = []
            line = reader.readLine()
            while line is not None:
                lines.append(line)
                line = reader.readLine()
            return "\n".join(lines)
        finally:
            stream.close()

    def write_text(self, path: str, text: str) -> None:
        filesystem = self._fs(path)
        filesystem.setWriteChecksum(False)
        stream = filesystem.create(self._path(path), True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()

    def rename(self, source: str, target: str, overwrite: bool = False) -> None:
        """Rename through FileContext: with ``overwrite`` it replaces ``target`` atomically."""
        options = self._jvm.org.apache.hadoop.fs.Options.Rename
        flags = self._context._gateway.new_array(options, 1)
        flags[0] = options.OVERWRITE if overwrite else options.NONE
        context = self._jvm.org.apache.hadoop.fs.FileContext.getFileContext(
            self._path(source).toUri(), self._conf
        )
        context.rename(self._path(source), self._path(target), flags)


class ArrowStorage:
    """Storage through ``pyarrow.fs`` in this process (Spark Connect sessions): a local path or
    ``file:``, ``hdfs://`` or ``s3://`` URI."""

    def _resolve(self, path: str):
        if "://" not in path and not path.startswith("file:"):
            return fs.LocalFileSystem(), os.path.abspath(path)
        if path.startswith("file:") and not path.startswith("file://"):
            path = "file://" + path.removeprefix("file:")  # Spark writes file:/x, Arrow wants file:///x
        return fs.FileSystem.from_uri(path)

    def _info(self, path: str):
        filesystem, local = self._resolve(path)
        return filesystem, local, filesystem.get_file_info(local)

    def exists(self, path: str) -> bool:
        return self._info(path)[2].type != fs.FileType.NotFound

    def is_dir(self, path: str) -> bool:
        return self._info(path)[2].type == fs.FileType.Directory

    def delete(self, path: str) -> None:
        filesystem, local, info = self._info(path)
        if info.type == fs.FileType.Directory:
            filesystem.delete_dir(local)
        elif info.type != fs.FileType.NotFound:
            filesystem.delete_file(local)

    def mkdirs(self, path: str) -> None:
        filesystem, local = self._resolve(path)
        filesystem.create_dir(local, recursive=True)

    def list_dirs(self, path: str) -> list[str]:
        filesystem, local, info = self._info(path)
        if info.type != fs.FileType.Directory:
            return []
        entries = filesystem.get_file_info(fs.FileSelector(local))
        return sorted(e.base_name for e in entries if e.type == fs.FileType.Directory)

    def read_text(self, path: str) -> str:
        filesystem, local = self._resolve(path)
        with filesystem.open_input_stream(local) as stream:
            return "\n".join(stream.read().decode("utf-8").splitlines())  # as Hadoop's readLine reads it

    def write_text(self, path: str, text: str) -> None:
        filesystem, local = self._resolve(path)
        parent = os.path.dirname(local.rstrip("/"))
        if parent:
            filesystem.create_dir(parent, recursive=True)
        with filesystem.open_output_stream(local) as stream:
            stream.write(text.encode("utf-8"))

    def rename(self, source: str, target: str, overwrite: bool = False) -> None:
        """A rename (``move``); without ``overwrite`` an existing ``target`` is an error, as in Hadoop."""
        filesystem, local_source = self._resolve(source)
        _, local_target = self._resolve(target)
        if not overwrite and self.exists(target):
            raise FileExistsError(f"rename destination {target} already exists")
        filesystem.move(local_source, local_target)
