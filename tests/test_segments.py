"""Stable segment ids across runs, the migration matrix, segment names and the playbook."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from segspark.config import SegmentSettings, settings_from_dict
from segspark.errors import ConfigError
from segspark.job import run
from segspark.profiles import (
    _pooled,
    check_playbook,
    cluster_summary,
    name_segments,
    quantile_every,
    suggest_actions,
)
from segspark.segments import EarlierRun, segment_ids
from segspark.validate import FeatureSpec
from tests.conftest import base_config

COLUMNS = ["income", "score"]
MEAN, STD = np.array([50.0, 50.0]), np.array([10.0, 20.0])


def _earlier(segments: dict[int, list[float]], columns=COLUMNS) -> EarlierRun:
    return EarlierRun("before", columns, segments, "unused", "parquet")


def test_without_an_earlier_run_segment_0_is_the_largest():
    centers = np.array([[40.0, 10.0], [60.0, 90.0], [50.0, 50.0]])
    assert segment_ids(centers, {0: 10, 1: 30, 2: 20}, MEAN, STD, COLUMNS, None) == {1: 0, 2: 1, 0: 2}


def test_clusters_take_the_id_of_the_nearest_earlier_segment_one_to_one():
    earlier = _earlier({0: [40.0, 10.0], 1: [60.0, 90.0], 2: [50.0, 50.0]})
    centers = np.array([[51.0, 48.0], [41.0, 12.0], [59.0, 85.0]])  # same segments, new order, moved a bit
    mapping = segment_ids(centers, {0: 5, 1: 5, 2: 5}, MEAN, STD, COLUMNS, earlier)
    assert mapping == {0: 2, 1: 0, 2: 1}


def test_the_match_minimises_the_total_distance_not_each_greedily():
    # cluster 0 is nearest to segment 7, but giving 7 to cluster 1 costs less in total
    earlier = _earlier({7: [0.0, 0.0], 9: [30.0, 0.0]})
    centers = np.array([[9.0, 0.0], [-5.0, 0.0]]) + MEAN
    earlier = _earlier({s: (np.array(c) + MEAN).tolist() for s, c in earlier.segments.items()})
    assert segment_ids(centers, {0: 1, 1: 1}, MEAN, STD, COLUMNS, earlier) == {0: 9, 1: 7}


def test_extra_clusters_get_new_ids_after_the_highest_earlier_one():
    earlier = _earlier({0: [40.0, 10.0], 3: [60.0, 90.0]})
    centers = np.array([[50.0, 50.0], [41.0, 11.0], [61.0, 89.0], [20.0, 20.0]])
    mapping = segment_ids(centers, {0: 40, 1: 10, 2: 10, 3: 30}, MEAN, STD, COLUMNS, earlier)
    assert mapping[1] == 0 and mapping[2] == 3
    assert (mapping[0], mapping[3]) == (4, 5)  # the larger new cluster gets the first new id


def test_changed_features_start_ids_afresh():
    earlier = _earlier({5: [40.0, 10.0], 6: [60.0, 90.0]}, columns=["income", "visits"])
    centers = np.array([[40.0, 10.0], [60.0, 90.0]])
    assert segment_ids(centers, {0: 1, 1: 2}, MEAN, STD, COLUMNS, earlier) == {1: 0, 0: 1}


def _profile(zs: list[list[float]]) -> pd.DataFrame:
    frame = pd.DataFrame({"segment": range(len(zs))})
    for i, column in enumerate(COLUMNS):
        frame[f"{column}_z"] = [z[i] for z in zs]
    return frame


def test_names_use_display_names_strongest_feature_first():
    settings = SegmentSettings(display_names={"income": "annual income"})
    names = name_segments(_profile([[1.2, -2.0], [0.1, 0.2], [-0.9, 0.0]]), COLUMNS, settings)
    assert names == ["Low score · High annual income", "Typical customers", "Low annual income"]


def test_clashing_names_are_lengthened_then_numbered():
    settings = SegmentSettings(name_features=1)
    names = name_segments(_profile([[2.0, 1.0], [2.0, -1.0], [0.0, 0.0], [0.1, 0.1]]), COLUMNS, settings)
    assert names == [
        "High income · High score",
        "High income · Low score",
        "Typical customers (1)",
        "Typical customers (2)",
    ]


def test_name_threshold_is_configurable():
    profile = _profile([[0.7, 0.0]])
    assert name_segments(profile, COLUMNS, SegmentSettings()) == ["High income"]
    assert name_segments(profile, COLUMNS, SegmentSettings(name_threshold=1.0)) == ["Typical customers"]


def test_playbook_attaches_the_actions_of_every_matching_rule():
    settings = SegmentSettings(
        playbook=[
            {"when": {"income": "high", "score": "low"}, "action": "win-back offer"},
            {"when": {"income": "high"}, "action": "premium catalogue"},
            {"when": {"score": "typical"}, "action": "newsletter"},
        ]
    )
    actions = suggest_actions(_profile([[1.0, -1.0], [1.0, 0.0], [-1.0, -1.0]]), COLUMNS, settings)
    assert actions == ["win-back offer; premium catalogue", "premium catalogue; newsletter", None]


def test_playbook_naming_an_unknown_feature_is_refused():
    settings = SegmentSettings(playbook=[{"when": {"recency": "high"}, "action": "x"}])
    with pytest.raises(ConfigError, match=r"segments\.playbook\[0\]\.when: recency is not a numeric feature"):
        check_playbook(settings, COLUMNS)


@pytest.fixture(scope="module")
def two_runs(spark, demo_data, tmp_path_factory):
    """A run, then a re-run on the same customers shuffled and split differently, in one lake."""
    lake = tmp_path_factory.mktemp("stable")
    shuffled = pd.read_parquet(demo_data["customers"]).sample(frac=1.0, random_state=5)
    path = lake / "shuffled.parquet"
    path.mkdir()
    for i in range(3):
        shuffled.iloc[i * 1000 : (i + 1) * 1000].to_parquet(path / f"part-{i}.parquet", index=False)
    results = []
    for run_id, source in (("a", demo_data["customers"]), ("b", str(path))):
        config = base_config(source, str(lake / "out"), model={"k": 5}, output={"run_id": run_id})
        results.append(run(settings_from_dict(config), spark))
    return results


def _assignments(result) -> pd.DataFrame:
    return pd.read_parquet(f"{result.run_dir}/assignments").set_index("customer_id").sort_index()


def test_a_rerun_on_shuffled_input_keeps_segment_ids(two_runs):
    first, second = (_assignments(r) for r in two_runs)
    assert (first["segment"] == second["segment"]).all()
    assert (first["segment_name"] == second["segment_name"]).all()


def test_migration_matrix_counts_customers_per_old_and_new_segment(two_runs):
    first, second = (_assignments(r) for r in two_runs)
    migration = two_runs[1].manifest["migration"]
    assert migration["previous_run"] == "a"
    expected = pd.crosstab(first["segment"], second["segment"]).stack()
    expected = {(int(a), int(b)): int(n) for (a, b), n in expected.items() if n > 0}
    assert {(m["from"], m["to"]): m["customers"] for m in migration["matrix"]} == expected
    assert [(m["from"], m["to"]) for m in migration["matrix"]] == sorted(expected)  # in (from, to) order
    with open(f"{two_runs[1].run_dir}/manifest.json") as file:
        manifest = json.load(file)
    assert manifest["migration"] == migration
    assert "migration" not in two_runs[0].manifest


def test_shuffled_input_gives_the_same_profiles_and_metrics(two_runs):
    first, second = two_runs
    columns = [c for c in first.profiles.columns if c != "seconds"]
    # sums over rows in another order may differ in the last bits only
    pd.testing.assert_frame_equal(first.profiles[columns], second.profiles[columns], rtol=1e-9)
    metrics = ["k", "silhouette", "wssse", "chosen"]
    pd.testing.assert_frame_equal(first.k_metrics[metrics], second.k_metrics[metrics], rtol=1e-9)


def test_everyone_mean_and_std_are_pooled_from_the_segments_stats():
    rng = np.random.default_rng(3)
    values = pd.Series(rng.normal(50, 12, 500))
    values[rng.random(500) < 0.1] = np.nan  # missing values count in no statistic
    segment = pd.Series(rng.integers(0, 4, 500))
    segment[0] = 4  # a segment of one customer: no spread of its own
    grouped = values.groupby(segment)
    mean, std = _pooled(grouped.count(), grouped.mean(), grouped.std(ddof=1))
    assert mean == pytest.approx(values.mean(), rel=1e-12)
    assert std == pytest.approx(values.std(ddof=1), rel=1e-12)


def test_above_quantile_sample_only_the_quantiles_come_from_the_hashed_customers(spark):
    rng = np.random.default_rng(3)
    n = 4000
    frame = pd.DataFrame(
        {
            "customer_id": [f"c{i:05d}" for i in range(n)],
            "spend": rng.gamma(2.0, 50.0, n).round(2),
            "visits": rng.integers(0, 40, n).astype(float),
            # clusters 0-2 of about 1270 customers, cluster 3 of 200 (below every * min_sampled)
            "cluster": np.r_[rng.integers(0, 3, n - 200), np.full(200, 3)].astype("int32"),
            "distance": rng.random(n),
        }
    )
    every = quantile_every(n, 1000)
    assert every == 4
    spec = FeatureSpec("customer_id", ["spend", "visits"])
    clustered = spark.createDataFrame(frame)
    summary = cluster_summary(clustered, spec, 0.99, every, min_sampled=100).set_index("cluster")
    # the documented rule, evaluated apart: pmod(xxhash64(id), 4) = 0
    rule = spark.createDataFrame(frame[["customer_id"]]).selectExpr(
        "customer_id", f"pmod(xxhash64(customer_id), {every}) = 0 AS kept"
    )
    kept_ids = set(rule.where("kept").toPandas()["customer_id"])
    in_sample = frame["customer_id"].isin(kept_ids) | (frame["cluster"] == 3)
    assert 850 < (in_sample & (frame["cluster"] < 3)).sum() < 1100  # about a quarter of clusters 0-2
    everyone = frame.groupby("cluster")
    assert summary["size"].tolist() == everyone.size().tolist()
    for feature in spec.numeric:  # means and counts: of every customer
        np.testing.assert_allclose(summary[f"{feature}__mean"], everyone[feature].mean(), rtol=1e-12)
        np.testing.assert_allclose(summary[f"{feature}__n"], everyone[feature].count())

    def quantile(values, q):  # exact at this size: percentile_approx keeps every value
        return np.quantile(values, q, method="inverted_cdf")

    # quartiles and the 0.99 distance quantile: of the hashed customers, all of the small cluster 3
    for cluster, rows in frame[in_sample].groupby("cluster"):
        np.testing.assert_allclose(summary.loc[cluster, "threshold"], quantile(rows["distance"], 0.99))
        for feature in spec.numeric:
            quartiles = [quantile(rows[feature], q) for q in (0.25, 0.5, 0.75)]
            np.testing.assert_allclose(summary.loc[cluster, f"{feature}__quartiles"], quartiles)
    # at most quantile_sample customers: every one counts
    exact = cluster_summary(clustered, spec, 0.99).set_index("cluster")
    for cluster, rows in everyone:
        np.testing.assert_allclose(exact.loc[cluster, "threshold"], quantile(rows["distance"], 0.99))
        quartiles = [quantile(rows["spend"], q) for q in (0.25, 0.5, 0.75)]
        np.testing.assert_allclose(exact.loc[cluster, "spend__quartiles"], quartiles)
