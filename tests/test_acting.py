"""Issue 16 end to end: segment rules in plain SQL, outlier customers, control groups, consent.

Every expected figure comes from pandas/numpy/hashlib on the written outputs and the input, or from
Spark SQL running rules.sql as a user would; none from the code under test.
"""

from __future__ import annotations

import hashlib
import html
import json

import numpy as np
import pandas as pd
import pyspark.sql.functions as F
import pytest

from segspark.cli import format_summary
from segspark.config import CustomersInput, FeatureSettings, settings_from_dict
from segspark.errors import ConfigError, InputDataError
from segspark.experiment import CONTROL, control_group, control_tolerance
from segspark.generate import FEATURES
from segspark.job import run
from segspark.rules import segment_rules
from segspark.score import score
from segspark.validate import resolve_features
from tests.conftest import base_config

CONTROL_SHARE = 0.2
SALT = "spring-campaign"


@pytest.fixture(scope="module")
def acting_run(spark, demo_data, tmp_path_factory):
    lake = tmp_path_factory.mktemp("acting-lake")
    config = base_config(
        demo_data["customers"],
        str(lake),
        model={"k": 5},
        output={"run_id": "acting", "control_share": CONTROL_SHARE, "control_salt": SALT},
    )
    return run(settings_from_dict(config), spark)


@pytest.fixture(scope="module")
def joined(acting_run, demo_data) -> pd.DataFrame:
    customers = pd.read_parquet(demo_data["customers"])
    assignments = pd.read_parquet(f"{acting_run.run_dir}/assignments")
    return customers.merge(assignments, on="customer_id", how="inner", validate="one_to_one")


def _rules(run_dir: str) -> pd.DataFrame:
    return pd.read_parquet(f"{run_dir}/rules").sort_values("segment").reset_index(drop=True)


def _pandas_figures(rule: str, frame: pd.DataFrame, segment: int) -> tuple[float, float]:
    """Precision and coverage of a rule, evaluated by pandas (SQL's AND/OR as pandas' and/or)."""
    matches = frame.eval(rule.replace(" AND ", " and ").replace(" OR ", " or ")).astype(bool)
    in_segment = frame["segment"] == segment
    return (matches & in_segment).sum() / matches.sum(), (matches & in_segment).sum() / in_segment.sum()


def _case_expression(run_dir: str) -> str:
    with open(f"{run_dir}/rules.sql") as file:
        return "\n".join(line for line in file.read().splitlines() if not line.startswith("--"))


def _sql_figures(spark, run_dir: str, input_path: str, joined: pd.DataFrame) -> pd.DataFrame:
    """Per segment precision and coverage of rules.sql run through Spark SQL on the input."""
    spark.read.parquet(input_path).createOrReplaceTempView("customers_16")
    expression = _case_expression(run_dir)
    by_rule = spark.sql(f"SELECT customer_id, {expression} AS rule_segment FROM customers_16").toPandas()
    both = joined[["customer_id", "segment"]].merge(by_rule, on="customer_id", how="inner")
    rows = []
    for segment in sorted(both["segment"].unique()):
        matches, in_segment = both["rule_segment"] == segment, both["segment"] == segment
        hits = (matches & in_segment).sum()
        rows.append(
            {"segment": segment, "precision": hits / matches.sum(), "coverage": hits / in_segment.sum()}
        )
    return pd.DataFrame(rows)


# --- rules -----------------------------------------------------------------------------------------


def test_every_demo_segment_has_a_rule_with_precision_and_coverage_of_at_least_90_percent(acting_run):
    rules = _rules(acting_run.run_dir)
    assert rules["segment"].tolist() == [0, 1, 2, 3, 4]
    assert rules["rule"].notna().all()
    assert (rules["precision"] >= 0.9).all() and (rules["coverage"] >= 0.9).all(), rules.to_string()
    names = {s["segment"]: s["segment_name"] for s in acting_run.manifest["segments"]}
    assert rules["segment_name"].tolist() == [names[s] for s in rules["segment"]]


