"""The same data gives the same segments: fits that reach the good optimum, an honest word for near
ties, and repeated runs (other seeds, shuffled rows, one lake) that agree on k and on who is where.
Expected values come from scikit-learn and numpy on the same rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans as SkKMeans
from sklearn.metrics import silhouette_samples

from segspark.config import ModelSettings, settings_from_dict
from segspark.generate import FEATURES as DEMO_FEATURES
from segspark.generate import weak_customers
from segspark.job import run
from segspark.sweep import NEAR_TIE_SIGMAS, choose_k, fit_k, sweep_k
from tests.conftest import base_config

RUNS = 5  # repeated runs per table: seeds 1..5, each on the rows in another order
KEEP = 0.95  # customers that keep their segment id from one run to the next, at least


@pytest.fixture(scope="module")
def demo_scaled(demo_data):
    """The 3000 demo customers scaled as segspark scales them (mean 0, sample sd 1)."""
    x = pd.read_parquet(demo_data["customers"])[DEMO_FEATURES].to_numpy(float)
    return (x - x.mean(axis=0)) / x.std(axis=0, ddof=1)


def test_a_lone_start_in_a_poor_optimum_is_not_kept(demo_scaled):
    points = demo_scaled
    oracle = SkKMeans(5, n_init=10, random_state=0).fit(points).inertia_
    # the first start of some model seed lands in a poor optimum here (two centres in one segment)
    seed = next(
        s for s in range(50) if fit_k(points, ModelSettings(seed=s, restarts=1), 5).wssse > 1.2 * oracle
    )
    lone = fit_k(points, ModelSettings(seed=seed, restarts=1), 5)
    assert lone.wssse > 1.2 * oracle and not lone.confirmed
    confirmed = fit_k(points, ModelSettings(seed=seed), 5)
    assert confirmed.wssse <= 1.01 * oracle
    assert confirmed.confirmed and confirmed.starts >= 3
    # two starts reached the best objective, and none did better
    best = min(confirmed.objectives)
    assert sum(o <= best * 1.001 for o in confirmed.objectives) >= 2


@pytest.fixture(scope="module")
def uniform():
    """300 customers spread evenly over a square: no real segments, so several k fit about as well."""
    points = np.random.default_rng(2).uniform(size=(300, 2))
    return points, sweep_k(points, ModelSettings(k={"min": 2, "max": 6}))


def test_a_near_tie_is_measured_against_resampling_noise_and_said_in_plain_words(uniform):
    points, sweep = uniform
    contest = sweep.contest
    winner, other = sweep.chosen, sweep.runner_up
    s_win = silhouette_samples(points, winner.fit.labels, metric="sqeuclidean")
    s_other = silhouette_samples(points, other.fit.labels, metric="sqeuclidean")
    assert contest.margin == pytest.approx(s_win.mean() - s_other.mean(), abs=1e-9)
    # the standard error of a mean of paired differences is what resampling the customers gives
    standard_error = (s_win - s_other).std(ddof=1) / np.sqrt(len(points))
    assert contest.noise == pytest.approx(standard_error, rel=0.35)
    assert contest.margin < NEAR_TIE_SIGMAS * standard_error
    assert sweep.near_tie
    assert sweep.verdict().startswith(
        f"k = {winner.k} and k = {other.k} fit these customers almost equally well"
    )


def test_the_earlier_k_wins_a_near_tie_but_not_a_clear_loss(uniform):
    _, sweep = uniform
    settings = ModelSettings(k={"min": 2, "max": 6})
    tied = choose_k(sweep.results, settings, earlier_k=(sweep.runner_up.k, "run-1"))
    assert tied.chosen.k == sweep.runner_up.k and tied.kept_earlier
    assert f"k={sweep.runner_up.k} kept from the earlier run run-1" in tied.rule
    assert tied.runner_up.k == sweep.chosen.k
    # the worst k (2) is clearly worse on this square than the best k
    worst = min(sweep.results, key=lambda r: r.silhouette)
    clear = choose_k(sweep.results, settings, earlier_k=(worst.k, "run-1"))
    assert clear.chosen.k == sweep.chosen.k and not clear.kept_earlier
    off = choose_k(
        sweep.results, ModelSettings(k={"min": 2, "max": 6}, continuity=False), (sweep.runner_up.k, "r")
    )
    assert off.chosen.k == sweep.chosen.k


def _repeated_runs(spark, frame: pd.DataFrame, tmp_path, model: dict) -> list:
    """RUNS runs into one lake, each with another seed and the rows in another order."""
    lake = str(tmp_path / "lake")
    manifests, assignments = [], []
    for seed in range(1, RUNS + 1):
        path = str(tmp_path / f"customers-{seed}.parquet")
        frame.sample(frac=1.0, random_state=seed).to_parquet(path, index=False)
        config = base_config(path, lake, model={**model, "seed": seed}, output={"report": False})
        result = run(settings_from_dict(config), spark)
        manifests.append(result.manifest)
        assignments.append(pd.read_parquet(f"{result.run_dir}/assignments")[["customer_id", "segment"]])
    return manifests, assignments


def _kept(before: pd.DataFrame, after: pd.DataFrame) -> float:
    joined = before.merge(after, on="customer_id", suffixes=("_before", "_after"))
    return float((joined["segment_before"] == joined["segment_after"]).mean())


@pytest.mark.slow
@pytest.mark.parametrize("table", ["weak", "demo"])
def test_repeated_runs_on_the_same_customers_agree(spark, demo_data, tmp_path, table):
    if table == "weak":  # overlapping groups, skewed spend, a feature without structure
        frame = weak_customers(1500, seed=3).drop(columns="true_segment")
    else:
        frame = pd.read_parquet(demo_data["customers"])
    manifests, assignments = _repeated_runs(spark, frame, tmp_path, {"k": {"min": 2, "max": 6}})
    chosen = [m["k"]["chosen"] for m in manifests]
    assert len(set(chosen)) == 1, [m["k"]["rule"] for m in manifests]
    kept = [_kept(a, b) for a, b in zip(assignments, assignments[1:], strict=False)]
    assert min(kept) >= KEEP, kept
    assert all(m["k"]["confirmed"] for m in manifests)
