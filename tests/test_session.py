"""Session settings: local defaults, what ``spark.event_log`` stands for, Spark settings checked up front."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest
import yaml

from segspark.cli import main
from segspark.config import SparkSettings
from segspark.errors import ConfigError
from segspark.session import (
    LOCAL_FS_CLASS,
    QUICK_JIT,
    QUICK_JIT_BYTES,
    ClassArchive,
    LocalFileSystemJar,
    get_session,
    local_cores,
    local_defaults,
    local_input_bytes,
)


def test_local_shuffles_have_one_partition_per_core_and_at_least_two():
    assert local_cores("local[3]") == 3 and local_cores("local[2,3]") == 2 and local_cores("local") == 1
    assert local_defaults("local[3]")["spark.sql.shuffle.partitions"] == "3"
    assert local_defaults("local[3]")["spark.default.parallelism"] == "3"
    assert local_defaults("local")["spark.sql.shuffle.partitions"] == "2"


def test_event_log_stands_for_the_two_spark_settings_and_yields_to_explicit_ones():
    assert SparkSettings().effective_conf() == {}
    logged = SparkSettings(event_log="/var/log/spark-events", conf={"spark.ui.enabled": False})
    assert logged.effective_conf() == {
        "spark.ui.enabled": "False",
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": "/var/log/spark-events",
    }
    explicit = SparkSettings(event_log="/a", conf={"spark.eventLog.dir": "hdfs:///history"})
    assert explicit.effective_conf()["spark.eventLog.dir"] == "hdfs:///history"


def test_a_bad_spark_sql_setting_is_a_config_error_naming_the_key(spark):
    settings = SparkSettings(conf={"spark.sql.shuffle.partitions": "{bad"})
    with pytest.raises(ConfigError, match=r"spark\.conf\.spark\.sql\.shuffle\.partitions: .*'\{bad'"):
        get_session(settings)
    assert spark.range(3).groupBy("id").count().count() == 3  # the running session is untouched


def test_a_bad_spark_setting_on_the_command_line_exits_2_naming_the_key(spark, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"input": {"customers": {"path": str(tmp_path / "none")}}}))
    code = main(["run", "--config", str(config), "--set", "spark.conf.spark.sql.shuffle.partitions={bad"])
    assert code == 2
    err = capsys.readouterr().err
    assert "spark.sql.shuffle.partitions" in err and "Traceback" not in err


JVM_OF_A_LOCAL_SESSION = """
import os, sys
from segspark.config import SparkSettings
from segspark.session import get_session
sizes = [int(a.removeprefix("bytes=")) for a in sys.argv[1:] if a.startswith("bytes=")]
spark = get_session(SparkSettings(master="local[1]", conf={"spark.ui.enabled": False}), *sizes)
spark.range(3).count()
pid = spark.sparkContext._gateway.proc.pid
with open(f"/proc/{pid}/cmdline") as cmdline, open(f"/proc/{pid}/maps") as maps:
    print(cmdline.read().replace("\\0", " "))
    print("mapped:", sorted({line.split()[-1] for line in maps if line.rstrip().endswith(".jsa")}))
if "files" in sys.argv[1:]:  # what the local file system is, and the permissions it gives
    jvm = spark._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    filesystem = jvm.org.apache.hadoop.fs.FileSystem.get(jvm.java.net.URI("file:///"), conf)
    print("filesystem:", filesystem.getClass().getName())
    folder = os.path.join(os.environ["XDG_CACHE_HOME"], "written")
    spark.range(3).write.parquet(folder)
    with open(os.path.join(folder, "own"), "w"):
        pass
    mode = jvm.org.apache.hadoop.fs.permission.FsPermission
    filesystem.setPermission(jvm.org.apache.hadoop.fs.Path(folder, "own"), mode(0o640))
    filesystem.setPermission(jvm.org.apache.hadoop.fs.Path(folder), mode(0o1777))
sys.stdout.flush()
if "killed" in sys.argv[1:]:
    os._exit(0)  # no clean end: the atexit handlers never run
