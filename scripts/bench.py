"""Benchmark: `segspark run` against the scikit-learn recipe of the articles, on the same customers.

    python scripts/bench.py [--sizes 1000000 10000000] [--data bench-data]

For each size it generates (or reuses) N customers with 6 numeric features and 5 known segments,
then runs, each in its own process so that peak memory is its own:
  - segspark:     `segspark run` for k = 2..10 (local mode, all cores, driver memory 6g);
  - scikit-learn: StandardScaler, KMeans(n_init=1) per k, silhouette_score(sample_size=20000),
                  the best k, assignments and per-segment means written to parquet.
It prints one table: wall seconds of each, the ratio segspark / scikit-learn, peak memory (RSS of the
process tree), chosen k and adjusted Rand index against the truth; then segspark's time per step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import yaml

K_RANGE = (2, 10)
SILHOUETTE_SAMPLE = 20_000
REPO = Path(__file__).resolve().parent.parent


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/status") as status:
                kb = next((int(line.split()[1]) for line in status if line.startswith("VmRSS:")), 0)
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
        rss[int(entry)] = kb
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += rss.get(current, 0)
        stack.extend(children.get(current, []))
    return total / 1024


def timed(command: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and peak memory (MB) of a command and its children; fails loudly if it fails."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0.0]

    def watch() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss_mb(process.pid))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    output, _ = process.communicate()
    watcher.join()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{output[-3000:]}")
    return seconds, peak[0]


def sklearn_worker(customers: str, out: str) -> None:
    """The articles' recipe on one machine, as a data scientist would write it."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    from sklearn.preprocessing import StandardScaler

    frame = pd.read_parquet(customers)
    features = [c for c in frame.columns if c != "customer_id"]
    scaled = StandardScaler().fit_transform(frame[features].to_numpy(float))
    best = None
    for k in range(K_RANGE[0], K_RANGE[1] + 1):
        labels = KMeans(n_clusters=k, n_init=1, random_state=0).fit_predict(scaled)
        score = silhouette_score(scaled, labels, sample_size=SILHOUETTE_SAMPLE, random_state=0)
        if best is None or score > best[0]:
            best = (score, k, labels)
    _, k, labels = best
    Path(out).mkdir(parents=True, exist_ok=True)
    assignments = pd.DataFrame({"customer_id": frame["customer_id"], "segment": labels})
    assignments.to_parquet(f"{out}/assignments.parquet", index=False)
    frame[features].assign(segment=labels).groupby("segment").mean().to_parquet(f"{out}/profiles.parquet")
    Path(f"{out}/k").write_text(str(k))


def ari(assignments: pd.DataFrame, truth: pd.DataFrame) -> float:
    from sklearn.metrics import adjusted_rand_score

    joined = truth.merge(assignments, on="customer_id")
    return adjusted_rand_score(joined["true_segment"], joined["segment"])


def bench(n: int, data: Path, driver_memory: str) -> dict:
    folder = data / f"n{n}"
    customers, truth_path = folder / "customers.parquet", folder / "truth.parquet"
    if not (customers.exists() and truth_path.exists()):
        print(f"generating {n} customers in {folder} ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "segspark", "generate", "--customers", str(n), "--out", str(folder)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    lake, sk_out = folder / "lake", folder / "sklearn"
    config = folder / "bench.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "spark": {
                    "master": "local[*]",
                    "conf": {"spark.driver.memory": driver_memory, "spark.ui.enabled": False},
                },
                "input": {"customers": {"path": str(customers)}},
                "model": {"k": {"min": K_RANGE[0], "max": K_RANGE[1]}},
                "output": {"path": str(lake), "run_id": "bench", "report": False},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    print(f"n={n}: segspark run ...", flush=True)
    seg_seconds, seg_peak = timed(
        [sys.executable, "-m", "segspark", "--quiet", "run", "--config", str(config)], env
    )
    print(f"n={n}: scikit-learn ...", flush=True)
    sk_seconds, sk_peak = timed([sys.executable, __file__, "--sklearn-worker", str(customers), str(sk_out)])

    truth = pd.read_parquet(truth_path)
    manifest = json.loads((lake / "runs" / "bench" / "manifest.json").read_text())
    return {
        "N": n,
        "segspark_s": seg_seconds,
        "sklearn_s": sk_seconds,
        "ratio": seg_seconds / sk_seconds,
        "segspark_peak_mb": seg_peak,
        "sklearn_peak_mb": sk_peak,
        "segspark_k": manifest["k"]["chosen"],
        "sklearn_k": int((sk_out / "k").read_text()),
        "segspark_ari": ari(pd.read_parquet(lake / "runs" / "bench" / "assignments"), truth),
        "sklearn_ari": ari(pd.read_parquet(sk_out / "assignments.parquet"), truth),
        "timings": manifest["timings"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--data", type=Path, default=REPO / "bench-data")
    parser.add_argument("--driver-memory", default="6g")
    parser.add_argument("--sklearn-worker", nargs=2, metavar=("CUSTOMERS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sklearn_worker:
        sklearn_worker(*args.sklearn_worker)
        return
    rows = [bench(n, args.data, args.driver_memory) for n in args.sizes]
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "timings"} for r in rows])
    print()
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\nsegspark seconds per step:")
    print(pd.DataFrame({r["N"]: r["timings"] for r in rows}).to_string(float_format=lambda v: f"{v:.1f}"))
    if len(rows) > 1:
        growth = rows[-1]["segspark_s"] / rows[0]["segspark_s"]
        print(f"\ntime({rows[-1]['N']}) / time({rows[0]['N']}) = {growth:.2f}")


if __name__ == "__main__":
    main()