def test_rules_evaluated_by_pandas_give_exactly_the_stated_figures(acting_run, joined):
    for row in _rules(acting_run.run_dir).itertuples():
        precision, coverage = _pandas_figures(row.rule, joined, row.segment)
        assert (precision, coverage) == (row.precision, row.coverage), row.rule
        assert row.size == (joined["segment"] == row.segment).sum()


def test_rules_sql_through_spark_sql_gives_the_same_figures(spark, acting_run, demo_data, joined):
    stated = _rules(acting_run.run_dir)[["segment", "precision", "coverage"]]
    by_sql = _sql_figures(spark, acting_run.run_dir, demo_data["customers"], joined)
    pd.testing.assert_frame_equal(by_sql, stated, check_dtype=False, rtol=0, atol=0)


def test_the_rules_of_one_tree_never_overlap(acting_run, joined):
    rules = _rules(acting_run.run_dir)["rule"]
    matches = sum(joined.eval(r.replace(" AND ", " and ").replace(" OR ", " or ")).astype(int) for r in rules)
    assert matches.max() == 1  # each customer matches one rule exactly (a leaf of the tree)


def test_the_manifest_and_the_summary_carry_each_segments_rule(acting_run):
    rules = _rules(acting_run.run_dir).set_index("segment")
    for segment in acting_run.manifest["segments"]:
        assert segment["rule"] == rules.loc[segment["segment"], "rule"]
        assert segment["rule_precision"] == rules.loc[segment["segment"], "precision"]
    summary = format_summary(acting_run.record, acting_run.run_dir, 1.0)
    assert summary.count("rule (precision ") == 5


def test_the_summary_counts_outliers_and_groups(acting_run, joined):
    summary = format_summary(acting_run.record, acting_run.run_dir, 1.0)
    control = (joined["group"] == "control").sum()
    expected = (
        f"acting: outliers {joined['outlier'].sum()}; control group {control}, treatment {3000 - control}"
    )
    assert expected in summary.splitlines()


@pytest.fixture(scope="module")
def gappy(spark, demo_data, tmp_path_factory):
    """600 demo customers, income missing for 40 of them, income logged, and an upper-case column name;
    income, spending and age only, so that the rules' tree has income to split on."""
    folder = tmp_path_factory.mktemp("gappy")
    frame = pd.read_parquet(demo_data["customers"]).head(600).astype({"annual_income": float})
    frame.loc[frame.index[::15], "annual_income"] = np.nan
    frame = frame.rename(columns={"age": "Age"})
    frame.to_parquet(folder / "customers.parquet")
    config = base_config(
        str(folder / "customers.parquet"),
        str(folder / "lake"),
        model={"k": 5},
        features={"numeric": ["annual_income", "spending_score", "Age"], "log": ["annual_income"]},
    )
    result = run(settings_from_dict(config), spark)
    joined = frame.merge(pd.read_parquet(f"{result.run_dir}/assignments"), on="customer_id", how="inner")
    return result, str(folder / "customers.parquet"), joined


def test_rules_count_a_missing_value_as_the_models_median_in_original_units(spark, gappy):
    result, path, joined = gappy
    missing_as = result.manifest["rules"]["missing_as"]
    income = joined["annual_income"].dropna()
    # the model's median (Spark's Imputer, approximate) is within a few ranks of the exact median
    assert income.quantile(0.48) <= missing_as["annual_income"] <= income.quantile(0.52)
    filled = joined.fillna({"annual_income": missing_as["annual_income"]}).rename(columns={"Age": "age_"})
    rules = _rules(result.run_dir)
    for row in rules.itertuples():
        rule = row.rule.replace("`Age`", "age_")
        assert _pandas_figures(rule, filled, row.segment) == (row.precision, row.coverage), row.rule
    # thresholds on the logged feature are in original units (money, not log-money)
    thresholds = [float(t) for t in rules["rule"].str.findall(r"annual_income [<>]=? ([\d.]+)").sum()]
    assert thresholds and min(thresholds) > 1000
    by_sql = _sql_figures(spark, result.run_dir, path, joined)
    pd.testing.assert_frame_equal(by_sql, rules[["segment", "precision", "coverage"]], check_dtype=False)
    assert "COALESCE(annual_income, " in _case_expression(result.run_dir)


