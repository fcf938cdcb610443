"""The run report: one self-contained HTML file (images and script inlined) that a marketer can read offline.

It is built only from small things: the manifest, the profiles (one row per segment), the metrics per
k, the run's bounded sample of customers (features and segment, no identifiers), and the manifests of
the lake's runs before it (segments over time).

The page is a Jinja2 template (``templates/report.html``) with autoescaping: Python computes the
plain values of each section (a ``Section``), the templates under ``templates/sections/`` lay them
out. Adding a section is a function returning a ``Section`` and a template named after its ``id``.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render to PNG in memory

import jinja2  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyspark.sql.functions as F  # noqa: E402
from pyspark.sql import DataFrame, SparkSession  # noqa: E402

from segspark.algorithms import SELECTIONS  # noqa: E402
from segspark.experiment import act_table, act_text  # noqa: E402
from segspark.history import History, cells, drift_flags, moves_text, read_history  # noqa: E402
from segspark.lake import RUNS_DIR, STAGING_DIR, Lake  # noqa: E402
from segspark.manifest import Features, Manifest, read_manifest  # noqa: E402
from segspark.metrics import SEGMENT  # noqa: E402
from segspark.validate import FeatureSpec, col  # noqa: E402

REPORT_FILE = "report.html"
SAMPLE_ROWS = 5_000  # customers in sample/, the only per-customer data the report sees
COLOURS = plt.get_cmap("tab10").colors
DPI = 110
DARK_CELL = 0.55  # |z| / the colour scale's limit from which a heatmap cell gets white text
CLOUD_DIGITS = 3  # decimals of the 3-D view's coordinates (scaled to [-1, 1]): small page, same picture
LEGEND_OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0}


@dataclass(frozen=True)
class Section:
    """One section of the report: ``templates/sections/<id>.html`` renders ``data``."""

    id: str
    title: str
    how: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def anchor(self) -> str:
        """The section's ``id`` in the page, from its title: ``#segment-profiles``."""
        return "-".join("".join(ch if ch.isalnum() else " " for ch in self.title.lower()).split())


@dataclass(frozen=True)
class Table:
    """A table as plain text cells; the first ``left`` columns are left-aligned (names, labels)."""

    head: list[str]
    rows: list[list[str]]
    left: int = 1
    row_classes: list[str] = field(default_factory=list)


def colour(segment: int) -> str:
    r, g, b = COLOURS[int(segment) % len(COLOURS)]
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def number(value: Any, digits: int = 3) -> str:
    """A number as a reader wants it: about ``digits`` significant digits, no trailing zeros, whole
    numbers of 1,000 and more with separators; "–" for a missing value.

    >>> [number(v) for v in (38.031, 38.0, 52345.7, 0.84812, 7, 0.000123, -2.5, None)]
    ['38', '38', '52,346', '0.848', '7', '0.000123', '-2.5', '–']
    """
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    value = float(value)
    if value == 0:
        return "0"
    decimals = max(digits - 1 - math.floor(math.log10(abs(value))), 0)
    text = f"{value:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def scatter_features(profiles: pd.DataFrame, numeric: list[str], configured: list[str] | None) -> list[str]:
    """The configured pair, or the two numeric features whose segment z-scores vary most."""
    if configured and len(configured) == 2:
        return list(configured)
    spread = {c: float(profiles[f"{c}_z"].std(ddof=0)) for c in numeric if f"{c}_z" in profiles}
    return sorted(spread, key=lambda c: (-spread[c], c))[:2]


def build_report(
    manifest: Manifest,
    profiles: pd.DataFrame,
    k_metrics: pd.DataFrame,
    sample: pd.DataFrame,
    scatter: list[str] | None = None,
    history: History | None = None,
) -> str:
    """The report as one HTML string (deterministic for the same inputs). ``history``: the lake's runs
    up to this one, for "Segments over time"."""
    profiles = profiles.sort_values(SEGMENT).reset_index(drop=True)
    numeric = list(manifest.features.numeric) if manifest.features else []
    names = dict(zip(profiles[SEGMENT], profiles["segment_name"], strict=True))
    display = manifest.settings.segments.display_names  # feature -> the label the segment names use
    sections = [
        _summary(manifest),
        _sweep(manifest, k_metrics),
        _sizes(profiles),
        _heatmap(profiles, numeric, display),
        _scatters(profiles, sample, numeric, names, scatter, display),
        _cloud(sample, numeric, names, display),
        _profiles(profiles, numeric, display),
        _acting(manifest),
        _migration(manifest),
        _history(history),
        _details(manifest),
    ]
    page = _environment().get_template("report.html")
    title = f"Customer segments — run {manifest.run_id}"
    return page.render(title=title, sections=[s for s in sections if s is not None]) + "\n"