"""


def _local_jvm(cache, *args: str) -> str:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    done = subprocess.run(
        [sys.executable, "-c", JVM_OF_A_LOCAL_SESSION, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        umask=0o077,  # the JVM inherits it: files that Hadoop did not chmod would be 600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_local_jvm_maps_the_class_archive_only_after_one_was_written_by_a_clean_exit(tmp_path):
    folder = tmp_path / "segspark"
    killed = _local_jvm(tmp_path, "killed")  # records, but its program ends without waiting for it
    assert "-XX:ArchiveClassesAtExit=" in killed and QUICK_JIT not in killed  # input size unknown
    time.sleep(5)  # its JVM writes the archive on its own; it stays a part, never the archive
    assert not list(folder.glob("*.jsa"))

    recorded = _local_jvm(tmp_path, f"bytes={QUICK_JIT_BYTES}")  # not below the bound: both JIT tiers
    assert "-XX:ArchiveClassesAtExit=" in recorded and QUICK_JIT not in recorded
    (archive,) = folder.glob("*.jsa")
    assert archive.stat().st_size > 50 * 2**20  # Spark's classes: hundreds of MB, not a stub

    mapped = _local_jvm(tmp_path, f"bytes={QUICK_JIT_BYTES - 1}", "files")  # a small input: C1 only
    assert f"-XX:SharedArchiveFile={archive}" in mapped and f" {QUICK_JIT} " in mapped
    (maps,) = [line for line in mapped.splitlines() if line.startswith("mapped:")]
    assert repr(str(archive)) in maps  # the JVM really maps it (besides the JDK's own archive) under C1 too
    (jar,) = folder.glob("hadoop-fs-*.jar")  # compiled by the first session, on every session's class path
    assert f"-cp {jar}:" in mapped and f"filesystem: {LOCAL_FS_CLASS}" in mapped

    # Hadoop's permissions, whatever the process's umask (077 in _local_jvm: 600 files, 700 folders)
    written = tmp_path / "written"
    modes = {p.relative_to(written).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in written.rglob("*")}
    parts = [name for name in modes if name.startswith("part-")]
    assert parts and {modes[name] for name in parts} == {0o644}  # 666 less Hadoop's umask 022
    assert modes[f".{parts[0]}.crc"] == 0o644 and modes["_SUCCESS"] == 0o644
    assert modes["own"] == 0o640  # set through java.nio
    assert stat.S_IMODE(written.stat().st_mode) == 0o1777  # the sticky bit: through chmod, as Hadoop does


def test_without_a_javac_local_sessions_keep_hadoops_file_system(tmp_path, monkeypatch):
    jre = tmp_path / "jre"
    (jre / "bin").mkdir(parents=True)
    (jre / "release").write_text('JAVA_VERSION="17.0.15"\n')
    monkeypatch.setenv("JAVA_HOME", str(jre))
    assert LocalFileSystemJar.for_this_spark() is None


def test_the_class_archives_kept_are_the_ones_used_last(tmp_path):
    now = time.time()
    archives = [tmp_path / f"spark-{name}.jsa" for name in "abcd"]  # written in this order, a first
    for age, archive in zip((400, 300, 200, 100), archives, strict=True):
        archive.write_bytes(b"")
        os.utime(archive, (now - age, now - age))
    options = ClassArchive(archives[0]).java_options()  # a run maps the oldest: used last now
    assert f"-XX:SharedArchiveFile={archives[0]}" in options
    ClassArchive.evict(tmp_path)  # as after an archive is written: the three used last stay, b goes
    assert sorted(p.name for p in tmp_path.glob("*.jsa")) == ["spark-a.jsa", "spark-c.jsa", "spark-d.jsa"]


def test_the_class_archive_is_off_with_segspark_no_class_archive(monkeypatch):
    monkeypatch.delenv("SEGSPARK_NO_CLASS_ARCHIVE", raising=False)
    assert ClassArchive.for_this_spark() is not None  # this machine: Java 17
    monkeypatch.setenv("SEGSPARK_NO_CLASS_ARCHIVE", "1")
    assert ClassArchive.for_this_spark() is None


def test_the_input_size_counts_every_file_of_local_paths_and_is_unknown_otherwise(tmp_path):
    folder = tmp_path / "customers.parquet"
    (folder / "part=1").mkdir(parents=True)
    (folder / "part-0.parquet").write_bytes(b"x" * 1000)
    (folder / "part=1" / "part-1.parquet").write_bytes(b"x" * 234)
    (folder / "_SUCCESS").write_bytes(b"")
    orders = tmp_path / "orders.csv"
    orders.write_text("a,b\n1,2\n")  # 8 bytes
    assert local_input_bytes([str(folder)]) == 1234
    assert local_input_bytes([f"file://{folder}", str(orders)]) == 1234 + 8
    assert local_input_bytes([f"file:{orders}"]) == 8
    for unknown in ("s3a://bucket/customers", str(tmp_path / "*.parquet"), str(tmp_path / "missing"), None):
        assert local_input_bytes([str(orders), unknown]) is None
