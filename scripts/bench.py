"""Benchmark: `segspark run` against the scikit-learn recipe of the articles, on the same customers.

    python scripts/bench.py [--sizes 1000000 10000000] [--data bench-data] [--no-extras] [--no-untuned]

For each size it generates (or reuses) N customers with 6 numeric features and 5 known segments,
then runs, each in its own process so that peak memory is its own:
  - segspark:         `segspark run` for k = 2..10 (local mode, all cores, driver memory 6g);
  - segspark untuned: the same with no Spark setting at all, as a user first writes the config
                      (not with --no-untuned);
  - scikit-learn:     StandardScaler, KMeans(n_init=1) per k, silhouette_score(sample_size=20000),
                      the best k, assignments and per-segment means written to parquet.
A run that fails is printed with its output's end and shows NaN; for scikit-learn the table says
how it ended (out of memory, or out of time after --sklearn-limit seconds, default an hour).
It prints one table: wall seconds of each, the ratio segspark / scikit-learn, peak memory
(RSS of the process tree), chosen k and adjusted Rand index against the truth; then, per step of segspark's
tuned run, seconds, Spark jobs, tasks and passes over the rows (rows read by file and cache scans,
from Spark's event log, divided by N). Unless --no-extras: the 20,000-customer demo (`make run`'s job)
end to end, into a new lake and again into the same lake, and the same 30,000-customer job in local
mode and under spark-submit on a local-cluster[2,1,1024] (two executor JVMs).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import yaml

K_RANGE = (2, 10)
SILHOUETTE_SAMPLE = 20_000
DEMO_CUSTOMERS = 20_000
DEMO_RUNS = (  # (row, run id): the demo into a new lake, then again into the same lake and catalog
    ("demo (make run), local[*]", "bench"),
    ("demo again, same lake (make run twice)", "bench-again"),
)
CLUSTER_CUSTOMERS = 30_000
CLUSTER_MASTER = "local-cluster[2,1,1024]"
REPO = Path(__file__).resolve().parent.parent
SCANS = ("Scan ", "InMemoryTableScan")  # plan nodes that read rows from files or from a cache


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


def timed(
    command: list[str], env: dict | None = None, check: bool = True, limit_s: float | None = None
) -> tuple[float, float, str]:
    """Wall seconds, peak memory (MB) of a command and its children, and how it ended: "ok",
    "out of memory", "out of time (> N s)" (stopped after ``limit_s``) or "failed". A failure stops the bench
    when ``check``; else it is printed with the output's end and the seconds are NaN."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    peak = [0.0]

    def watch() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss_mb(process.pid))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        output, _ = process.communicate(timeout=limit_s)
        ended = "ok" if process.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own process group: the Spark JVM goes too
        output, _ = process.communicate()
        ended = f"out of time (> {limit_s:.0f} s)"
    watcher.join()
    seconds = time.perf_counter() - started
    if ended == "failed" and ("MemoryError" in output or process.returncode == -signal.SIGKILL):
        ended = "out of memory"  # Python's MemoryError, or the kernel's OOM killer
    if ended == "ok":
        return seconds, peak[0], ended
    if check:
        sys.exit(f"{ended}: {' '.join(command)}\n{output[-3000:]}")
    print(f"{ended} after {seconds:.0f} s: {' '.join(command)}\n{output[-1500:]}", flush=True)
    return float("nan"), peak[0], ended


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


def ari(assignments: Path, truth: Path) -> float:
    """The adjusted Rand index of the assignments against the truth, computed in a process of its own:
    at 50M customers the two tables take about 7 GB in pandas, which this process would keep while the
    next run (scikit-learn's, 17 GB) needs the memory."""
    result = subprocess.run(
        [sys.executable, __file__, "--ari-worker", str(assignments), str(truth)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(result.stdout)


def ari_worker(assignments: str, truth: str) -> None:
    from sklearn.metrics import adjusted_rand_score

    joined = pd.read_parquet(truth).merge(pd.read_parquet(assignments), on="customer_id")
    print(adjusted_rand_score(joined["true_segment"], joined["segment"]))


def spark_work(event_log: Path) -> pd.DataFrame:
    """Per step of a run (its job description): Spark jobs, tasks and rows read by file and cache scans,
    from the event log (one uncompressed file of JSON lines)."""
    job_step, stage_job, scan_accumulators = {}, {}, set()
    jobs, tasks, rows = collections.Counter(), collections.Counter(), collections.Counter()

    def scans(plan: dict) -> None:
        if plan["nodeName"].startswith(SCANS):
            scan_accumulators.update(
                m["accumulatorId"] for m in plan["metrics"] if m["name"] == "number of output rows"
            )
        for child in plan["children"]:
            scans(child)

    # Spark 3.5 writes one file named after the application; 4.x a folder with events_1_<id> in it
    files = [p for p in event_log.rglob("*") if p.is_file() and not p.name.startswith((".", "appstatus"))]
    for path in files:
        with path.open() as lines:
            for line in lines:
                event = json.loads(line)
                kind = event["Event"]
                if kind == "SparkListenerJobStart":
                    description = (event.get("Properties") or {}).get("spark.job.description") or "(other)"
                    step = description.removeprefix("segspark: ")
                    job_step[event["Job ID"]] = step
                    jobs[step] += 1
                    stage_job.update({stage: event["Job ID"] for stage in event["Stage IDs"]})
                elif kind.endswith(("SQLExecutionStart", "SQLAdaptiveExecutionUpdate")):
                    scans(event["sparkPlanInfo"])
                elif kind == "SparkListenerTaskEnd":
                    step = job_step.get(stage_job.get(event["Stage ID"]), "(other)")
                    tasks[step] += 1
                    rows[step] += sum(
                        int(a.get("Update", 0))
                        for a in event["Task Info"].get("Accumulables", [])
                        if a["ID"] in scan_accumulators
                    )
    return pd.DataFrame({"jobs": jobs, "tasks": tasks, "rows_read": rows}).fillna(0).astype(int)


def write_config(path: Path, customers: Path, lake: Path, spark: dict) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "spark": spark,
                "input": {"customers": {"path": str(customers)}},
                "model": {"k": {"min": K_RANGE[0], "max": K_RANGE[1]}},
                "output": {"path": str(lake), "run_id": "bench", "report": False},
            }
        )
    )
    return path


