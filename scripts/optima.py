"""The k-means optimum against an oracle: how often segspark's fit at the true k reaches the good optimum.

    python scripts/optima.py [--customers 10000] [--data-seeds 20] [--model-seeds 5] [--rules]

For each data seed, ``segspark generate``'s customers (five known segments) are scaled as segspark
scales them; scikit-learn's KMeans (k-means++, n_init=10) finds the best WSSSE on those rows, the
oracle. segspark's ``fit_k`` at k = 5 then runs with each model seed (starts until two agree on the
best, see sweep.fit_k); its first start alone, and its first three, are measured on the same fits. A
fit reaches the good optimum when its k-means cost is within 1 % of the oracle's WSSSE. With
``--rules``, a whole sweep (k = 2..8) per data seed also checks that every selection rule picks k = 5.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans as SkKMeans

from segspark.config import ModelSettings
from segspark.generate import FEATURES, customer_chunks
from segspark.sweep import choose_k, fit_k, sweep_k

TRUE_K = 5
GOOD = 1.01  # within 1 % of the oracle's WSSSE
RULES = ["silhouette", "elbow", "gap", "calinski_harabasz", "davies_bouldin"]
POLICIES = (("one start", 1), ("three starts", 3), ("until confirmed", None))


def scaled_customers(n: int, seed: int) -> np.ndarray:
    x = next(customer_chunks(n, seed=seed))[FEATURES].to_numpy(float)
    return (x - x.mean(axis=0)) / x.std(axis=0, ddof=1)  # StandardScaler: mean 0, sample sd 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--data-seeds", type=int, default=20)
    parser.add_argument("--model-seeds", type=int, default=5)
    parser.add_argument("--rules", action="store_true")
    args = parser.parse_args()
    fits, sweeps = [], []
    for data_seed in range(100, 100 + args.data_seeds):
        z = scaled_customers(args.customers, data_seed)
        oracle = SkKMeans(TRUE_K, n_init=10, random_state=0).fit(z).inertia_
        for model_seed in range(args.model_seeds):
            started = time.perf_counter()
            result = fit_k(z, ModelSettings(seed=model_seed), TRUE_K)
            seconds = time.perf_counter() - started
            for policy, starts in POLICIES:
                used = result.objectives[:starts]
                fits.append(
                    {
                        "policy": policy,
                        "data_seed": data_seed,
                        "model_seed": model_seed,
                        "ratio": min(used) / oracle,
                        "starts": len(used),
                        "seconds": seconds * len(used) / result.starts,
                    }
                )
        if args.rules:
            settings = ModelSettings(k={"min": 2, "max": 8}, gap=True, gap_references=5)
            sweep = sweep_k(z, settings)
            picks = {
                rule: choose_k(sweep.results, settings.model_copy(update={"selection": rule})).chosen.k
                for rule in RULES
            }
            sweeps += [{"data_seed": data_seed, "rule": rule, "k": k} for rule, k in picks.items()]
            print(f"data seed {data_seed}: k chosen by each rule {picks}", flush=True)
        print(f"data seed {data_seed} done", flush=True)
    table = pd.DataFrame(fits, columns=["policy", "data_seed", "model_seed", "ratio", "starts", "seconds"])
    table["good"] = table["ratio"] <= GOOD
    print(f"\nfit at k={TRUE_K} on {args.customers} customers, ", end="")
    print(f"{args.data_seeds} data seeds x {args.model_seeds} model seeds")
    print(
        table.groupby("policy", sort=False)
        .agg(
            good_optimum=("good", "mean"),
            fits=("good", "size"),
            worst_ratio=("ratio", "max"),
            mean_starts=("starts", "mean"),
            median_seconds=("seconds", "median"),
        )
        .to_string(float_format=lambda v: f"{v:.3f}")
    )
    missed = table[~table["good"]]
    if len(missed):
        print("\nfits that missed the good optimum:\n" + missed.to_string(index=False))
    if sweeps:
        picks = pd.DataFrame(sweeps)
        picks["right"] = picks["k"] == TRUE_K
        print(f"\nselection rules over {args.data_seeds} data seeds (k = 2..8, model seed 42):")
        print(picks.groupby("rule")["right"].mean().rename("share choosing k=5").to_string())


if __name__ == "__main__":
    main()
