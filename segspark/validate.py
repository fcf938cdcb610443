"""Input checks: which columns are features, the sensitive-attribute guard, and the rejects table.

Column problems (a missing id, a feature that is not there, a sensitive attribute) stop the run with
a message naming the column. Row problems never stop it: each row the job cannot use goes to the
rejects table with a reason, so rows read = rows assigned + rows rejected.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pyspark.sql.functions as F
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import types as T

from segspark.config import ConsentSettings, FeatureSettings
from segspark.consent import NO_CONSENT, has_consent
from segspark.errors import ConfigError, InputDataError

log = logging.getLogger(__name__)

PANDAS_INDEX = "__index_level_"  # the index pandas writes to parquet: a row number, never a feature
CORRUPT_RECORD = "_corrupt_record"  # Spark's column for csv/json lines it cannot parse (see lake.py)
DUPLICATE = "duplicate customer id (another row with this id is used)"
MISSING_ID = "missing customer id"
REASON = "reason"
SEPARATORS = (";", "\t", "|")  # what a csv that is not comma-separated is usually separated by
DECIMAL_COMMA = re.compile(r"[-+]?(\d{1,3}(\.\d{3})+|\d+),\d+")  # 1,5  -12,75  2.345,25
DECIMAL_COMMA_SAMPLE = 200  # rows looked at to tell a decimal-comma column
PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
VALUES = "values"
DUPLICATE_KEY, REPEATED = "__segspark_id", "__segspark_repeated"  # internal: ids seen more than once


@dataclass(frozen=True)
class FeatureSpec:
    """The columns a run uses, decided once from the input schema and the settings."""

    id_column: str
    numeric: list[str]
    categorical: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    sensitive_excluded: list[str] = field(default_factory=list)  # left out of the default selection
    not_numeric: list[str] = field(default_factory=list)  # likewise, as not numbers
    sensitive_allowed: list[str] = field(default_factory=list)  # used on purpose

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]


def quoted(name: str) -> str:
    """A column name as Spark SQL reads it, whatever it holds (dots, spaces, dashes, backticks)."""
    return "`" + name.replace("`", "``") + "`"


def col(name: str) -> Column:
    """A column by its exact name: ``F.col("spend.score")`` would look for field ``score`` of a struct."""
    return F.col(quoted(name))


def sensitive_match(column: str, sensitive: list[str]) -> str | None:
    """The sensitive term a column name contains as whole words (``customer_gender`` -> ``gender``)."""
    words = _words(column)
    for term in sensitive:
        term_words = _words(term)
        n = len(term_words)
        if n and any(words[i : i + n] == term_words for i in range(len(words) - n + 1)):
            return term
    return None


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)  # camelCase -> camel_Case
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def separator_hint(columns: list[str], options_key: str) -> str | None:
    """A hint when a csv was read with the wrong separator: its one column's name holds the header."""
    columns = [c for c in columns if c != CORRUPT_RECORD]
    if len(columns) != 1:
        return None
    separator = next((s for s in SEPARATORS if s in columns[0]), None)
    if separator is None:
        return None
    shown = "\\t" if separator == "\t" else separator
    return (
        f"the header looks {shown}-separated ({columns[0]!r} was read as one column): "
        f'set {options_key}: {{sep: "{shown}"}}'
    )


def decimal_comma_columns(df: DataFrame, columns: list[str]) -> list[str]:
    """The text columns of ``columns`` whose values are mostly numbers written with a decimal comma
    (``1,5``, ``2.345,25``), judged on the first DECIMAL_COMMA_SAMPLE rows: a small job."""
    text = [c for c in columns if isinstance(df.schema[c].dataType, T.StringType)]
    if not text:
        return []
    rows = df.select(*[col(c) for c in text]).limit(DECIMAL_COMMA_SAMPLE).collect()
    found = []
    for i, column in enumerate(text):
        values = [str(r[i]).strip() for r in rows if r[i] is not None and str(r[i]).strip()]
        commas = sum(bool(DECIMAL_COMMA.fullmatch(v)) for v in values)
        if values and commas >= len(values) / 2:
            found.append(column)
    return found


