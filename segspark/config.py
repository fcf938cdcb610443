"""The settings schema: YAML loading, ``--set key=value`` overrides, validation with clear messages.

Every module receives typed settings from here; no other module reads YAML or the environment.
"""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segspark.algorithms import ALGORITHMS, SELECTIONS
from segspark.errors import ConfigError

# Columns that describe who a person is rather than what they do. Segmenting on them risks
# discriminating; they are refused as features unless listed in ``features.allow_sensitive``.
DEFAULT_SENSITIVE = [
    "gender",
    "sex",
    "ethnicity",
    "race",
    "religion",
    "caste",
    "nationality",
    "marital_status",
    "marital",
    "married",
    "sexual_orientation",
    "disability",
    "pregnancy",
    "political_affiliation",
    "union_membership",
    # age bands stand in for age itself and for the life stage they imply
    "age_band",
    "age_group",
    "age_bracket",
    "age_range",
    "date_of_birth",
    "birth_date",
    "national_origin",
    "citizenship",
]

FREE_FORM_MAPS = {"conf", "options"}  # their keys are Spark's, e.g. spark.conf."spark.sql.shuffle.partitions"
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# a database as SQL names it, optionally in a catalog (Unity Catalog's main.segments): no quoting needed
DATABASE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SparkSettings(_Section):
    master: str = "local[*]"
    conf: dict[str, str | int | float | bool] = Field(default_factory=dict)
    log_level: Literal["ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF"] = "WARN"
    # A folder for Spark's event log (what the history server reads); unset: no event log.
    event_log: str | None = None
    # A Spark Connect server (sc://host:port[/;token=...]) to run on instead of a session of our own;
    # SPARK_REMOTE in the environment does the same. master and the static conf are then the server's.
    remote: str | None = None

    @field_validator("remote")
    @classmethod
    def _connect_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("sc://"):
            raise ValueError(f"a Spark Connect address starts with sc:// (sc://host:15002), not {value!r}")
        return value

    def remote_url(self) -> str | None:
        """The Spark Connect server to use: ``remote``, else ``SPARK_REMOTE``; None for a classic session."""
        return self.remote or os.environ.get("SPARK_REMOTE") or None

    def effective_conf(self) -> dict[str, str]:
        """``conf`` as strings, with the event-log settings that ``event_log`` stands for."""
        conf = {key: str(value) for key, value in self.conf.items()}
        if self.event_log:
            conf.setdefault("spark.eventLog.enabled", "true")
            conf.setdefault("spark.eventLog.dir", self.event_log)
        return conf


class SourceSettings(_Section):
    """Where a table comes from: a path in the lake with a format, or a catalog table."""

    path: str | None = None
    table: str | None = None
    format: Literal["parquet", "csv", "json", "orc"] = "parquet"
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    # A Spark DDL schema ("customer_id STRING, income DOUBLE"); for csv/json instead of inference.
    schema_ddl: str | None = Field(default=None, alias="schema")

    @model_validator(mode="after")
    def _one_location(self) -> SourceSettings:
        if self.path and self.table:
            raise ValueError("give either path or table, not both")
        if not self.path and not self.table:
            raise ValueError("missing: give path (a file or folder in the lake) or table (a catalog table)")
        return self


class ConsentSettings(_Section):
    """Customers whose ``column`` holds none of the ``allowed`` values are left out of the segmentation."""

    column: str
    # compared as text, case-insensitively: true, "yes", "y" and 1 match "TRUE", "Yes", "y" and "1"
    allowed: list[str | int | float | bool] = Field(
        default_factory=lambda: [True, "yes", "y", 1], min_length=1
    )


class CustomersInput(SourceSettings):
    id_column: str = "customer_id"
    consent: ConsentSettings | None = None  # leave out customers without consent to profiling


class OrdersInput(SourceSettings):
    """Raw orders, one row per order: behavioural features per customer are built from them."""

    customer_id: str = "customer_id"
    order_date: str = "order_date"
    amount: str = "amount"
    quantity: str | None = None  # optional: total_quantity per customer
    category: str | None = None  # optional: share of spend per category
    as_of: date | None = None  # reference date for recency and tenure; default: last order date + 1 day
    top_categories: int = Field(default=5, ge=0)  # categories with a share_<category> feature, by spend
    # Spark datetime pattern for text dates that are not ISO (yyyy-MM-dd), e.g. "dd/MM/yyyy"
    date_format: str | None = None


class InputSettings(_Section):
    customers: CustomersInput | None = None
    orders: OrdersInput | None = None

    @model_validator(mode="after")
    def _customers_or_orders(self) -> InputSettings:
        if self.customers is None and self.orders is None:
            raise ValueError(
                "nothing to segment: give input.customers (path or table of a customer table), "
                "input.orders (path or table of raw orders), or both"
            )
        return self