def event_logged(folder: Path, conf: dict) -> dict:
    """Spark settings that write an uncompressed event log to ``folder`` (emptied first)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return {
        **conf,
        "spark.eventLog.enabled": True,
        "spark.eventLog.dir": str(folder),
        "spark.eventLog.compress": False,
    }


def segspark_run(config: Path, check: bool = True, submit: list[str] | None = None) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    env["PYSPARK_PYTHON"] = sys.executable
    command = [sys.executable, "-m", "segspark", "--quiet", "run", "--config", str(config)]
    if submit:  # spark-submit runs the same entry point as the driver program
        spark_submit = Path(sys.executable).parent / "spark-submit"
        command = [
            str(spark_submit),
            *submit,
            str(REPO / "jobs" / "segment_customers.py"),
            "--config",
            str(config),
        ]
    seconds, peak, _ = timed(command, env, check=check)
    return seconds, peak


def generated(n: int, data: Path) -> Path:
    folder = data / f"n{n}"
    if not ((folder / "customers.parquet").exists() and (folder / "truth.parquet").exists()):
        print(f"generating {n} customers in {folder} ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "segspark", "generate", "--customers", str(n), "--out", str(folder)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return folder


def result_of(lake: Path, truth: Path, run_id: str = "bench") -> tuple[int | None, float]:
    """The chosen k and the adjusted Rand index of a run in ``lake``; (None, NaN) if it failed."""
    manifest = lake / "runs" / run_id / "manifest.json"
    if not manifest.exists() or json.loads(manifest.read_text())["status"] != "succeeded":
        return None, float("nan")
    k = json.loads(manifest.read_text())["k"]["chosen"]
    return k, ari(lake / "runs" / run_id / "assignments", truth)


def bench(
    n: int, data: Path, driver_memory: str, untuned: bool = True, sklearn_limit_s: float = 3600.0
) -> dict:
    folder = generated(n, data)
    customers, truth = folder / "customers.parquet", folder / "truth.parquet"
    events, sk_out = folder / "events", folder / "sklearn"
    runs = {"untuned": (float("nan"), float("nan"), None, float("nan"))}
    configs = [("tuned", {"spark.driver.memory": driver_memory})] + ([("untuned", {})] if untuned else [])
    for name, conf in configs:
        lake = folder / f"lake-{name}"
        shutil.rmtree(lake, ignore_errors=True)
        spark = {"master": "local[*]", "conf": {"spark.ui.enabled": False, **conf}}
        if name == "tuned":
            spark["conf"] = event_logged(events, spark["conf"])
        config = write_config(folder / f"bench-{name}.yaml", customers, lake, spark)
        print(f"n={n}: segspark run ({name}) ...", flush=True)
        seconds, peak = segspark_run(config, check=name == "tuned")
        runs[name] = (seconds, peak, *result_of(lake, truth))
    print(f"n={n}: scikit-learn ...", flush=True)
    shutil.rmtree(sk_out, ignore_errors=True)  # a failed run (out of memory) leaves no result behind
    sk_seconds, sk_peak, sk_ended = timed(
        [sys.executable, __file__, "--sklearn-worker", str(customers), str(sk_out)],
        check=False,
        limit_s=sklearn_limit_s,
    )
    sk_done = sk_ended == "ok"
    manifest = json.loads((folder / "lake-tuned" / "runs" / "bench" / "manifest.json").read_text())
    work = spark_work(events)
    steps = pd.DataFrame({"seconds": pd.Series(manifest["timings"])}).join(work, how="outer")
    steps["passes"] = steps["rows_read"] / n
    return {
        "N": n,
        "segspark_s": runs["tuned"][0],
        "untuned_s": runs["untuned"][0],
        "sklearn_s": sk_seconds,
        "sklearn_ended": sk_ended,
        "ratio": runs["tuned"][0] / sk_seconds,
        "untuned_ratio": runs["untuned"][0] / sk_seconds,
        "segspark_peak_mb": runs["tuned"][1],
        "untuned_peak_mb": runs["untuned"][1],
        "sklearn_peak_mb": sk_peak,
        "segspark_k": runs["tuned"][2],
        "untuned_k": runs["untuned"][2],
        "sklearn_k": int((sk_out / "k").read_text()) if sk_done else None,
        "segspark_ari": runs["tuned"][3],
        "untuned_ari": runs["untuned"][3],
        "sklearn_ari": ari(sk_out / "assignments.parquet", truth) if sk_done else float("nan"),
        "jobs": int(work["jobs"].sum()),
        "passes": float(work["rows_read"].sum() / n),
        "steps": steps,
    }


def extras(data: Path) -> pd.DataFrame:
    """The demo end to end, into a new lake and again into the same lake (a second `make run`, as every
    scheduled run after the first: its catalog holds a run), and one job in local mode against a
    local-cluster of two executor JVMs."""
    rows = []
    demo = generated(DEMO_CUSTOMERS, data)
    lake = demo / "lake-demo"
    shutil.rmtree(lake, ignore_errors=True)
    config = yaml.safe_load((REPO / "conf" / "local.yaml").read_text())
    config["input"]["customers"]["path"] = str(demo / "customers.parquet")
    path = demo / "demo.yaml"
    for run, run_id in DEMO_RUNS:
        config["output"].update(path=str(lake), run_id=run_id)
        path.write_text(yaml.safe_dump(config))
        print(f"{run}: segspark run --config conf/local.yaml (20,000 customers) ...", flush=True)
        seconds, peak = segspark_run(path)
        k, score = result_of(lake, demo / "truth.parquet", run_id)
        rows.append({"run": run, "seconds": seconds, "peak_mb": peak, "k": k, "ari": score})

    folder = generated(CLUSTER_CUSTOMERS, data)
    truth = folder / "truth.parquet"
    for name, master in (("local", "local[2]"), ("local-cluster", CLUSTER_MASTER)):
        lake = folder / f"lake-{name}"  # no [ ] in a folder name: Spark reads paths as glob patterns
        shutil.rmtree(lake, ignore_errors=True)
        config = write_config(
            folder / "cluster.yaml",
            folder / "customers.parquet",
            lake,
            {"master": master, "conf": {"spark.ui.enabled": False}},
        )
        print(f"{CLUSTER_CUSTOMERS} customers on {master} ...", flush=True)
        submit = ["--master", master, "--conf", "spark.ui.enabled=false"]
        seconds, peak = segspark_run(config, check=False, submit=submit)
        k, score = result_of(lake, truth)
        rows.append(
            {
                "run": f"{CLUSTER_CUSTOMERS} customers, spark-submit --master {master}",
                "seconds": seconds,
                "peak_mb": peak,
                "k": k,
                "ari": score,
            }
        )
    table = pd.DataFrame(rows)
    cluster_runs = ~table["run"].isin([run for run, _ in DEMO_RUNS])
    table["vs local"] = (table["seconds"] / table.loc[cluster_runs, "seconds"].iloc[0]).where(cluster_runs)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--data", type=Path, default=REPO / "bench-data")
    parser.add_argument("--driver-memory", default="6g")
    parser.add_argument("--no-extras", action="store_true", help="skip the demo and local-cluster runs")
    parser.add_argument("--no-untuned", action="store_true", help="skip the run without Spark settings")
    parser.add_argument(
        "--sklearn-limit", type=float, default=3600, help="seconds before the scikit-learn run is stopped"
    )
    parser.add_argument("--sklearn-worker", nargs=2, metavar=("CUSTOMERS", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--ari-worker", nargs=2, metavar=("ASSIGNMENTS", "TRUTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sklearn_worker:
        sklearn_worker(*args.sklearn_worker)
        return
    if args.ari_worker:
        ari_worker(*args.ari_worker)
        return
    rows = [
        bench(n, args.data, args.driver_memory, not args.no_untuned, args.sklearn_limit) for n in args.sizes
    ]
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "steps"} for r in rows])
    print()
    print(table.T.to_string(float_format=lambda v: f"{v:.3f}"))
    for r in rows:
        print(
            f"\nsegspark (tuned) at N={r['N']}: seconds, Spark jobs, tasks and passes over the rows per step"
        )
        print(r["steps"].to_string(float_format=lambda v: f"{v:.2f}"))
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        growth = last["segspark_s"] / first["segspark_s"]
        slope = (last["segspark_s"] - first["segspark_s"]) / (last["sklearn_s"] - first["sklearn_s"])
        print(f"\ntime({last['N']}) / time({first['N']}) = {growth:.2f}")
        print(f"cost per extra customer, segspark / scikit-learn = {slope:.2f}")
    if not args.no_extras:
        print()
        print(extras(args.data).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
