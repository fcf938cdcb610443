"""The run's manifest (``runs/<run_id>/manifest.json``) as a typed model.

A run builds it once from its steps' results (``job.py``) and writes it as JSON; ``score``, ``report``,
``history``, the next run's segment ids and the CLI's summary read it back through these models.

The JSON keeps the shape other people's scripts read: a section or key that a run does not have is left
out (not written as null), exactly as before the model existed. That is what ``exclude_unset`` gives:
a manifest written, or read back, holds the keys it was given and no others. Every field newer than the
first manifests has a default, so the manifests of earlier versions (without ``catalog``, ``rules``,
``space``, ...) still load. NaN (a metric that was not computed) is written as null, as strict JSON wants.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from segspark.config import OutputSettings, SegmentSettings
from segspark.lake import Lake

MANIFEST_FILE = "manifest.json"
RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"


class _Part(BaseModel):
    # keys a newer version added are ignored when an older reader loads its manifest
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class SparkApplication(_Part):
    id: str | None = None
    event_log: str | None = None  # the history server shows the run's jobs from here
    remote: str | None = None  # the Spark Connect server (written by runs over Spark Connect)


class RunSettings(_Part):
    """The settings the run was made with (``Settings.to_dict()``); the sections readers use are typed."""

    spark: dict[str, Any] = Field(default_factory=dict)
    input: dict[str, Any] = Field(default_factory=dict)
    features: dict[str, Any] = Field(default_factory=dict)
    model: dict[str, Any] = Field(default_factory=dict)
    segments: SegmentSettings = Field(default_factory=SegmentSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class Features(_Part):
    id_column: str = ""
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    log: list[str] = Field(default_factory=list)
    sensitive_excluded: list[str] = Field(default_factory=list)
    not_numeric: list[str] = Field(default_factory=list)
    sensitive_allowed: list[str] = Field(default_factory=list)
    sensitive_terms: list[str] = Field(default_factory=list)
    audit_only: list[str] = Field(default_factory=list)
    clip: dict[str, list[float]] | None = None  # feature -> [lower, upper] in original units


class OrderRows(_Part):
    read: int
    valid: int
    rejected: int


class Orders(_Part):
    as_of: str | None = None
    as_of_rule: str | None = None
    features: list[str] = Field(default_factory=list)
    categories: dict[str, str] = Field(default_factory=dict)
    replaced_customer_columns: list[str] = Field(default_factory=list)
    rows: OrderRows | None = None
    rejected_by_reason: dict[str, int] = Field(default_factory=dict)
    customers_with_orders: int | None = None
    customers_without_orders: int | None = None
    customers_with_orders_not_in_customers: int | None = None


class Consent(_Part):
    column: str
    allowed: list[str | int | float | bool] = Field(default_factory=list)
    rejected: int = 0  # customers left out for lack of consent


class MigrationCell(_Part):
    from_: int = Field(alias="from")  # -1: not in the earlier run
    to: int  # -1: not assigned in this run
    customers: int


class Migration(_Part):
    previous_run: str
    matrix: list[MigrationCell] = Field(default_factory=list)


class Rows(_Part):
    read: int
    assigned: int
    rejected: int


class KScore(_Part):
    k: int
    silhouette: float | None = None


class Stability(_Part):
    runs: int
    k: int
    mean_ari: float
    ari: list[float] = Field(default_factory=list)


class KMetrics(_Part):
    """One row of ``k_metrics/``: an algorithm at one k."""

    algorithm: str = "kmeans"
    k: int
    clusters: int | None = None
    silhouette: float | None = None
    wssse: float | None = None
    calinski_harabasz: float | None = None
    davies_bouldin: float | None = None
    gap: float | None = None
    gap_sd: float | None = None
    restart_gain: float | None = None
    starts: int | None = None
    confirmed: bool | None = None
    seconds: float | None = None
    chosen: bool = False


class KChoice(_Part):
    """The chosen k, the rule that chose it, and how clearly it won."""

    algorithm: str = "kmeans"
    chosen: int
    silhouette: float | None = None
    rule: str = ""
    selection: str = "silhouette"
    sweep_rows: int | None = None
    runner_up: KScore | None = None
    margin: float | None = None
    noise: float | None = None
    near_tie: bool = False
    verdict: str | None = None
    kept_earlier: bool = False
    confirmed: bool | None = None
    stability: Stability | None = None
    metrics: list[KMetrics] = Field(default_factory=list)


class Space(_Part):
    """The scaled space the segments live in: the model's vector columns and the scaler's moments."""

    vector_columns: list[str] = Field(default_factory=list)
    scaler_mean: list[float] = Field(default_factory=list)
    scaler_std: list[float] = Field(default_factory=list)


class Segment(_Part):
    segment: int
    segment_name: str
    size: int = 0
    share: float = 0.0
    action: str | None = None
    outliers: int | None = None  # with assignments.outlier
    control: int | None = None  # with output.control_share
    treatment: int | None = None
    cluster: int | None = None  # the model's cluster index
    center_unscaled: list[float] | None = None  # before scaling (after impute and log1p)
    outlier_threshold: float | None = None
    rule: str | None = None  # with rules: None when the tree has no leaf for the segment
    rule_precision: float | None = None
    rule_coverage: float | None = None


class Outliers(_Part):
    quantile: float
    method: str = ""


class Quantiles(_Part):
    every: int = 1  # 1: of all customers; n: of those whose pmod(xxhash64(id), n) = 0 (small segments: all)
    method: str = ""


class RulesSection(_Part):
    method: str
    depth: int
    missing_as: dict[str, float] = Field(default_factory=dict)


class Control(_Part):
    share: float
    salt: str
    hash: str = ""
    tolerance: str = ""


class Catalog(_Part):
    database: str
    tables: list[str] = Field(default_factory=list)
    views: list[str] = Field(default_factory=list)
    run_ts: str = ""


class Manifest(_Part):
    """manifest.json. A failed run's manifest has what its steps got to, and ``error``."""

    run_id: str
    status: str = RUNNING
    started_at: str = ""
    versions: dict[str, str] = Field(default_factory=dict)
    spark_master: str = ""
    spark_application: SparkApplication | None = None
    settings: RunSettings = Field(default_factory=RunSettings)
    warnings: list[str] = Field(default_factory=list)  # plain sentences: tiny segments, near ties, drift
    orders: Orders | None = None
    features: Features | None = None
    consent: Consent | None = None
    migration: Migration | None = None
    finished_at: str | None = None
    rows: Rows | None = None
    k: KChoice | None = None
    space: Space | None = None
    segments: list[Segment] = Field(default_factory=list)
    outliers: Outliers | None = None
    quantiles: Quantiles | None = None
    rules: RulesSection | None = None
    control: Control | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)
    catalog: Catalog | None = None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCEEDED

    def to_dict(self) -> dict[str, Any]:
        """The manifest as plain JSON values: the keys it was given, NaN as None."""
        return plain(self.model_dump(mode="json", by_alias=True, exclude_unset=True))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"


def read_manifest(lake: Lake, run_dir: str) -> Manifest:
    """The manifest of the run folder ``run_dir`` (published or staged)."""
    return Manifest.model_validate_json(lake.read_text(f"{run_dir}/{MANIFEST_FILE}"))


def plain(value: Any) -> Any:
    """JSON-ready: numpy scalars as Python values, NaN as None (strict JSON has no NaN).

    >>> import numpy as np
    >>> plain({"k": np.int64(3), "gap": float("nan"), "ari": (np.float64(0.5), float("inf"))})
    {'k': 3, 'gap': None, 'ari': [0.5, None]}
    """
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