def decimal_comma_message(df: DataFrame, columns: list[str], id_column: str, source: str) -> str:
    """What to do about decimal commas: Spark's ``locale`` option and a DECIMAL type for the column."""

    def ddl_type(field: T.StructField) -> str:
        if field.name == id_column:
            return "STRING"
        return "DECIMAL(18,4)" if field.name in columns else field.dataType.simpleString().upper()

    schema = ", ".join(
        f"{f.name if PLAIN.fullmatch(f.name) else quoted(f.name)} {ddl_type(f)}"
        for f in df.schema.fields
        if f.name != CORRUPT_RECORD
    )
    return (
        f"{', '.join(columns)}: numbers written with a decimal comma (like 1,5) are read as text. Read "
        f"them as numbers with Spark's locale option and a DECIMAL type: {source}.options: "
        f'{{locale: "de-DE"}} (the language tag of the file) and {source}.schema: "{schema}"'
    )


def resolve_features(
    df: DataFrame,
    id_column: str,
    settings: FeatureSettings,
    source: str = "input.customers",
    exclude: tuple[str, ...] = (),
) -> FeatureSpec:
    """Check the id and feature columns against the schema and apply the sensitive-attribute guard.

    ``source``: the config key of the input, for the hints in messages. ``exclude``: columns that are
    never features (the consent flag).
    """
    available = df.columns
    listing = ", ".join(available)
    if id_column not in available:
        hint = separator_hint(available, f"{source}.options")
        if hint:
            raise InputDataError(f"id column {id_column!r} is not in the input: {hint}")
        raise InputDataError(
            f"id column {id_column!r} is not in the input; columns are: {listing}. "
            f"Set {source}.id_column to the customer id column."
        )
    for key, columns in (
        ("numeric", settings.numeric),
        ("categorical", settings.categorical),
        ("log", settings.log),
    ):
        for column in columns:
            if column not in available:
                raise InputDataError(
                    f"features.{key}: column {column!r} is not in the input; columns are: {listing}"
                )
            if column == id_column:
                raise ConfigError(f"features.{key}: {column!r} is the id column and cannot be a feature")
            if column in exclude:
                raise ConfigError(f"features.{key}: {column!r} is the consent flag and cannot be a feature")

    types = dict(df.dtypes)
    allowed = set(settings.allow_sensitive)
    excluded: list[str] = []
    not_numeric: list[str] = []
    if settings.numeric:
        numeric = list(settings.numeric)
    else:
        numeric = []
        for f in df.schema.fields:
            if f.name in (id_column, CORRUPT_RECORD, *exclude) or f.name in settings.categorical:
                continue
            if f.name.startswith(PANDAS_INDEX):
                continue
            if sensitive_match(f.name, settings.sensitive) and f.name not in allowed:
                excluded.append(f.name)
            elif not isinstance(f.dataType, T.NumericType):
                not_numeric.append(f.name)
            else:
                numeric.append(f.name)
        if excluded:
            log.warning("left out of the features as sensitive attributes: %s", ", ".join(excluded))
        _warn_not_numeric(df, not_numeric, id_column, source)
    for column in settings.log:
        if column not in numeric:
            raise ConfigError(
                f"features.log: {column!r} is not one of the numeric features ({', '.join(numeric)})"
            )

    chosen = [*numeric, *settings.categorical]
    for column in chosen:
        term = sensitive_match(column, settings.sensitive)
        if term and column not in allowed:
            raise ConfigError(
                f"feature {column!r} looks like a sensitive attribute ({term!r} in features.sensitive). "
                "Segmenting customers on who they are rather than what they do can discriminate "
                "against them, so it is refused. Remove it from the features, or, if it is needed on "
                f"purpose, add it to features.allow_sensitive: [{column}]."
            )
    if not chosen:
        raise InputDataError(
            f"no feature columns: the input has no numeric column besides {id_column!r} "
            f"(columns: {listing}). List the features in features.numeric / features.categorical."
        )
    if settings.numeric:
        commas = decimal_comma_columns(df, numeric)
        if commas:
            raise InputDataError(decimal_comma_message(df, commas, id_column, source))
    for column in numeric:
        if not isinstance(df.schema[column].dataType, (T.NumericType, T.StringType)):
            raise InputDataError(
                f"features.numeric: column {column!r} has type {types[column]}, which is not a number; "
                "remove it from features.numeric or list it in features.categorical"
            )
    return FeatureSpec(
        id_column=id_column,
        numeric=numeric,
        categorical=list(settings.categorical),
        log=list(settings.log),
        sensitive_excluded=excluded,
        not_numeric=not_numeric,
        sensitive_allowed=[c for c in chosen if c in allowed and sensitive_match(c, settings.sensitive)],
    )


