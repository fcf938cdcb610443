"""Do repeated runs on the same customers agree? The check a weekly user makes, as a script.

    python scripts/repeat.py --customers PATH [--runs 5] [--k-min 2 --k-max 6] [--set key=value ...]

Runs ``segspark run`` RUNS times into one fresh lake, each with another model seed (1, 2, ...) and
the rows of the parquet table at PATH written in another order, as a weekly schedule would. Prints
per run the chosen k, its rule and near-tie verdict, and the share of customers that kept their
segment id from the run before; then whether every run chose the same k.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", required=True, help="a parquet table with customer_id")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--k-min", type=int, default=2)
    parser.add_argument("--k-max", type=int, default=6)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    frame = pd.read_parquet(args.customers)
    work = Path(tempfile.mkdtemp(prefix="segspark-repeat-"))
    rows, previous = [], None
    for seed in range(1, args.runs + 1):
        path = work / f"customers-{seed}.parquet"
        frame.sample(frac=1.0, random_state=seed).to_parquet(path, index=False)
        config = work / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "spark": {"master": "local[2]", "conf": {"spark.ui.enabled": False}},
                    "input": {"customers": {"path": str(path)}},
                    "model": {"k": {"min": args.k_min, "max": args.k_max}, "seed": seed},
                    "output": {"path": str(work / "lake"), "report": False, "run_id": f"run{seed}"},
                }
            )
        )
        command = [sys.executable, "-m", "segspark", "--quiet", "run", "--config", str(config)]
        for override in args.overrides:
            command += ["--set", override]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        run_dir = work / "lake" / "runs" / f"run{seed}"
        manifest = json.loads((run_dir / "manifest.json").read_text())
        current = pd.read_parquet(run_dir / "assignments")[["customer_id", "segment"]]
        kept = None
        if previous is not None:
            joined = previous.merge(current, on="customer_id", suffixes=("_before", "_now"))
            kept = float((joined["segment_before"] == joined["segment_now"]).mean())
        k = manifest["k"]
        rows.append(
            {
                "seed": seed,
                "k": k["chosen"],
                "silhouette": round(k["silhouette"], 4),
                "runner_up": (k.get("runner_up") or {}).get("k"),
                "kept_from_previous": None if kept is None else round(kept, 4),
                "near_tie": k.get("near_tie"),
                "seconds": round(sum(manifest["timings"].values()), 1),
            }
        )
        print(f"run {seed}: k={k['chosen']} by {k['rule']}", flush=True)
        previous = current
    table = pd.DataFrame(rows)
    print()
    print(table.to_string(index=False))
    kept = table["kept_from_previous"].dropna()
    print(f"\nsame k in every run: {table['k'].nunique() == 1}; kept their segment id: min {kept.min():.3f}")


if __name__ == "__main__":
    main()
