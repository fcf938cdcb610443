"""A spark-submit driver for tests only: the job, with its input made to fail once, in the first
attempt of partition 0's task (the first one to run it; a marker file makes it fail only once).

spark-submit --master local[2,3] tests/flaky_driver.py MARKER --config FILE [--set ...]

Production code has no hook for this: the driver wraps ``segspark.steps.read_source`` before running.
"""

from __future__ import annotations

import os
import sys

from pyspark import TaskContext

import segspark.steps
from segspark.cli import main


def fail_first_attempt(marker: str):
    def pass_through(index, rows):
        context = TaskContext.get()
        if index == 0 and context.attemptNumber() == 0:
            try:
                descriptor = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:  # failed once already
                pass
            else:
                with os.fdopen(descriptor, "w") as out:
                    out.write("partition 0, attempt 0")
                raise RuntimeError("injected failure in the first attempt of partition 0")
        yield from rows

    return pass_through


def flaky(read_source, marker: str):
    def read(spark, source, *args, **kwargs):
        frame = read_source(spark, source, *args, **kwargs)
        rows = frame.rdd.mapPartitionsWithIndex(fail_first_attempt(marker), preservesPartitioning=True)
        return spark.createDataFrame(rows, frame.schema)

    return read


if __name__ == "__main__":
    segspark.steps.read_source = flaky(segspark.steps.read_source, sys.argv[1])
    sys.exit(main(["run", *sys.argv[2:]]))