def _warn_not_numeric(df: DataFrame, columns: list[str], id_column: str, source: str) -> None:
    """One warning per kind of column left out of the default features, with the real reason."""
    kinds: dict[str, list[str]] = {}
    commas = decimal_comma_columns(df, columns)
    for column in columns:
        data_type = df.schema[column].dataType
        if column in commas:
            kind = "decimal commas"
        elif isinstance(data_type, T.BooleanType):
            kind = "boolean"
        elif isinstance(data_type, T.DateType | T.TimestampType | T.TimestampNTZType):
            kind = "date"
        elif isinstance(data_type, T.StringType):
            kind = "text"
        else:
            kind = "other"
        kinds.setdefault(kind, []).append(column)
    reasons = {
        "boolean": "they are true/false (boolean) columns: list them in features.categorical to use them",
        "date": (
            "they are dates or timestamps, which are no measure by themselves: derive a number from "
            "them before segmenting, such as the days since (datediff(current_date(), <column>)), "
            "and list that in features.numeric"
        ),
        "text": (
            "they are text. A number column with a stray text value reads as text from csv: list it in "
            "features.numeric to use it (rows whose value is not a number are then rejected), or in "
            "features.categorical"
        ),
        "other": "their types are not numbers (arrays, maps, structs, binary): list a plain column instead",
    }
    for kind, names in kinds.items():
        if kind == "decimal commas":
            log.warning("left out of the features: %s", decimal_comma_message(df, names, id_column, source))
            continue
        types = ", ".join(f"{c} ({df.schema[c].dataType.simpleString()})" for c in names)
        log.warning("left out of the features: %s: %s", types, reasons[kind])


def as_double(column: str) -> Column:
    """A numeric column as double; text that is not a number becomes NULL instead of failing the job."""
    return F.expr(f"try_cast({quoted(column)} AS DOUBLE)")


def with_reject_reason(
    df: DataFrame,
    spec: FeatureSpec,
    missing: str,
    keep: list[str] | tuple[str, ...] = (),
    consent: ConsentSettings | None = None,
    cache: Callable[[DataFrame], DataFrame] = lambda rows: rows,
) -> DataFrame:
    """The input's id and features (numbers as double), ``reason`` (NULL for a usable row) and, for a
    row with a reason, its raw feature ``values`` as JSON. ``keep`` columns (not features: e.g. the
    sensitive ones profiled for the audit) are passed through as they are. With ``consent``, a row
    without consent is rejected before any other check, and its values are not kept.

    ``cache``: how the caller caches the checked rows (``DataFrame.persist`` and keep it for unpersisting
    later); the duplicate-id check then reads the ids from that cache instead of the input again, and
    only a table with repeated ids gets a second, resolved cache."""
    checks: list[Column] = [F.when(is_blank(col(spec.id_column)), F.lit(MISSING_ID))]
    if CORRUPT_RECORD in df.columns:
        checks.insert(0, F.when(F.col(CORRUPT_RECORD).isNotNull(), F.lit("malformed line")))
    for column in spec.numeric:
        raw, value = col(column), as_double(column)
        # blank text counts as missing, like an empty csv field; other text that is no number does not
        not_a_number = raw.isNotNull() & (F.trim(raw.cast("string")) != "") & value.isNull()
        checks.append(F.when(not_a_number, F.lit(f"non-numeric value in {column}")))
        if missing == "reject":
            checks.append(F.when(value.isNull() | F.isnan(value), F.lit(f"missing value in {column}")))
        checks.append(F.when(F.abs(value) == F.lit(float("inf")), F.lit(f"infinite value in {column}")))
        if column in spec.log:
            checks.append(
                F.when(value < 0, F.lit(f"negative value in {column} (log features need values >= 0)"))
            )
    if missing == "reject":
        for column in spec.categorical:
            checks.append(F.when(col(column).isNull(), F.lit(f"missing value in {column}")))
    if consent is not None:
        checks.insert(0, F.when(~has_consent(consent), F.lit(NO_CONSENT)))
    reason = F.coalesce(*checks)
    # the offending row as it was read (the whole line when it was malformed), for the rejects table
    values = F.to_json(F.struct(*[col(c) for c in spec.columns]))
    if CORRUPT_RECORD in df.columns:
        values = F.coalesce(F.col(CORRUPT_RECORD), values)
    if consent is not None:  # nothing of a customer without consent is kept, not even in rejects
        values = F.when(has_consent(consent), values)
    checked = df.select(
        col(spec.id_column),
        *[as_double(c).alias(c) for c in spec.numeric],
        *[col(c).cast("string").alias(c) for c in spec.categorical],
        *[col(c) for c in keep],
        reason.alias(REASON),
        F.when(reason.isNotNull(), values).alias(VALUES),
    )
    if consent is not None:
        checked = _refuse_for_every_row(checked, spec)
    checked = cache(checked)
    resolved = _reject_duplicate_ids(checked, spec)
    return checked if resolved is checked else cache(resolved)


