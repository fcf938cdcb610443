"""Segments as rules a person can read and any SQL engine can run.

A decision tree of bounded depth learns the run's segments from the features before scaling: the
numeric features in original units, with missing values as the model sees them (the run's medians).
It learns on the driver, with scikit-learn, from at most LEARN_ROWS customers (one Spark job fetches
them), as the sweep chooses k: its cost is the same at any size. Each segment's rule is the disjunction
of the paths to the leaves that predict it, thresholds rounded to a readable grid. Two ways to grow
the trees:

- ``tree`` (the default): one tree for all segments. Its leaves split the customers into disjoint
  groups, so the rules never overlap and one ``CASE WHEN ... END`` reproduces each rule's figures.
- ``per_segment``: one yes/no tree per segment. Rules may overlap; in the ``CASE`` the first wins.

Precision (customers matching the rule who are in the segment) and coverage (the segment's customers
who match) are measured afterwards by Spark, on the rounded rules exactly as written.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyspark.sql.functions as F
from pyspark.sql import DataFrame

from segspark.metrics import SEGMENT
from segspark.prepare import internal_name

METHODS = ("tree", "per_segment")
LEARN_ROWS = 50_000  # customers the tree learns from, at most: thresholds need no more
SAFE_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
# Words that may not stand unquoted as a column name in Spark SQL or common ANSI engines.
RESERVED = frozenset(
    {
        "all",
        "and",
        "any",
        "array",
        "as",
        "asc",
        "between",
        "both",
        "by",
        "case",
        "cast",
        "check",
        "column",
        "create",
        "cross",
        "current_date",
        "current_time",
        "current_timestamp",
        "current_user",
        "date",
        "day",
        "default",
        "delete",
        "desc",
        "distinct",
        "drop",
        "else",
        "end",
        "except",
        "exists",
        "false",
        "fetch",
        "for",
        "foreign",
        "from",
        "full",
        "grant",
        "group",
        "having",
        "in",
        "inner",
        "insert",
        "interval",
        "intersect",
        "into",
        "is",
        "join",
        "key",
        "leading",
        "left",
        "like",
        "limit",
        "month",
        "natural",
        "not",
        "null",
        "of",
        "offset",
        "on",
        "only",
        "or",
        "order",
        "outer",
        "over",
        "partition",
        "position",
        "primary",
        "range",
        "references",
        "right",
        "row",
        "rows",
        "select",
        "some",
        "table",
        "then",
        "time",
        "timestamp",
        "to",
        "trailing",
        "true",
        "union",
        "unique",
        "unknown",
        "update",
        "user",
        "using",
        "value",
        "values",
        "when",
        "where",
        "window",
        "with",
        "year",
    }
)


@dataclass(frozen=True)
class Condition:
    """``feature > threshold`` (``above``) or ``feature <= threshold``."""

    feature: str
    above: bool
    threshold: float


@dataclass(frozen=True)
class Leaf:
    prediction: int


@dataclass(frozen=True)
class Split:
    feature: int
    threshold: float
    left: Leaf | Split  # feature <= threshold
    right: Leaf | Split  # feature > threshold


@dataclass(frozen=True)
class SegmentRule:
    segment: int
    paths: tuple[tuple[Condition, ...], ...]  # OR of ANDs; empty: no rule

    def text(self, missing_as: dict[str, float] | None = None) -> str | None:
        """The rule as a SQL condition; with ``missing_as``, each feature as COALESCE(feature, median)."""
        if not self.paths:
            return None
        if any(not path for path in self.paths):
            return "TRUE"
        clauses = [" AND ".join(_comparison(c, missing_as) for c in path) for path in self.paths]
        if len(clauses) == 1:
            return clauses[0]
        return " OR ".join(f"({clause})" for clause in clauses)

    @property
    def comparisons(self) -> int:
        return sum(len(path) for path in self.paths)


@dataclass(frozen=True)
class Rules:
    """The run's rules, with the figures Spark measured for them."""

    method: str
    depth: int
    missing_as: dict[str, float]  # feature -> the value a missing one counts as (the model's median)
    table: pd.DataFrame  # segment, segment_name, rule, precision, coverage, matched, size, comparisons
    sql: str  # the CASE WHEN ... END expression of rules.sql