def test_the_report_shows_each_segments_rule_beside_its_name(acting_run):
    with open(f"{acting_run.run_dir}/report.html") as file:
        page = file.read()
    assert "<h2>Acting on the segments</h2>" in page
    for row in _rules(acting_run.run_dir).itertuples():
        assert (
            f'<td class="l">{html.escape(row.segment_name)}</td><td class="l">{html.escape(row.rule)}</td>'
            in page
        )
        assert f"<td>{row.precision:.1%}</td><td>{row.coverage:.1%}</td>" in page


def test_rule_depth_zero_writes_no_rules(spark, demo_data, tmp_path):
    config = base_config(demo_data["customers"], str(tmp_path), model={"k": 3, "restarts": 1})
    config["segments"] = {"rule_depth": 0}
    config["output"].update(report=False)
    result = run(settings_from_dict(config), spark)
    assert not (tmp_path / "runs" / result.run_id / "rules").exists()
    assert "rule" not in result.manifest["segments"][0]


def _three_bands(spark):
    """x in three bands with gaps: segment 0 below 10, 1 in 20..30, 2 in 40..50; y is noise."""
    rows = [(f"c{i}", float(10 * (2 * s) + i % 10), float(i % 7), s) for s in range(3) for i in range(30)]
    return spark.createDataFrame(rows, "customer_id string, x double, y double, segment int")


def test_a_hand_made_case_gets_the_rules_read_off_the_data(spark):
    names = {0: "low", 1: "middle", 2: "high"}
    rules = segment_rules(_three_bands(spark), ["x", "y"], names, {"x": 25.0, "y": 3.0}, depth=2, seed=1)
    table = rules.table.set_index("segment")
    # thresholds fall in the gaps (9..20 and 29..40), so each rule picks out exactly its band
    assert table["precision"].tolist() == [1.0, 1.0, 1.0] and table["coverage"].tolist() == [1.0, 1.0, 1.0]
    assert table.loc[0, "rule"].startswith("x <= ") and 9 <= float(table.loc[0, "rule"].split()[-1]) < 20
    assert "x > " in table.loc[2, "rule"] and "y" not in "".join(table["rule"])
    assert rules.sql.startswith("CASE\n  WHEN COALESCE(x, 25) <= ") and rules.sql.endswith("ELSE NULL\nEND")


def test_rules_learned_on_a_sample_are_measured_on_every_customer(spark, monkeypatch):
    monkeypatch.setattr("segspark.rules.LEARN_ROWS", 45)  # about half of the 90 customers
    names = {0: "low", 1: "middle", 2: "high"}
    bands = _three_bands(spark)
    rules = segment_rules(bands, ["x", "y"], names, {"x": 25.0, "y": 3.0}, depth=2, seed=1, rows=90)
    table = rules.table.set_index("segment")
    # the sample still shows the gaps; precision and coverage count all 30 customers of each band
    assert table["size"].tolist() == [30, 30, 30]
    assert table["precision"].tolist() == [1.0, 1.0, 1.0] and table["coverage"].tolist() == [1.0, 1.0, 1.0]


def test_a_large_value_with_a_small_spread_gets_a_threshold_in_its_gap(spark):
    """A date as seconds since 1970: 1.7e9 with bands 10 seconds apart. In 32-bit floats (which the tree
    computes in) both bands would be the same number, 128 apart at this size; the gap is 9 -> 20."""
    base = 1_700_000_000
    rows = [(f"c{i}", float(base + 20 * s + i % 10), s) for s in range(2) for i in range(40)]
    frame = spark.createDataFrame(rows, "customer_id string, t double, segment int")
    rules = segment_rules(frame, ["t"], {0: "earlier", 1: "later"}, {"t": base + 10.0}, depth=2, seed=1)
    table = rules.table.set_index("segment")
    assert table["precision"].tolist() == [1.0, 1.0] and table["coverage"].tolist() == [1.0, 1.0]
    threshold = float(table.loc[0, "rule"].split()[-1])
    assert table.loc[0, "rule"].startswith("t <= ") and base + 9 <= threshold < base + 20