def _environment() -> jinja2.Environment:
    """Templates from the package's ``templates`` folder (read as resources, so a wheel or zip works)."""
    folder = resources.files("segspark").joinpath("templates")

    def load(name: str) -> str:
        return folder.joinpath(name).read_text(encoding="utf-8")

    return jinja2.Environment(
        loader=jinja2.FunctionLoader(load),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _summary(manifest: Manifest) -> Section:
    rows, k = manifest.rows, manifest.k
    cards = [
        (number(rows.read), "customers read"),
        (number(rows.assigned), "assigned to a segment"),
        (number(rows.rejected), "rejected (see rejects/)"),
        (number(k.chosen), "segments"),
        (number(k.silhouette), "silhouette of the segments"),
    ]
    orders = manifest.orders.rows if manifest.orders else None
    if orders:
        cards.append((f"{number(orders.read)} / {number(orders.rejected)}", "orders read / rejected"))
    runner = k.runner_up
    text = f"k = {k.chosen} was chosen by {k.rule}" + (
        f"; the runner-up was k = {runner.k} (silhouette {number(runner.silhouette)})." if runner else "."
    )
    if k.stability:
        text += (
            f" Refitted on {k.stability.runs} bootstrap samples, the segments agree with a mean "
            f"adjusted Rand index of {number(k.stability.mean_ari)} (1 = identical)."
        )
    features = manifest.features or Features()
    used = ", ".join([*features.numeric, *features.categorical])
    how = (
        "Every customer read is either in a segment or in the rejects table with a reason. "
        f"Algorithm: {k.algorithm}; features: {used}."
    )
    data = {"cards": cards, "text": text, "warnings": list(manifest.warnings)}
    return Section("summary", "Summary", how, data)


def k_notes(manifest: Manifest) -> list[str]:
    """Sentences about the choice of k shown under the sweep table: a near tie in plain words, the
    earlier run's k kept, k values whose best fit two starts did not confirm."""
    k = manifest.k
    notes = [f"Near tie: {k.verdict}."] if k.near_tie else []
    if k.kept_earlier:
        notes.append("The earlier run's number of segments was kept: it is within the noise of the best.")
    unconfirmed = [m.k for m in k.metrics if m.confirmed is False]
    if unconfirmed:
        notes.append(
            "No two starts agreed on the best fit at k = "
            + ", ".join(map(str, unconfirmed))
            + " (model.restarts reached): its metrics may be those of a poor local optimum."
        )
    return notes


def _sweep(manifest: Manifest, k_metrics: pd.DataFrame) -> Section:
    metrics = k_metrics.sort_values("k").reset_index(drop=True)
    chosen = manifest.k.chosen
    # one curve per selection rule: the metric it ranks by
    curves = [
        rule for rule in SELECTIONS.values() if rule.column in metrics and metrics[rule.column].notna().any()
    ]
    figure, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.2), squeeze=False)
    for axis, rule in zip(axes[0], curves, strict=True):
        column = rule.column
        axis.plot(metrics["k"], metrics[column], marker="o", color="#4062bb")
        if rule.error_column and rule.error_column in metrics:
            axis.errorbar(
                metrics["k"], metrics[column], yerr=metrics[rule.error_column], fmt="none", color="#4062bb"
            )
        value = metrics.loc[metrics["k"] == chosen, column]
        if len(value):
            axis.scatter(
                [chosen], value, s=160, facecolors="none", edgecolors="#d62728", linewidths=2, zorder=3
            )
        axis.axvline(chosen, color="#d62728", linestyle=":", linewidth=1)
        axis.set_title(rule.title, fontsize=9)
        axis.set_xlabel("number of segments k")
        axis.set_xticks(metrics["k"])
    figure.tight_layout()
    columns = [c for rule in SELECTIONS.values() for c in (rule.column, rule.error_column) if c]
    shown = [c for c in columns if c in metrics]
    table = Table(
        head=["k", *shown],
        rows=[
            [f"{k} ← chosen" if k == chosen else str(k), *[number(row[c]) for c in shown]]
            for k, (_, row) in zip(metrics["k"], metrics.iterrows(), strict=True)
        ],
        row_classes=["chosen" if k == chosen else "" for k in metrics["k"]],
    )
    how = (
        "Each candidate number of segments k was fitted and measured. The elbow curve flattens where more "
        "segments stop explaining much more; the silhouette is highest where segments are most clearly "
        "apart. The red marks show the k that was chosen."
    )
    figure_data = {
        "src": _png(figure),
        "alt": "metrics per k",
        "caption": "Metrics per k; the chosen k is circled.",
    }
    data = {"figure": figure_data, "table": table, "notes": k_notes(manifest)}
    return Section("sweep", "How many segments", how, data)