def _refuse_for_every_row(checked: DataFrame, spec: FeatureSpec) -> DataFrame:
    """A customer who refused consent on one row refused it: every row with their id is rejected."""
    by_id = Window.partitionBy(spec.id_column)
    refused = col(spec.id_column).isNotNull() & F.coalesce(
        F.max((F.col(REASON) == F.lit(NO_CONSENT)).cast("int")).over(by_id) == 1, F.lit(False)
    )
    return checked.select(
        *[col(c) for c in checked.columns if c not in (REASON, VALUES)],
        F.when(refused, F.lit(NO_CONSENT)).otherwise(F.col(REASON)).alias(REASON),
        F.when(~refused, F.col(VALUES)).alias(VALUES),
    )


def is_blank(value: Column) -> Column:
    """NULL, empty or only spaces: an id like that identifies nobody (``""`` is not a customer)."""
    return value.isNull() | (F.trim(value.cast("string")) == F.lit(""))


def _reject_duplicate_ids(checked: DataFrame, spec: FeatureSpec) -> DataFrame:
    """Of the usable rows sharing an id, keep the one with the smallest feature values; reject the rest
    (``checked`` itself when no id repeats).

    The ids alone are counted first (a shuffle of one column); only the rows of ids that occur more
    than once then go through the window that ranks them, so a table without duplicates is never
    shuffled whole. The choice depends on the values only, never on the input's row order, so a run is
    deterministic.
    """
    id_column = col(spec.id_column)
    # shuffled by id before counting: in a clean table every id is distinct, and a count per task
    # before the shuffle (Spark's partial aggregation) would be work that merges nothing
    repeated = (
        checked.where(id_column.isNotNull())
        .select(id_column.alias(DUPLICATE_KEY))
        .repartition(DUPLICATE_KEY)
        .groupBy(DUPLICATE_KEY)
        .count()
        .where(F.col("count") > 1)
        .select(DUPLICATE_KEY, F.lit(True).alias(REPEATED))
    )
    if repeated.isEmpty():
        return checked
    flagged = checked.join(repeated, id_column.eqNullSafe(F.col(DUPLICATE_KEY)), "left").drop(DUPLICATE_KEY)
    order = [F.col(REASON).isNotNull(), *[col(c).asc_nulls_last() for c in spec.columns]]
    rank = F.row_number().over(Window.partitionBy(id_column).orderBy(*order))
    is_duplicate = F.col(REASON).isNull() & (rank > 1)
    ranked = flagged.where(F.col(REPEATED)).select(
        *[col(c) for c in checked.columns if c not in (REASON, VALUES)],
        F.when(is_duplicate, F.lit(DUPLICATE)).otherwise(F.col(REASON)).alias(REASON),
        F.when(is_duplicate, F.to_json(F.struct(*[col(c) for c in spec.columns])))
        .otherwise(F.col(VALUES))
        .alias(VALUES),
    )
    return (
        flagged.where(F.col(REPEATED).isNull()).select(*[col(c) for c in checked.columns]).unionByName(ranked)
    )


def split_rejects(checked: DataFrame, spec: FeatureSpec) -> tuple[DataFrame, DataFrame]:
    """Usable rows (without ``reason``) and the rejects table: customer_id, reason, values (JSON)."""
    has_reason = F.col(REASON).isNotNull()
    valid = checked.filter(~has_reason).drop(REASON, VALUES)
    rejects = checked.filter(has_reason).select(
        col(spec.id_column).cast("string").alias("customer_id"), F.col(REASON), F.col(VALUES)
    )
    return valid, rejects


def audit_columns(raw: DataFrame, spec: FeatureSpec, sensitive: list[str]) -> list[str]:
    """Sensitive columns in the input that are not features: profiled per segment for the audit only."""
    return [
        c
        for c in raw.columns
        if c != spec.id_column and c not in spec.columns and sensitive_match(c, sensitive) is not None
    ]
