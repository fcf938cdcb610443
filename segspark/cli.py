"""The command line: ``segspark run | score | report | history | generate``; ``python -m segspark`` too."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import TYPE_CHECKING

from segspark import __version__
from segspark.errors import ConfigError, SegsparkError
from segspark.runtime import quiet_gateway_logging

if TYPE_CHECKING:
    from segspark.manifest import Manifest, Orders

log = logging.getLogger("segspark")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segspark", description="Customer segmentation on Apache Spark.")
    parser.add_argument("--version", action="version", version=f"segspark {__version__}")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="segment customers and publish the run to the lake")
    run.add_argument("--config", required=True, help="YAML settings file (see conf/local.yaml)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set model.k=5 (repeatable)",
    )

    score = commands.add_parser("score", help="assign new customers with a saved run's model")
    score.add_argument("--run", required=True, metavar="RUN_DIR|latest", help="a run folder, or latest")
    score.add_argument("--lake", default="lake/segmentation", help="the output.path whose latest run to use")
    score.add_argument("--input", required=True, metavar="PATH", help="the customers to score")
    score.add_argument("--format", choices=["parquet", "csv", "json", "orc"], default="parquet")
    score.add_argument(
        "--option",
        dest="options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a reader option, e.g. --option sep=';' (repeatable)",
    )
    score.add_argument(
        "--output", required=True, metavar="DIR", help="where to write assignments/ and rejects/"
    )
    score.add_argument("--output-format", choices=["parquet", "csv", "json", "orc"], default="parquet")

    report = commands.add_parser("report", help="rebuild a run's report.html from its outputs")
    report.add_argument("run", metavar="RUN_DIR|latest", help="a run folder, or latest")
    report.add_argument("--lake", default="lake/segmentation", help="the output.path whose latest run to use")

    history = commands.add_parser("history", help="segments over time: shares, centroids, moves, drift")
    history.add_argument("--lake", default="lake/segmentation", help="the output.path of the runs")
    history.add_argument("--runs", type=int, default=None, metavar="N", help="the last N runs (default 10)")

    generate = commands.add_parser("generate", help="write synthetic customers with known segments")
    generate.add_argument("--customers", type=int, required=True, metavar="N", help="number of customers")
    generate.add_argument("--out", required=True, metavar="DIR", help="folder to write into")
    generate.add_argument("--seed", type=int, default=7)
    generate.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    generate.add_argument(
        "--orders", action="store_true", help="also write their orders (DIR/orders.<format>/)"
    )
    generate.add_argument(
        "--dirty-orders",
        action="store_true",
        help="with --orders: add a few orders the job must reject (dates and amounts written as text)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format=LOG_FORMAT, stream=sys.stderr
    )
    quiet_gateway_logging()  # no "Closing down clientserver connection" lines
    try:
        return COMMANDS[args.command](args)
    except SegsparkError as exc:
        print(f"segspark: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception:
        log.exception("internal error; the run was not published")
        return 1
    finally:
        if "pyspark" in sys.modules:  # generate starts no Spark
            from segspark.session import stop_if_connect

            stop_if_connect(active_session())


def _run(args: argparse.Namespace) -> int:
    from segspark.config import load_settings
    from segspark.job import run

    settings = load_settings(args.config, args.overrides)
    started = time.perf_counter()
    result = run(settings)
    print(format_summary(result.record, result.run_dir, time.perf_counter() - started))
    return 0


def _score(args: argparse.Namespace) -> int:
    from segspark.config import SourceSettings, SparkSettings
    from segspark.score import resolve_run, score
    from segspark.session import get_session, local_input_bytes

    options = dict(option.partition("=")[::2] for option in args.options)
    source = SourceSettings(path=args.input, format=args.format, options=options)
    spark = get_session(SparkSettings(), local_input_bytes([args.input]))
    summary = score(spark, resolve_run(spark, args.run, args.lake), source, args.output, args.output_format)
    rows = summary["rows"]
    print(
        f"scored with run {summary['run_id']}: {rows['read']} read, {rows['assigned']} assigned, "
        f"{rows['rejected']} rejected\noutputs: {args.output}"
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    from segspark.config import SparkSettings
    from segspark.report import write_report
    from segspark.score import resolve_run, successful_run
    from segspark.session import get_session

    spark = get_session(SparkSettings())
    run_dir = resolve_run(spark, args.run, args.lake)
    successful_run(spark, run_dir)  # a clear message when it is no successful run
    print(f"report: {write_report(spark, run_dir)}")
    return 0


def _history(args: argparse.Namespace) -> int:
    from segspark.config import SparkSettings
    from segspark.history import DEFAULT_RUNS, format_history, read_history
    from segspark.lake import Lake
    from segspark.session import get_session

    runs = DEFAULT_RUNS if args.runs is None else args.runs
    if runs < 1:
        raise ConfigError("--runs must be at least 1")
    lake = Lake(get_session(SparkSettings()), args.lake)
    print(format_history(read_history(lake, runs), args.lake))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from segspark.generate import write_customers, write_orders

    if args.customers < 1:
        raise ConfigError("--customers must be at least 1")
    if args.dirty_orders and not args.orders:
        raise ConfigError("--dirty-orders needs --orders")
    if args.orders:
        paths = write_orders(args.out, args.customers, args.seed, args.format, dirty=args.dirty_orders)
    else:
        paths = write_customers(args.out, args.customers, seed=args.seed, fmt=args.format)
    print(f"wrote {args.customers} customers to {paths['customers']} (true segments in {paths['truth']})")
    if args.orders:
        print(f"wrote their orders to {paths['orders']}")
    return 0


def format_summary(manifest: Manifest, run_dir: str, seconds: float) -> str:
    rows, k = manifest.rows, manifest.k
    runner_up = k.runner_up
    lines = [
        f"run {manifest.run_id} {manifest.status} in {seconds:.1f}s",
        f"rows: {rows.read} read, {rows.assigned} assigned, {rows.rejected} rejected",
        *_orders_line(manifest.orders),
        f"k = {k.chosen} by {k.rule} (silhouette {k.silhouette:.3f}"
        + (f"; runner-up k={runner_up.k} at {runner_up.silhouette:.3f})" if runner_up else ")"),
    ]
    if k.stability:
        lines.append(
            f"stability: mean adjusted Rand index {k.stability.mean_ari:.3f} over {k.stability.runs} refits"
        )
    lines += [
        "segments:",
    ]
    for segment in manifest.segments:
        lines.append(
            f"  {segment.segment:>3}  {segment.size:>10}  {segment.share:6.1%}  {segment.segment_name}"
        )
        if segment.action:
            lines.append(f"{'':>24}-> {segment.action}")
        if segment.rule:
            lines.append(
                f"{'':>24}rule (precision {_figure(segment.rule_precision)}, "
                f"coverage {_figure(segment.rule_coverage)}): {segment.rule}"
            )
    lines += _acting_lines(manifest)
    if manifest.catalog:
        catalog = manifest.catalog
        lines.append(
            f"catalog: partition run_id={manifest.run_id} of {', '.join(catalog.tables)}; "
            f"views {', '.join(catalog.views)}"
        )
    if manifest.warnings:
        lines += ["warnings:", *[f"  ! {warning}" for warning in manifest.warnings]]
    lines.append(f"outputs: {run_dir}")
    if "report" in manifest.outputs:
        lines.append(f"report: {manifest.outputs['report']}")
    return "\n".join(lines)


def _figure(value: float | None) -> str:
    """A rule's precision or coverage; "nan" when it was not measured (null in the manifest).

    >>> _figure(0.99712), _figure(None)
    ('0.997', 'nan')
    """
    return "nan" if value is None else f"{value:.3f}"


def _acting_lines(manifest: Manifest) -> list[str]:
    """Outliers, control groups and customers left out for lack of consent, when the run has them."""
    segments = manifest.segments
    lines = []
    if segments and segments[0].outliers is not None:
        parts = [f"outliers {sum(s.outliers for s in segments)}"]
        if segments[0].control is not None:
            parts.append(
                f"control group {sum(s.control for s in segments)}, "
                f"treatment {sum(s.treatment for s in segments)}"
            )
        lines.append("acting: " + "; ".join(parts))
    if manifest.consent:
        lines.append(f"consent: {manifest.consent.rejected} customers left out (no consent to profiling)")
    return lines


def _orders_line(orders: Orders | None) -> list[str]:
    if not orders or orders.rows is None:
        return []
    rows = orders.rows
    return [
        f"orders: {rows.read} read, {rows.valid} valid, {rows.rejected} rejected "
        f"(see order_rejects/); as_of {orders.as_of}"
    ]


def active_session():
    from pyspark.sql import SparkSession

    return SparkSession.getActiveSession()


COMMANDS = {"run": _run, "score": _score, "report": _report, "history": _history, "generate": _generate}