def identifier(name: str) -> str:
    """A column name as rules.sql writes it: plain when every engine reads it the same way (lower-case
    letters, digits and ``_``, not a reserved word), else quoted with backticks (Spark SQL's form).

    >>> identifier("annual_income"), identifier("order"), identifier("Income.2024")
    ('annual_income', '`order`', '`Income.2024`')
    """
    if SAFE_IDENTIFIER.match(name) and name not in RESERVED:
        return name
    return "`" + name.replace("`", "``") + "`"


def literal(value: float) -> str:
    """A number as a plain SQL literal, never in exponent notation.

    >>> literal(84500.0), literal(41.5), literal(-0.00125), literal(3e-7)
    ('84500', '41.5', '-0.00125', '0.0000003')
    """
    return np.format_float_positional(float(value), trim="-")


def readable(value: float, spread: float) -> float:
    """A threshold rounded to half a step of a tenth of the feature's order of magnitude of spread.

    >>> readable(84499.73, 35000.0), readable(37.5, 11.0), readable(120.37, 80.0), readable(20.43, 9.0)
    (84500.0, 37.5, 120.5, 20.45)
    """
    if not math.isfinite(spread) or spread <= 0:
        return float(value)
    grid = 10.0 ** (math.floor(math.log10(spread)) - 1) / 2
    return round(round(value / grid) * grid, max(0, -math.floor(math.log10(grid))))


def tree_of(tree, classes: np.ndarray, shift: np.ndarray, node: int = 0) -> Leaf | Split:
    """A fitted scikit-learn tree (``model.tree_``) as Splits and Leaves, predicting ``classes``; the
    features were learned less ``shift``, which the thresholds get back. Two sibling leaves that predict
    the same class are one leaf: their split tells nothing about the segments.

    >>> from sklearn.tree import DecisionTreeClassifier
    >>> x, y = np.array([[1.0], [2.0], [3.0], [4.0]]), np.array([7, 7, 9, 9])
    >>> model = DecisionTreeClassifier(max_depth=2).fit(x - 2.0, y)
    >>> tree_of(model.tree_, model.classes_, np.array([2.0]))
    Split(feature=0, threshold=2.5, left=Leaf(prediction=7), right=Leaf(prediction=9))
    """
    left, right = tree.children_left[node], tree.children_right[node]
    if left == right:  # a leaf (both -1)
        return Leaf(int(classes[int(np.argmax(tree.value[node][0]))]))
    below, above = tree_of(tree, classes, shift, left), tree_of(tree, classes, shift, right)
    feature = int(tree.feature[node])
    return _joined(feature, float(tree.threshold[node]) + float(shift[feature]), below, above)


def _joined(feature: int, threshold: float, below: Leaf | Split, above: Leaf | Split) -> Leaf | Split:
    """``Split(feature, threshold, below, above)``, or one leaf when both sides are leaves saying the same."""
    if isinstance(below, Leaf) and below == above:
        return below
    return Split(feature, threshold, below, above)


def leaf_paths(tree: Leaf | Split, names: list[str]) -> list[tuple[tuple[Condition, ...], int]]:
    """Every leaf's path from the root, as conditions on named features, and its prediction."""
    if isinstance(tree, Leaf):
        return [((), tree.prediction)]
    name = names[tree.feature]
    below = Condition(name, False, tree.threshold)
    above = Condition(name, True, tree.threshold)
    return [((below, *path), p) for path, p in leaf_paths(tree.left, names)] + [
        ((above, *path), p) for path, p in leaf_paths(tree.right, names)
    ]


def simplify(path: tuple[Condition, ...], spread: dict[str, float]) -> tuple[Condition, ...] | None:
    """Round thresholds, keep the tightest bound per feature and side (features in the order they first
    appear: the root's first); None when the rounded bounds leave nothing between them.

    >>> simplify((Condition("a", True, 10.2), Condition("a", True, 20.4), Condition("a", False, 30.0)),
    ...          {"a": 90.0})
    (Condition(feature='a', above=True, threshold=20.5), Condition(feature='a', above=False, threshold=30.0))
    """
    lower: dict[str, float] = {}
    upper: dict[str, float] = {}
    order: list[str] = []
    for c in path:
        value = readable(c.threshold, spread.get(c.feature, math.nan))
        if c.feature not in order:
            order.append(c.feature)
        if c.above:
            lower[c.feature] = max(lower.get(c.feature, -math.inf), value)
        else:
            upper[c.feature] = min(upper.get(c.feature, math.inf), value)
    out: list[Condition] = []
    for feature in order:
        if feature in lower and feature in upper and lower[feature] >= upper[feature]:
            return None
        if feature in lower:
            out.append(Condition(feature, True, lower[feature]))
        if feature in upper:
            out.append(Condition(feature, False, upper[feature]))
    return tuple(out)