def test_a_split_whose_two_sides_say_the_same_segment_is_left_out(spark):
    """Segment 0 everywhere in x = 0..99, segment 1 (8 customers) among it at x = 90..97. The best split
    by Gini is x <= 89.5 (worked out by hand: 0.082 against 0.137 for x <= 97.5), and both sides are
    mostly segment 0: the split says nothing of the segments. Segment 0's rule is TRUE, not
    ``(x <= 89.5) OR (x > 89.5)``, and segment 1 has none."""
    rows = [(f"a{i}", float(i), 0) for i in range(100)] + [(f"b{i}", float(90 + i), 1) for i in range(8)]
    frame = spark.createDataFrame(rows, "customer_id string, x double, segment int")
    rules = segment_rules(frame, ["x"], {0: "most", 1: "few"}, {"x": 50.0}, depth=1, seed=1)
    table = rules.table.set_index("segment")
    assert table.loc[0, "rule"] == "TRUE" and table.loc[0, "coverage"] == 1.0
    assert table.loc[0, "precision"] == 100 / 108 and table.loc[1, "rule"] is None


def test_a_root_almost_as_good_that_gives_every_segment_a_rule_wins(spark):
    """Segments 0 (40 customers, z = 1), 1 (10), 2 (25), 3 (25); x splits 0 and 1 (x < 10) from 2 and 3
    (x >= 20), y splits 0 and 2 (y < 5) from 1 and 3 (y > 5). By hand, the Gini impurity after one split
    is 0.375 on z (segment 0 alone), 0.41 on x, 0.451 on y: a greedy tree of depth 2 takes z and then
    y, and leaves segment 1 without a leaf (90 of 100 right). x then y classifies all 100 right."""
    sizes = {0: 40, 1: 10, 2: 25, 3: 25}
    rows = [
        (f"s{s}-{i}", float(20 * (s >= 2) + i % 10), float(6 * (s % 2) + i % 4), float(s == 0), s)
        for s, n in sizes.items()
        for i in range(n)
    ]
    frame = spark.createDataFrame(rows, "customer_id string, x double, y double, z double, segment int")
    names = {s: f"segment {s}" for s in sizes}
    rules = segment_rules(frame, ["x", "y", "z"], names, {"x": 15.0, "y": 5.0, "z": 0.0}, depth=2, seed=1)
    table = rules.table.set_index("segment")
    assert table["precision"].tolist() == [1.0] * 4 and table["coverage"].tolist() == [1.0] * 4, table
    assert all(rule.startswith("x ") for rule in table["rule"]), table["rule"].tolist()


def test_a_segment_the_tree_cannot_reach_has_no_rule(spark):
    names = {0: "low", 1: "middle", 2: "high"}
    rules = segment_rules(_three_bands(spark), ["x", "y"], names, {"x": 25.0, "y": 3.0}, depth=1, seed=1)
    table = rules.table.set_index("segment")
    without = table[table["rule"].isna()]
    assert len(without) == 1 and without["coverage"].tolist() == [0.0] and without["precision"].isna().all()
    assert rules.sql.count("WHEN") == 2


# --- outliers --------------------------------------------------------------------------------------


def test_outlier_thresholds_are_numpys_quantile_of_each_segments_distances(acting_run, joined):
    thresholds = {s["segment"]: s["outlier_threshold"] for s in acting_run.manifest["segments"]}
    assert acting_run.manifest["outliers"]["quantile"] == 0.99
    for segment, group in joined.groupby("segment"):
        # percentile_approx is exact at this size: the smallest distance with >= 99 % at or below it
        expected = np.quantile(group["distance"], 0.99, method="inverted_cdf")
        assert thresholds[segment] == expected
        assert (group["outlier"] == (group["distance"] > expected)).all()


def test_profiles_and_manifest_count_the_outliers(acting_run, joined):
    profiles = pd.read_parquet(f"{acting_run.run_dir}/profiles").set_index("segment").sort_index()
    counts = joined.groupby("segment")["outlier"].sum()
    assert profiles["outliers"].tolist() == counts.tolist()
    assert 0 < counts.sum() <= 0.01 * len(joined) + 5
    assert {s["segment"]: s["outliers"] for s in acting_run.manifest["segments"]} == counts.to_dict()


# --- control groups --------------------------------------------------------------------------------


