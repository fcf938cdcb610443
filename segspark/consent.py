"""Consent to profiling: customers without it are left out of the segmentation.

Many CRMs carry a marketing-consent or "do not profile" flag. With ``input.customers.consent`` set,
a customer whose flag holds none of the allowed values (or nothing at all) goes to ``rejects`` with
:data:`NO_CONSENT` and nothing else of theirs: not their feature values, not the sample, the report
or the scoring output.
"""

from __future__ import annotations

import pyspark.sql.functions as F
from pyspark.sql import Column, DataFrame

from segspark.config import ConsentSettings
from segspark.errors import InputDataError

NO_CONSENT = "no consent to profiling"


def allowed_texts(allowed: list[str | int | float | bool]) -> list[str]:
    """The allowed values as the lower-case text they are compared with.

    >>> allowed_texts([True, "Yes", 1, " Y "])
    ['true', 'yes', '1', 'y']
    """
    return [str(v).lower() if isinstance(v, bool) else str(v).strip().lower() for v in allowed]


def allowed_numbers(allowed: list[str | int | float | bool]) -> list[float]:
    """The allowed values that are numbers (not booleans), so that 1 also matches 1.0 in a double column.

    >>> allowed_numbers([True, "yes", 1, 2.5])
    [1.0, 2.5]
    """
    return [float(v) for v in allowed if isinstance(v, int | float) and not isinstance(v, bool)]


def has_consent(consent: ConsentSettings) -> Column:
    """True when the consent column holds an allowed value, as text (case-insensitively) or as a number;
    NULL is no consent."""
    text = F.lower(F.trim(F.col(f"`{consent.column}`").cast("string")))
    matches = text.isin(*allowed_texts(consent.allowed))
    numbers = allowed_numbers(consent.allowed)
    if numbers:
        matches = matches | F.expr(f"try_cast(`{consent.column}` AS DOUBLE)").isin(*numbers)
    return F.coalesce(matches, F.lit(False))


def check_consent_column(df: DataFrame, consent: ConsentSettings | None) -> None:
    """Stop before any work when the configured consent column is not in the input."""
    if consent is not None and consent.column not in df.columns:
        raise InputDataError(
            f"input.customers.consent.column: {consent.column!r} is not in the input; columns are: "
            f"{', '.join(df.columns)}. Name the column that holds the consent flag, or remove "
            "input.customers.consent."
        )