def _comparison(c: Condition, missing_as: dict[str, float] | None) -> str:
    column = identifier(c.feature)
    if missing_as is not None and c.feature in missing_as:
        column = f"COALESCE({column}, {literal(missing_as[c.feature])})"
    return f"{column} {'>' if c.above else '<='} {literal(c.threshold)}"


def case_sql(rules: list[SegmentRule], missing_as: dict[str, float]) -> str:
    """One ``CASE WHEN <rule> THEN <segment> ... END`` expression (NULL where no rule matches)."""
    whens = [
        f"  WHEN {rule.text(missing_as)} THEN {rule.segment}" for rule in rules if rule.text() is not None
    ]
    return "CASE\n" + "\n".join(whens) + "\n  ELSE NULL\nEND"


def training_rows(assigned: DataFrame, features: list[str]) -> pd.DataFrame:
    """The segment and the features before log1p and scaling (NaN where missing), on the driver."""
    raw = [F.col(f"`{c}`").cast("double").alias(f"_{i}") for i, c in enumerate(features)]
    frame = assigned.select(F.col(SEGMENT), *raw).toPandas()
    return frame.rename(columns={f"_{i}": c for i, c in enumerate(features)})


def _greedy(
    values: np.ndarray, labels: np.ndarray, shift: np.ndarray, depth: int, seed: int
) -> tuple[Leaf | Split, int]:
    """scikit-learn's tree of ``depth`` (each split the one that lowers the Gini impurity most), and how
    many of the customers it classifies right."""
    from sklearn.tree import DecisionTreeClassifier  # see job.BACKGROUND_IMPORTS

    model = DecisionTreeClassifier(max_depth=depth, random_state=seed).fit(values, labels)
    return tree_of(model.tree_, model.classes_, shift), int((model.predict(values) == labels).sum())


def _fit(values: np.ndarray, labels: np.ndarray, depth: int, seed: int) -> Leaf | Split:
    """The tree of ``depth`` that classifies the most customers right of: the greedy tree, and for each
    feature, its best split at the root with greedy trees below.

    The greedy tree takes the root that lowers the impurity most in one step; a root almost as good can
    make a much better tree, where the greedy one leaves a segment without a leaf (see the README and
    tests/test_acting.py). The tree kept classifies at least as many right as the greedy one. The
    features are learned less their means, in 32-bit floats as scikit-learn computes: a large value
    with a small spread (a date as a number) keeps its precision.
    """
    from sklearn.tree import DecisionTreeClassifier

    shift = np.nan_to_num(values.mean(axis=0)) if len(values) else np.zeros(values.shape[1])
    values = (values - shift).astype(np.float32)
    best, best_right = _greedy(values, labels, shift, depth, seed)
    if depth < 2:
        return best
    for feature in range(values.shape[1]):
        stump = DecisionTreeClassifier(max_depth=1, random_state=seed).fit(values[:, [feature]], labels)
        if stump.tree_.node_count < 3:  # no split on this feature separates anything
            continue
        threshold = stump.tree_.threshold[0]
        below = values[:, feature] <= threshold
        left, left_right = _greedy(values[below], labels[below], shift, depth - 1, seed)
        right, right_right = _greedy(values[~below], labels[~below], shift, depth - 1, seed)
        if left_right + right_right > best_right:
            best = _joined(feature, float(threshold) + float(shift[feature]), left, right)
            best_right = left_right + right_right
    return best


def learn_rules(
    rows: pd.DataFrame,
    features: list[str],
    segments: list[int],
    missing_as: dict[str, float],
    spread: dict[str, float],
    depth: int,
    seed: int,
    method: str = "tree",
) -> list[SegmentRule]:
    """One rule per segment (see the module docstring) from ``rows`` (``training_rows``); ``segments``
    sorted, ``spread`` the features' standard deviations (for rounding)."""
    values = rows[features].fillna(missing_as).to_numpy(dtype=float)  # a missing value as the model sees it
    labels = rows[SEGMENT].to_numpy()
    if method == "tree":
        tree = _fit(values, labels, depth, seed)
        found: dict[int, list] = {s: [] for s in segments}
        for path, prediction in leaf_paths(tree, features):
            found[prediction].append(path)
    elif method == "per_segment":
        found = {}
        for s in segments:
            tree = _fit(values, (labels == s).astype(int), depth, seed)
            found[s] = [path for path, prediction in leaf_paths(tree, features) if prediction == 1]
    else:
        raise ValueError(f"unknown rule method {method!r}; one of {', '.join(METHODS)}")
    rules = []
    for s in segments:
        paths = [p for p in (simplify(path, spread) for path in found[s]) if p is not None]
        rules.append(SegmentRule(s, tuple(dict.fromkeys(paths))))
    return rules