class ClipSettings(_Section):
    """Clip numeric features at these quantiles (of the valid rows) before scaling."""

    lower: float = Field(default=0.0, ge=0, le=1)
    upper: float = Field(default=1.0, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> ClipSettings:
        if self.lower >= self.upper:
            raise ValueError(f"lower ({self.lower}) must be below upper ({self.upper})")
        return self


class FeatureSettings(_Section):
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    log: list[str] = Field(default_factory=list)
    sensitive: list[str] = Field(default_factory=lambda: list(DEFAULT_SENSITIVE))
    allow_sensitive: list[str] = Field(default_factory=list)
    missing: Literal["impute", "reject"] = "impute"
    # e.g. {lower: 0.001, upper: 0.999}: one extreme customer cannot stretch a feature's scale; off by default
    clip: ClipSettings | None = None


class KRange(_Section):
    min: int = Field(default=2, ge=2)
    max: int = Field(default=10, ge=2)

    @model_validator(mode="after")
    def _ordered(self) -> KRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class ModelSettings(_Section):
    algorithm: Literal[tuple(ALGORITHMS)] = "kmeans"
    k: KRange = Field(default_factory=KRange)
    # how k is chosen; a single k (model.k: 5) is used as given
    selection: Literal[tuple(SELECTIONS)] = "silhouette"
    prefer: KRange | None = None  # e.g. {min: 3, max: 5}: the best k inside this range wins
    seed: int = 42
    max_iter: int = Field(default=100, ge=1)  # Lloyd (or EM) iterations per start, at most
    # starts per k, at most: from different seeds, until two reach the best objective (see sweep.fit_k)
    restarts: int = Field(default=10, ge=1)
    confirm_tolerance: float = Field(default=1e-3, gt=0, lt=1)  # relative: "the same objective"
    continuity: bool = True  # a near tie between the earlier run's k and another k keeps the earlier k
    gap: bool = False  # compute the gap statistic even when selection is not gap (it costs B fits per k)
    gap_references: int = Field(default=10, ge=2)  # B, the reference data sets of the gap statistic
    stability_runs: int = Field(default=0, ge=0)  # refits of the chosen k on bootstrap samples; 0: off
    # fit the preparation and choose k (the centres) on a uniform sample of this many customers, then
    # assign all of them; 0: all rows (all collected to the driver)
    sample_size: int = Field(default=50_000, ge=0)
    # k values fitted at the same time, in threads; 1: one k after another
    parallel_fits: int = Field(default=2, ge=1)

    @field_validator("k", mode="before")
    @classmethod
    def _single_k(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("give a whole number or {min: .., max: ..}")
        if isinstance(value, int):
            return {"min": value, "max": value}
        return value

    @property
    def k_values(self) -> list[int]:
        return list(range(self.k.min, self.k.max + 1))


class PlaybookRule(_Section):
    """Attach a suggested action to every segment whose profile matches ``when``."""

    when: dict[str, Literal["high", "low", "typical"]] = Field(min_length=1)
    action: str = Field(min_length=1)


class DriftSettings(_Section):
    """A segment drifts when, since the previous run, its share or its centroid moved more than this."""

    share: float = 0.05  # of all customers: 0.05 is 5 percentage points
    centroid: float = Field(default=0.5, gt=0)  # standard deviations of the features (the scaled space)

    @field_validator("share")
    @classmethod
    def _a_share(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError("give a share of the customers between 0 and 1: 0.05 means 5 percentage points")
        return value


class SegmentSettings(_Section):
    display_names: dict[str, str] = Field(default_factory=dict)  # feature -> label in names and report
    name_threshold: float = Field(default=0.5, gt=0)  # |z| from which a feature counts as High / Low
    name_features: int = Field(default=2, ge=1)  # at most this many features in a name
    playbook: list[PlaybookRule] = Field(default_factory=list)
    # assignments.outlier: farther from the centroid than this quantile of the segment's distances
    outlier_quantile: float = Field(default=0.99, gt=0, le=1)
    # profiles' quartiles and outlier thresholds from about this many customers (a hash of the id)
    # when there are more, every customer of a small segment; 0: of every customer
    quantile_sample: int = Field(default=1_000_000, ge=0)
    rule_depth: int = Field(
        default=3, ge=0, le=8
    )  # depth of the tree the segment rules come from; 0: no rules
    # segments below this share of the customers (below 1) or count (1 or more) get a warning
    min_size: float = Field(default=0.005, ge=0)
    # a warning when a segment's share or centroid moved more than this since the run before
    drift: DriftSettings = Field(default_factory=DriftSettings)


class CatalogSettings(_Section):
    """Also publish the outputs as tables of ``database`` (see segspark/catalog.py)."""

    database: str
    # local mode: the embedded catalog (metastore_db/, warehouse/); default <output.path>/_catalog
    dir: str | None = None

    @field_validator("database")
    @classmethod
    def _sql_name(cls, value: str) -> str:
        if not DATABASE_PATTERN.match(value):
            raise ValueError(
                "use letters, digits and '_', not starting with a digit (e.g. segments), "
                "or catalog.database (e.g. main.segments)"
            )
        return value


class OutputSettings(_Section):
    path: str = "lake/segmentation"
    format: Literal["parquet", "csv", "json", "orc"] = "parquet"
    report: bool = True
    # two numeric features for the report's scatter plot; default: the two that separate segments most
    report_scatter: list[str] = Field(default_factory=list, max_length=2)
    run_id: str | None = None  # default: a new id from the UTC start time
    # > 0: assignments.group = control for this share of customers (by a hash of id and salt), else treatment
    control_share: float = Field(default=0.0, ge=0, lt=1)
    control_salt: str = "segspark"
    catalog: CatalogSettings | None = None  # {database: NAME}: tables NAME.assignments, ... and _latest views

    @field_validator("catalog", mode="before")
    @classmethod
    def _a_mapping(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError(f"write it as a mapping: output.catalog: {{database: {value}}}")
        return value

    @field_validator("path")
    @classmethod
    def _no_glob(cls, value: str) -> str:
        # Spark reads a path as a glob pattern: a run could write lake[2]/ and then not read it back
        glob = sorted(set(value) & set("[]{}*?"))
        if glob:
            raise ValueError(
                f"the folder name {value!r} has {' '.join(glob)}, which Spark reads as a file pattern: "
                "rename it without those characters"
            )
        return value

    @field_validator("run_id")
    @classmethod
    def _safe_run_id(cls, value: str | None) -> str | None:
        if value is not None and not RUN_ID_PATTERN.match(value):
            raise ValueError("use letters, digits, '_', '.' and '-' only (it becomes a folder name)")
        return value


class Settings(_Section):
    spark: SparkSettings = Field(default_factory=SparkSettings)
    input: InputSettings
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    segments: SegmentSettings = Field(default_factory=SegmentSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def load_settings(path: str | Path | None = None, overrides: list[str] | None = None) -> Settings:
    """Read a YAML config (safe loader), apply ``dotted.key=value`` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections (spark, input, ...)")
    for override in overrides or []:
        apply_override(raw, override)
    return settings_from_dict(raw)


def settings_from_dict(raw: dict[str, Any]) -> Settings:
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc)) from None


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is read as YAML (numbers, booleans, lists)."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: write it as dotted.key=value, e.g. model.k=5")
    parts = key.strip().split(".")
    for i in range(1, len(parts)):  # keys of free-form maps (spark.conf, options) contain dots
        if parts[i - 1] in FREE_FORM_MAPS:
            parts = [*parts[:i], ".".join(parts[i:])]
            break
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"--set {override!r}: {where} is a value, not a section")
        node = child
    free_form = len(parts) > 1 and parts[-2] in FREE_FORM_MAPS
    node[parts[-1]] = _override_value(".".join(parts), text, free_form)


def _override_value(key: str, text: str, free_form: bool) -> Any:
    """A ``--set`` value read as YAML. A value of Spark's (spark.conf, options) that is no YAML stays
    the text it is (Spark checks it); anywhere else that is a mistake worth saying so."""
    if not text.strip():
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        if free_form:
            return text
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(
            f"--set {key}={text}: could not parse the value of {key} as YAML ({problem}); "
            "quote a text value, and write a mapping as {min: 3, max: 6}"
        ) from None


_UNION_TAGS = {"str", "int", "float", "bool", "KRange", "ClipSettings"}
_WHERE_INPUT = (
    " (set input.customers.path to the customer table, or input.customers.table;"
    " or input.orders.path / input.orders.table to segment from raw orders)"
)
_MISSING_HINTS = {
    "input": _WHERE_INPUT,
    "input.customers": _WHERE_INPUT,
    "input.orders": _WHERE_INPUT,
    "output.catalog.database": " (the database for the tables, e.g. output.catalog: {database: segments})",
}


def describe_errors(exc: ValidationError) -> str:
    lines, seen = [], set()
    for error in exc.errors():
        # pydantic adds the alternatives of a union to the location: report the key once
        parts = [
            str(p) for p in error["loc"] if not str(p).startswith("function-") and str(p) not in _UNION_TAGS
        ]
        key = ".".join(parts).replace("schema_ddl", "schema")
        if key in seen:
            continue
        seen.add(key)
        if error["type"] == "extra_forbidden":
            allowed = ", ".join(_keys_of_section(error["loc"][:-1]))
            lines.append(f"{key}: unknown key; the keys allowed here are: {allowed}")
        elif error["type"] == "missing":
            lines.append(f"{key}: required but not given{_MISSING_HINTS.get(key, '')}")
        else:
            # pydantic names its own classes ("a valid dictionary or instance of KRange"): not the reader's
            message = re.sub(r" or instance of \w+", "", error["msg"].removeprefix("Value error, "))
            lines.append(f"{key}: {message} (got {error.get('input')!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def _keys_of_section(loc: tuple) -> list[str]:
    section: type[BaseModel] = Settings
    for part in loc:
        annotation = section.model_fields[str(part)].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        section = next(c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel))
    return [field.alias or name for name, field in section.model_fields.items()]