def _hash_group(customer_id: str, share: float, salt: str) -> str:
    digest = hashlib.sha256(f"{salt}:{customer_id}".encode()).hexdigest()
    return "control" if int(digest[:8], 16) / 2**32 < share else "treatment"


def test_groups_are_the_documented_hash_of_salt_and_id(acting_run, joined):
    expected = [_hash_group(c, CONTROL_SHARE, SALT) for c in joined["customer_id"]]
    assert joined["group"].tolist() == expected
    profiles = pd.read_parquet(f"{acting_run.run_dir}/profiles").set_index("segment").sort_index()
    counts = joined.groupby("segment")["group"].value_counts().unstack()
    assert profiles["control"].tolist() == counts["control"].tolist()
    assert profiles["treatment"].tolist() == counts["treatment"].tolist()


def test_no_group_column_when_control_share_is_zero(spark, demo_data, tmp_path):
    config = base_config(demo_data["customers"], str(tmp_path), model={"k": 3, "restarts": 1})
    config["output"].update(report=False)
    result = run(settings_from_dict(config), spark)
    assert "group" not in pd.read_parquet(f"{result.run_dir}/assignments").columns
    assert "control" not in result.manifest


@pytest.mark.parametrize("size", [200, 2_000, 20_000, 200_000])
@pytest.mark.parametrize("share", [0.05, 0.2, 0.5])
def test_control_share_per_segment_is_within_the_stated_tolerance(spark, size, share):
    customers = spark.range(size).select(
        F.concat(F.lit("cust-"), F.col("id").cast("string")).alias("customer_id"),
        (F.col("id") % 3).alias("segment"),
    )
    grouped = customers.select("segment", control_group(F.col("customer_id"), share, "segspark").alias("g"))
    counts = grouped.groupBy("segment").agg(
        F.count(F.lit(1)).alias("n"), F.count(F.when(F.col("g") == CONTROL, 1)).alias("c")
    )
    for row in counts.collect():
        # the stated tolerance, 4 binomial standard deviations, recomputed here
        tolerance = 4 * np.sqrt(share * (1 - share) / row["n"])
        assert control_tolerance(share, row["n"]) == pytest.approx(tolerance)
        assert abs(row["c"] / row["n"] - share) <= tolerance, (size, share, row)


# --- scoring carries all three ---------------------------------------------------------------------