def measure(assigned: DataFrame, rules: list[SegmentRule], missing_as: dict[str, float]) -> pd.DataFrame:
    """Precision and coverage of each rule, by Spark on the raw features (one pass).

    precision = matched customers in the segment / matched customers; coverage = matched customers
    in the segment / the segment's customers.
    """
    aggregates = []
    for i, rule in enumerate(rules):
        text = rule.text(missing_as)
        matches = F.expr(text) if text is not None else F.lit(False)
        matches = F.coalesce(matches, F.lit(False))
        in_segment = F.col(SEGMENT) == F.lit(rule.segment)
        aggregates += [
            F.count(F.when(matches, 1)).alias(f"m{i}"),
            F.count(F.when(matches & in_segment, 1)).alias(f"h{i}"),
            F.count(F.when(in_segment, 1)).alias(f"n{i}"),
        ]
    counts = assigned.agg(*aggregates).first()
    rows = []
    for i, rule in enumerate(rules):
        matched, hits, size = counts[f"m{i}"], counts[f"h{i}"], counts[f"n{i}"]
        rows.append(
            {
                SEGMENT: rule.segment,
                "rule": rule.text(),
                "precision": hits / matched if matched else math.nan,
                "coverage": hits / size if size else math.nan,
                "matched": int(matched),
                "size": int(size),
                "comparisons": rule.comparisons,
            }
        )
    return pd.DataFrame(rows)


def segment_rules(
    assigned: DataFrame,
    features: list[str],
    names: dict[int, str],
    missing_as: dict[str, float],
    depth: int,
    seed: int,
    method: str = "tree",
    rows: int | None = None,
) -> Rules:
    """Learn, round and measure the rules of a run's segments; ``assigned`` has ``segment`` and the raw
    numeric features (NULL where missing). With more than LEARN_ROWS ``rows`` (the count of
    ``assigned``), the rules are learned on a uniform sample of about LEARN_ROWS customers; their
    precision and coverage are always measured on all of them."""
    segments = sorted(names)
    sampled = rows is not None and rows > LEARN_ROWS
    learn_from = training_rows(
        assigned.sample(fraction=LEARN_ROWS / rows, seed=seed) if sampled else assigned, features
    )
    spread = {c: float(learn_from[c].std(ddof=1)) for c in features}  # NaN: fewer than two values
    rules = learn_rules(learn_from, features, segments, missing_as, spread, depth, seed, method)
    table = measure(assigned, rules, missing_as)
    table.insert(1, "segment_name", [names[s] for s in table[SEGMENT]])
    return Rules(method, depth, missing_as, table, case_sql(rules, missing_as))


def sql_file(rules: Rules, run_id: str) -> str:
    """The text of rules.sql: comments saying how to use it, then the expression."""
    missing = ", ".join(f"{c} = {literal(v)}" for c, v in rules.missing_as.items())
    return (
        f"-- segspark run {run_id}: the segment of a customer from their features, as one SQL expression.\n"
        "-- Use it in a SELECT over the customer table, e.g.\n"
        "--   SELECT customer_id, <this expression> AS segment FROM customers\n"
        "-- A missing value counts as the run's median, as in the model: "
        f"{missing}.\n"
        "-- NULL: no rule matches. Identifiers are plain where every engine reads them alike; others are\n"
        "-- in backticks (Spark SQL, MySQL, BigQuery); for PostgreSQL, Snowflake and other ANSI engines\n"
        "-- replace the backticks with double quotes.\n"
        f"{rules.sql}\n"
    )


def imputer_medians(preparation, features: list[str]) -> dict[str, float]:
    """The medians the fitted preparation imputes for missing numeric ``features`` (one small row),
    by feature name (the Imputer knows a name that is not plain by its internal one)."""
    imputers = [stage for stage in preparation.stages if type(stage).__name__ == "ImputerModel"]
    if not imputers:
        return {}
    row = imputers[0].surrogateDF.first().asDict()
    return {column: float(row[internal_name(column)]) for column in features if internal_name(column) in row}