def _sizes(profiles: pd.DataFrame) -> Section:
    figure, axis = plt.subplots(figsize=(8, 0.45 * len(profiles) + 1))
    labels = [f"{s}: {n}" for s, n in zip(profiles[SEGMENT], profiles["segment_name"], strict=True)]
    axis.barh(labels[::-1], profiles["share"][::-1] * 100, color=[colour(s) for s in profiles[SEGMENT]][::-1])
    for y, share in enumerate(profiles["share"][::-1]):
        axis.text(share * 100, y, f" {share:.1%}", va="center", fontsize=8)
    axis.set_xlabel("share of customers (%)")
    how = "How many customers each segment holds. Very small segments are worth a look before acting on them."
    figure_data = {"src": _png(figure), "alt": "segment sizes", "caption": "Share of customers per segment."}
    return Section("figure", "Segment sizes", how, {"figure": figure_data})


def _heatmap(profiles: pd.DataFrame, numeric: list[str], display: dict[str, str]) -> Section | None:
    if not numeric:
        return None
    z = profiles[[f"{c}_z" for c in numeric]].to_numpy(dtype=float)
    limit = max(1.0, float(np.nanmax(np.abs(z))))
    figure, axis = plt.subplots(figsize=(1.1 * len(numeric) + 3, 0.55 * len(profiles) + 1.5))
    image = axis.imshow(z, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    axis.set_xticks(range(len(numeric)), [display.get(c, c) for c in numeric], rotation=35, ha="right")
    axis.set_yticks(
        range(len(profiles)),
        [f"{s}: {n}" for s, n in zip(profiles[SEGMENT], profiles["segment_name"], strict=True)],
    )
    for (i, j), value in np.ndenumerate(z):
        dark = np.isfinite(value) and abs(value) / limit > DARK_CELL
        axis.text(
            j, i, f"{value:+.1f}", ha="center", va="center", fontsize=8, color="white" if dark else "black"
        )
    figure.colorbar(image, ax=axis, label="z-score of the segment mean")
    how = (
        "Each cell compares a segment's average with all customers', in standard deviations: red is above "
        "average, blue below. The strongest cells give the segment its name."
    )
    figure_data = {
        "src": _png(figure),
        "alt": "z-score heatmap",
        "caption": "Segment means as z-scores against all customers.",
    }
    return Section("figure", "What sets each segment apart", how, {"figure": figure_data})


def _standardised(sample: pd.DataFrame, numeric: list[str]) -> np.ndarray:
    """The sample's numeric features, missing values as the median, each scaled to mean 0 and sd 1."""
    values = sample[numeric].astype(float)
    values = values.fillna(values.median())
    return ((values - values.mean()) / values.std(ddof=0).replace(0, 1)).to_numpy()


def principal_components(scaled: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``n`` principal components: scores, loadings (n x features), share of variance each."""
    _, singular, vt = np.linalg.svd(scaled, full_matrices=False)
    variance = singular**2 / max(float((singular**2).sum()), 1e-300)
    return scaled @ vt[:n].T, vt[:n], variance[:n]


def _scatters(
    profiles: pd.DataFrame,
    sample: pd.DataFrame,
    numeric: list[str],
    names: dict,
    configured: list[str] | None,
    display: dict[str, str],
) -> Section | None:
    if sample.empty or len(numeric) < 2:
        return None
    x, y = scatter_features(profiles, numeric, configured)
    figure, axes = plt.subplots(1, 2, figsize=(12, 5))
    projected, _, _ = principal_components(_standardised(sample, numeric), 2)
    for segment in sorted(sample[SEGMENT].unique()):
        rows = (sample[SEGMENT] == segment).to_numpy()
        label = f"{segment}: {names.get(segment, '')}"
        axes[0].scatter(
            sample.loc[rows, x], sample.loc[rows, y], s=6, alpha=0.5, color=colour(segment), label=label
        )
        axes[1].scatter(
            projected[rows, 0], projected[rows, 1], s=6, alpha=0.5, color=colour(segment), label=label
        )
    x_label, y_label = display.get(x, x), display.get(y, y)
    axes[0].set_xlabel(x_label)
    axes[0].set_ylabel(y_label)
    axes[0].set_title(f"{y_label} against {x_label}", fontsize=10)
    axes[1].set_xlabel("first principal component")
    axes[1].set_ylabel("second principal component")
    axes[1].set_title("All features, projected (PCA)", fontsize=10)
    axes[1].legend(fontsize=7, markerscale=3, **LEGEND_OUTSIDE)  # beside the plot: it covers no point
    figure.tight_layout()
    how = (
        f"A random sample of {len(sample):,} customers, coloured by segment: on the left by {x_label} and "
        f"{y_label}; on the right all features squeezed into two dimensions. Well separated colours mean "
        "distinct segments."
    )
    figure_data = {
        "src": _png(figure),
        "alt": f"scatter of {y} against {x}",
        "caption": (
            f"Sample of customers: {y_label} against {x_label}, and a PCA projection of all numeric features."
        ),
    }
    return Section("figure", "Customers by segment", how, {"figure": figure_data})


def _cloud(sample: pd.DataFrame, numeric: list[str], names: dict, display: dict[str, str]) -> Section | None:
    """The sample in the space of its first three principal components, for the interactive 3-D view."""
    if sample.empty or len(numeric) < 3:
        return None
    scores, loadings, variance = principal_components(_standardised(sample, numeric), 3)
    scores = scores / max(float(np.abs(scores).max()), 1e-12)
    axes = []
    for i in range(3):
        top = np.argsort(-np.abs(loadings[i]), kind="stable")[:2]
        drivers = ", ".join(display.get(numeric[j], numeric[j]) for j in top)
        axes.append(f"PC{i + 1} ({variance[i]:.0%} of the spread; mostly {drivers})")
    segments = sorted(int(s) for s in sample[SEGMENT].unique())
    cloud = {
        "points": np.round(scores, CLOUD_DIGITS).tolist(),
        "segment": [int(s) for s in sample[SEGMENT]],
        "colours": {str(s): colour(s) for s in segments},
        "axes": axes,
    }
    legend = [{"segment": s, "name": names.get(s, ""), "colour": colour(s)} for s in segments]
    how = (
        f"The same {len(sample):,} customers in three dimensions: the first three principal components of "
        "all numeric features. Drag to turn the view, scroll to zoom, click a segment to hide or show it. "
        "It runs in the page itself, offline."
    )
    return Section(
        "cloud", "Customers in 3-D (interactive)", how, {"cloud": cloud, "legend": legend, "axes": axes}
    )


def _acting(manifest: Manifest) -> Section | None:
    """Rules, outliers and control groups per segment (everything from the manifest)."""
    table = act_table(manifest)
    if table.empty or len(table.columns) <= 2:
        return None
    rows = [[str(v) for v in row] for row in table.itertuples(index=False, name=None)]
    grid = Table(list(table.columns), rows, left=3 if "rule" in table.columns else 2)
    return Section("table", "Acting on the segments", act_text(manifest), {"table": grid})


def _profiles(profiles: pd.DataFrame, numeric: list[str], display: dict[str, str]) -> Section:
    segments = [
        {
            "segment": int(row[SEGMENT]),
            "colour": colour(row[SEGMENT]),
            "name": row["segment_name"],
            "customers": number(int(row["size"])),
            "share": f"{row['share']:.1%}",
            "action": row["action"] if isinstance(row.get("action"), str) else "–",
        }
        for _, row in profiles.iterrows()
    ]
    # one row per feature, one column per segment: as many features as there are fit the screen
    head = [
        "feature: mean (median)",
        *[f"{s}: {n}" for s, n in zip(profiles[SEGMENT], profiles["segment_name"], strict=True)],
    ]
    averages = Table(
        head=head,
        rows=[
            [
                display.get(c, c),
                *[
                    f"{number(m)} ({number(md)})"
                    for m, md in zip(profiles[f"{c}_mean"], profiles[f"{c}_median"], strict=True)
                ],
            ]
            for c in numeric
        ],
    )
    mixes = []
    for title, prefix in (
        ("Category mix (share within the segment)", ""),
        ("Audit only: sensitive attributes, never used as features", "audit_"),
    ):
        columns = [
            c
            for c in profiles.columns
            if c.endswith("_share") and (c.startswith("audit_") if prefix else not c.startswith("audit_"))
        ]
        if columns:
            rows = [
                [c.removeprefix(prefix).removesuffix("_share"), *[f"{v:.1%}" for v in profiles[c]]]
                for c in columns
            ]
            mixes.append(
                {
                    "title": title,
                    "table": Table(head=["value", *[str(s) for s in profiles[SEGMENT]]], rows=rows),
                }
            )
    how = (
        "Each segment with the action the playbook suggests, then the averages per segment in the original "
        "units (median in brackets). Segment numbers keep their meaning from run to run."
    )
    return Section(
        "profiles", "Segment profiles", how, {"segments": segments, "averages": averages, "mixes": mixes}
    )


def _migration(manifest: Manifest) -> Section | None:
    migration = manifest.migration
    if not migration:
        return None
    moves = pd.DataFrame([cell.model_dump(by_alias=True) for cell in migration.matrix])
    label = {-1: "not in that run"}
    matrix = moves.pivot_table(index="from", columns="to", values="customers", aggfunc="sum", fill_value=0)
    table = Table(
        head=["", *[f"now {label.get(c, c)}" for c in matrix.columns]],
        rows=[
            [f"was {label.get(i, i)}", *[number(int(v)) for v in row]]
            for i, row in zip(matrix.index, matrix.to_numpy(), strict=True)
        ],
    )
    how = (
        f"How customers moved since run {migration.previous_run}: rows are their segment then, columns "
        "now. The diagonal holds those who stayed."
    )
    return Section("table", "Movement since the previous run", how, {"table": table})


def _history(history: History | None) -> Section | None:
    """Each segment's share and centroid movement over the lake's last runs, moving customers, drift."""
    if history is None or not history.steps:
        return None
    shares, moves, flags, names = (
        history.shares(),
        history.centroid_moves(),
        drift_flags(history),
        history.names(),
    )
    figure, axis = plt.subplots(figsize=(9, 3.6))
    positions = np.arange(len(shares))
    for segment in shares.columns:
        axis.plot(
            positions,
            100 * shares[segment],
            marker="o",
            color=colour(segment),
            label=f"{segment}: {names[segment]}",
        )
        drifted = [i for i, run_id in enumerate(shares.index) if (run_id, segment) in flags["share"]]
        axis.scatter(
            drifted,
            100 * shares[segment].iloc[drifted],
            s=160,
            facecolors="none",
            edgecolors="#d62728",
            zorder=3,
        )
    axis.set_xticks(positions, [str(r) for r in shares.index], rotation=20, ha="right", fontsize=7)
    axis.set_ylabel("% of the customers")
    axis.legend(fontsize=7, **LEGEND_OUTSIDE)
    figure.tight_layout()

    def grid(frame: pd.DataFrame, fmt, flagged: set) -> Table:
        return Table(
            head=["run", *[f"{s}: {names[s]}" for s in frame.columns]], rows=cells(frame, fmt, flagged)
        )

    step = history.steps[-1]
    data = {
        "figure": {
            "src": _png(figure),
            "alt": "share of the customers per segment over the runs",
            "caption": "Share of the customers per segment, run after run; a red circle marks a drift.",
        },
        "shares": grid(shares, "{:.1%}".format, flags["share"]),
        "moves": grid(moves, "{:.2f}".format, flags["centroid"]),
        "flows": [f"{s.previous_run} → {s.run_id}: {moves_text(s)}" for s in history.steps],
        "drift": [
            f"run {run_id}: {warning.removeprefix('drift: ')}" for run_id, warning in history.warnings()
        ],
    }
    how = (
        f"The last {len(shares)} runs of this lake, oldest first. Segment numbers keep their meaning, so "
        "a row of the tables follows the same kind of customers. A ! marks a drift since the run before: "
        f"a share that moved more than {100 * step.drift.share:g} points (segments.drift.share), or a "
        f"centre that moved more than {step.drift.centroid:g} standard deviations of the features "
        "(segments.drift.centroid)."
    )
    return Section("history", "Segments over time", how, data)


def _details(manifest: Manifest) -> Section:
    timings = manifest.timings
    versions = ", ".join(f"{k} {v}" for k, v in manifest.versions.items())
    text = (
        f"Run {manifest.run_id}, started {manifest.started_at}, finished "
        f"{manifest.finished_at or ''} on {manifest.spark_master}; {versions}."
    )
    table = Table(head=["step", "seconds"], rows=[[step, f"{v:.1f}"] for step, v in timings.items()])
    data = {"text": text, "table": table if timings else None}
    return Section("details", "Run details", "For the data team: where the time went, and what ran.", data)


def report_sample(assigned: DataFrame, spec: FeatureSpec, rows: int, seed: int) -> DataFrame:
    """A uniform sample of at most SAMPLE_ROWS customers for the plots (``sample/``): features and
    segment, no ids."""
    fraction = min(1.0, 1.2 * SAMPLE_ROWS / max(rows, 1))  # a little over, then cut to size
    sampled = assigned if fraction >= 1.0 else assigned.sample(fraction=fraction, seed=seed)
    return sampled.select(F.col(SEGMENT), *[col(c) for c in spec.columns]).limit(SAMPLE_ROWS)


def read_run_tables(
    spark: SparkSession, run_dir: str
) -> tuple[Manifest, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The report's inputs from a published (or staged) run folder; all of them small."""
    manifest = read_manifest(Lake(spark, run_dir), run_dir)
    fmt = manifest.settings.output.format
    reader = spark.read.format(fmt).options(header="true", inferSchema="true")
    tables = [reader.load(f"{run_dir}/{name}").toPandas() for name in ("profiles", "k_metrics", "sample")]
    return manifest, *tables


def _lake_of(run_dir: str) -> str | None:
    """The lake a run folder belongs to (``<lake>/runs/<id>`` or ``<lake>/_staging/<id>``), if it does.

    >>> _lake_of("lake/seg/runs/r1/"), _lake_of("lake/seg/_staging/r1"), _lake_of("copied/r1")
    ('lake/seg', 'lake/seg', None)
    """
    parts = run_dir.rstrip("/").rsplit("/", 2)
    return parts[0] if len(parts) == 3 and parts[1] in (RUNS_DIR, STAGING_DIR) else None


def write_report(spark: SparkSession, run_dir: str) -> str:
    """Rebuild ``report.html`` of a run from its outputs (and the lake's runs before it); returns its path."""
    manifest, profiles, k_metrics, sample = read_run_tables(spark, run_dir)
    scatter = manifest.settings.output.report_scatter
    root = _lake_of(run_dir)
    history = read_history(Lake(spark, root), current=manifest) if root else None
    path = f"{run_dir}/{REPORT_FILE}"
    page = build_report(manifest, profiles, k_metrics, sample, scatter, history)
    Lake(spark, run_dir).write_text(path, page)
    return path
