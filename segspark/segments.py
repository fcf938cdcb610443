"""Segment ids that keep their meaning from run to run, and the assignments table.

k-means numbers its clusters arbitrarily. A run turns each ``cluster`` into a ``segment`` id:
- with no earlier run, segment 0 is the largest cluster, 1 the next, and so on;
- with an earlier run (``latest``), each cluster is matched one-to-one to an earlier segment by the
  distance between centroids in this run's scaled space (Hungarian algorithm, minimum total distance),
  and takes its id; clusters left over get new ids after the highest earlier one.
The manifest keeps each segment's cluster and centroid, so scoring and the next run can use them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyspark.sql.functions as F
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame
from scipy.optimize import linear_sum_assignment

from segspark.algorithms import ALGORITHMS
from segspark.manifest import Manifest
from segspark.metrics import CLUSTER, DISTANCE, FEATURES, SEGMENT
from segspark.validate import col

log = logging.getLogger(__name__)

OUTPUT_ID = "customer_id"  # the id column's name in every output, whatever the input calls it
NEW_CUSTOMER = -1  # "from" in the migration matrix: not in the earlier run
NOT_ASSIGNED = -1  # "to": in the earlier run, not assigned in this one


@dataclass(frozen=True)
class EarlierRun:
    """What a new run needs from the run ``latest`` pointed at when it started."""

    run_id: str
    vector_columns: list[str]
    segments: dict[int, list[float]]  # segment id -> centroid before scaling (after impute and log1p)
    assignments_path: str
    format: str


def earlier_run(manifest: Manifest, run_dir: str) -> EarlierRun | None:
    """What the run of ``manifest`` in ``run_dir`` leaves the next run; None for a run without
    segment centroids (a failed run, or one from before the manifest kept its space)."""
    if not manifest.succeeded or not manifest.space:
        return None
    segments = {s.segment: s.center_unscaled for s in manifest.segments}
    fmt = manifest.settings.output.format
    return EarlierRun(manifest.run_id, manifest.space.vector_columns, segments, f"{run_dir}/assignments", fmt)


def segment_ids(
    centers_unscaled: np.ndarray,
    sizes: dict[int, int],
    mean: np.ndarray,
    std: np.ndarray,
    vector_columns: list[str],
    earlier: EarlierRun | None,
) -> dict[int, int]:
    """cluster index -> segment id (see the module docstring)."""
    clusters = sorted(sizes, key=lambda c: (-sizes[c], c))  # largest first
    if earlier is None:
        return {cluster: i for i, cluster in enumerate(clusters)}
    if earlier.vector_columns != vector_columns:
        log.warning(
            "the features differ from run %s (%s vs %s): segment ids start afresh",
            earlier.run_id,
            earlier.vector_columns,
            vector_columns,
        )
        return {cluster: i for i, cluster in enumerate(clusters)}
    scale = np.where(std > 0, std, 1.0)
    ids = sorted(earlier.segments)
    new = (centers_unscaled[clusters] - mean) / scale
    old = (np.array([earlier.segments[s] for s in ids]) - mean) / scale
    cost = np.linalg.norm(new[:, None, :] - old[None, :, :], axis=2)
    rows, cols = linear_sum_assignment(cost)
    mapping = {clusters[r]: ids[c] for r, c in zip(rows, cols, strict=True)}
    next_id = max(ids) + 1
    for cluster in clusters:  # more segments than before: new ids, largest first
        if cluster not in mapping:
            mapping[cluster] = next_id
            next_id += 1
    log.info("segment ids matched to run %s: %s", earlier.run_id, dict(sorted(mapping.items())))
    return mapping


def lookup(mapping: dict, key: Column) -> Column:
    """A literal map from a small Python dict, applied to a column."""
    pairs = [part for k, v in sorted(mapping.items()) for part in (F.lit(k), F.lit(v))]
    return F.element_at(F.create_map(*pairs), key)


def with_segment(clustered: DataFrame, segment_of_cluster: dict[int, int]) -> DataFrame:
    return clustered.withColumn(SEGMENT, lookup(segment_of_cluster, F.col(CLUSTER)))


def distance_to_center(centers: list[list[float]]) -> Column:
    """Euclidean distance in the scaled space from each customer to its cluster's centroid.

    Plain arithmetic per dimension (the squares summed from 0.0 in the features' order), which Spark
    compiles into the query; higher-order functions over arrays cost several times as much at 10M rows.
    """
    features = vector_to_array(F.col(FEATURES))
    total = F.lit(0.0)
    for j in range(len(centers[0])):
        centre = F.element_at(F.array(*[F.lit(float(c[j])) for c in centers]), F.col(CLUSTER) + 1)
        difference = features[j] - centre
        total = total + difference * difference
    return F.sqrt(total)


def assignments(
    segmented: DataFrame, id_column: str, names: dict[int, str], algorithm: str = "kmeans"
) -> DataFrame:
    """The assignments table: customer_id, segment, segment_name, distance (+ the algorithm's own
    columns: a mixture's probability); ``segmented`` has ``distance`` (``distance_to_center``)."""
    return segmented.select(
        col(id_column).alias(OUTPUT_ID),
        F.col(SEGMENT),
        lookup(names, F.col(SEGMENT)).alias("segment_name"),
        F.col(DISTANCE),
        *[output().alias(name) for name, output in ALGORITHMS[algorithm].outputs.items()],
    )


def migration(earlier: DataFrame, current: DataFrame) -> list[dict[str, int]]:
    """Customers per (earlier segment, current segment); -1 stands for "not in that run"."""
    moves = (
        earlier.select(F.col(OUTPUT_ID), F.col(SEGMENT).alias("from"))
        .join(current.select(F.col(OUTPUT_ID), F.col(SEGMENT).alias("to")), on=OUTPUT_ID, how="full")
        .groupBy(
            F.coalesce(F.col("from"), F.lit(NEW_CUSTOMER)).alias("from"),
            F.coalesce(F.col("to"), F.lit(NOT_ASSIGNED)).alias("to"),
        )
        .agg(F.count(F.lit(1)).alias("customers"))
    )
    # at most (k + 1)^2 rows: sorted here, not by a Spark sort (a sampling job and a stage more)
    return sorted((row.asDict() for row in moves.collect()), key=lambda move: (move["from"], move["to"]))