def test_scoring_flags_outliers_and_groups_with_the_runs_settings(
    spark, acting_run, demo_data, joined, tmp_path
):
    summary = score(
        spark, acting_run.run_dir, CustomersInput(path=demo_data["customers"]), str(tmp_path / "s")
    )
    assert summary["rows"] == {"read": 3000, "assigned": 3000, "rejected": 0}
    scored = pd.read_parquet(tmp_path / "s" / "assignments").sort_values("customer_id").reset_index(drop=True)
    expected = joined[scored.columns].sort_values("customer_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(scored, expected)
    assert {"outlier", "group"} <= set(scored.columns)


# --- consent ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def consent_run(spark, demo_data, tmp_path_factory):
    """800 demo customers with a 0/1/NULL consent flag, and one id twice with conflicting flags."""
    folder = tmp_path_factory.mktemp("consent")
    frame = pd.read_parquet(demo_data["customers"]).head(800)
    rng = np.random.default_rng(3)
    flag = pd.Series(rng.choice([1, 1, 1, 0], size=len(frame)), dtype="Int64")
    flag[rng.choice(len(frame), size=20, replace=False)] = pd.NA
    frame["marketing_consent"] = flag.to_numpy()
    frame.loc[frame.index[0], "marketing_consent"] = 1
    twin = frame.iloc[[0]].assign(marketing_consent=0, annual_income=frame["annual_income"].iloc[0] + 1)
    frame = pd.concat([frame, twin], ignore_index=True)
    frame.to_parquet(folder / "customers.parquet")
    config = base_config(str(folder / "customers.parquet"), str(folder / "lake"), model={"k": 5})
    config["input"]["customers"]["consent"] = {"column": "marketing_consent", "allowed": [1]}
    return run(settings_from_dict(config), spark), frame, folder


def test_customers_without_consent_are_rejected_and_never_segmented(consent_run):
    result, frame, _ = consent_run
    refused_ids = set(frame.loc[frame["marketing_consent"].fillna(0) != 1, "customer_id"])
    assert frame["customer_id"].iloc[0] in refused_ids  # refused on one of its two rows: refused
    refused_rows = frame["customer_id"].isin(refused_ids).sum()
    assert result.rows == {"read": 801, "assigned": 801 - refused_rows, "rejected": refused_rows}
    assert result.manifest["consent"] == {
        "column": "marketing_consent",
        "allowed": [1],
        "rejected": refused_rows,
    }
    rejects = pd.read_parquet(f"{result.run_dir}/rejects")
    assert set(rejects["reason"]) == {"no consent to profiling"}
    assert set(rejects["customer_id"]) == refused_ids and rejects["values"].isna().all()
    assigned = pd.read_parquet(f"{result.run_dir}/assignments")
    assert not set(assigned["customer_id"]) & refused_ids
    assert "marketing_consent" not in result.manifest["features"]["numeric"]
    summary = format_summary(result.record, result.run_dir, 1.0)
    assert f"consent: {refused_rows} customers left out (no consent to profiling)" in summary


def test_customers_without_consent_stay_out_of_the_sample_report_and_scoring(spark, consent_run, tmp_path):
    result, frame, folder = consent_run
    refused = frame[frame["marketing_consent"].fillna(0) != 1]
    refused_rows = frame[frame["customer_id"].isin(refused["customer_id"])]
    sample = pd.read_parquet(f"{result.run_dir}/sample")
    assert len(sample) == result.rows["assigned"]
    keys = sample[FEATURES].astype(float).apply(tuple, axis=1)
    assert not set(keys) & set(refused_rows[FEATURES].astype(float).apply(tuple, axis=1))
    with open(f"{result.run_dir}/report.html") as file:
        page = file.read()
    assert "without consent to profiling" in page
    assert not [c for c in frame["customer_id"] if c in page]
    with open(f"{result.run_dir}/manifest.json") as file:
        manifest = json.load(file)
    assert sum(s["size"] for s in manifest["segments"]) == result.rows["assigned"]

    source = CustomersInput(path=str(folder / "customers.parquet"))
    summary = score(spark, result.run_dir, source, str(tmp_path / "scored"))
    assert summary["rows"]["rejected"] == len(refused_rows)  # the twin with consent is refused as well
    scored = pd.read_parquet(tmp_path / "scored" / "assignments")
    assert not set(scored["customer_id"]) & set(refused["customer_id"])


def test_a_missing_consent_column_stops_the_run_naming_it(spark, demo_data, tmp_path):
    config = base_config(demo_data["customers"], str(tmp_path), model={"k": 3})
    config["input"]["customers"]["consent"] = {"column": "opt_in"}
    with pytest.raises(InputDataError, match="opt_in"):
        run(settings_from_dict(config), spark)


# --- settings --------------------------------------------------------------------------------------


def test_the_new_settings_default_to_off_or_the_design_and_refuse_nonsense():
    minimal = {"input": {"customers": {"path": "c.parquet"}}}
    settings = settings_from_dict(minimal)
    assert (settings.output.control_share, settings.output.control_salt) == (0.0, "segspark")
    assert (settings.segments.outlier_quantile, settings.segments.rule_depth) == (0.99, 3)
    assert settings.input.customers.consent is None
    for key, section, value in (
        ("output.control_share", "output", {"control_share": 1.0}),
        ("segments.outlier_quantile", "segments", {"outlier_quantile": 0}),
        ("input.customers.consent.column", "input", {"customers": {"path": "c", "consent": {}}}),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            settings_from_dict({**minimal, section: value})


def test_the_consent_column_is_never_a_feature(spark):
    frame = spark.createDataFrame([("a", 1.0, 1), ("b", 2.0, 0)], "customer_id string, spend double, ok int")
    spec = resolve_features(frame, "customer_id", FeatureSettings(), exclude=("ok",))
    assert spec.numeric == ["spend"]
    with pytest.raises(ConfigError, match="consent flag"):
        resolve_features(frame, "customer_id", FeatureSettings(numeric=["spend", "ok"]), exclude=("ok",))
