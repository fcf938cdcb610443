"""The run report: one self-contained HTML file (images inlined) that a marketer can read offline.

It is built only from small things: the manifest, the profiles (one row per segment), the metrics per
k and the run's bounded sample of customers (features and segment, no identifiers).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render to PNG in memory

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402

from segspark.experiment import act_table, act_text  # noqa: E402
from segspark.lake import Lake  # noqa: E402
from segspark.metrics import SEGMENT  # noqa: E402

REPORT_FILE = "report.html"
COLOURS = plt.get_cmap("tab10").colors
DPI = 110
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px}
body{color:#222;line-height:1.45;padding:0 1rem}
h1{margin-bottom:.2rem}
h2{margin-top:2.2rem;border-bottom:2px solid #eee;padding-bottom:.2rem}
.how{color:#555;font-size:.95rem;background:#f7f7f9;border-left:4px solid #ccd;padding:.5rem .8rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.3rem .55rem;text-align:right}
th{background:#f3f3f6}
td.l,th.l{text-align:left}
tr.chosen{background:#e8f4e8;font-weight:600}
.swatch{display:inline-block;width:.8rem;height:.8rem;border-radius:2px;margin-right:.35rem;vertical-align:middle}
figure{margin:1rem 0}
figcaption{color:#555;font-size:.9rem}
img{max-width:100%}
.cards{display:flex;gap:1rem;flex-wrap:wrap}
.card{background:#f7f7f9;border-radius:6px;padding:.6rem 1rem}
.card b{font-size:1.3rem;display:block}
"""


def colour(segment: int) -> str:
    r, g, b = COLOURS[int(segment) % len(COLOURS)]
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(figure, caption: str, alt: str) -> str:
    return (
        f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{_png(figure)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _e(value: Any) -> str:
    return html.escape(str(value))


def _number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    value = float(value)
    return f"{value:,.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"


def _table(frame: pd.DataFrame, left: tuple[str, ...] = (), row_class: list[str] | None = None) -> str:
    head = "".join(f'<th class="{"l" if c in left else ""}">{_e(c)}</th>' for c in frame.columns)
    rows = []
    for i, (_, row) in enumerate(frame.iterrows()):
        cells = "".join(
            f'<td class="l">{row[c]}</td>' if c in left else f"<td>{row[c]}</td>" for c in frame.columns
        )
        css = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        rows.append(f"<tr{css}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _section(title: str, how: str, body: str) -> str:
    return f'<h2>{_e(title)}</h2><p class="how">{_e(how)}</p>{body}'


def scatter_features(profiles: pd.DataFrame, numeric: list[str], configured: list[str] | None) -> list[str]:
    """The configured pair, or the two numeric features whose segment z-scores vary most."""
    if configured and len(configured) == 2:
        return list(configured)
    spread = {c: float(profiles[f"{c}_z"].std(ddof=0)) for c in numeric if f"{c}_z" in profiles}
    return sorted(spread, key=lambda c: (-spread[c], c))[:2]


def build_report(
    manifest: dict[str, Any],
    profiles: pd.DataFrame,
    k_metrics: pd.DataFrame,
    sample: pd.DataFrame,
    scatter: list[str] | None = None,
) -> str:
    """The report as one HTML string (deterministic for the same inputs)."""
    profiles = profiles.sort_values(SEGMENT).reset_index(drop=True)
    numeric = list(manifest.get("features", {}).get("numeric", []))
    names = dict(zip(profiles[SEGMENT], profiles["segment_name"], strict=True))
    parts = [
        _summary(manifest),
        _sweep(manifest, k_metrics),
        _sizes(profiles),
        _heatmap(profiles, numeric),
        _scatters(profiles, sample, numeric, names, scatter),
        _profile_table(profiles, numeric),
        _acting(manifest),
        _migration(manifest),
        _details(manifest),
    ]
    title = f"Customer segments — run {manifest['run_id']}"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>{''.join(p for p in parts if p)}"
        "</body></html>\n"
    )


def _summary(manifest: dict[str, Any]) -> str:
    rows, k = manifest["rows"], manifest["k"]
    cards = [
        ("customers read", _number(rows["read"])),
        ("assigned to a segment", _number(rows["assigned"])),
        ("rejected (see rejects/)", _number(rows["rejected"])),
        ("segments", _number(int(k["chosen"]))),
        ("silhouette of the segments", _number(k["silhouette"])),
    ]
    orders = manifest.get("orders", {}).get("rows")
    if orders:
        cards.append(("orders read / rejected", f"{_number(orders['read'])} / {_number(orders['rejected'])}"))
    body = (
        '<div class="cards">'
        + "".join(f'<div class="card"><b>{v}</b>{_e(t)}</div>' for t, v in cards)
        + "</div>"
    )
    runner = k.get("runner_up")
    text = f"k = {k['chosen']} was chosen by {k['rule']}" + (
        f"; the runner-up was k = {runner['k']} (silhouette {runner['silhouette']:.3f})." if runner else "."
    )
    if k.get("near_tie"):
        text += f" Near tie: {k['verdict']}."
    if k.get("stability"):
        text += (
            f" Refitted on {k['stability']['runs']} bootstrap samples, the segments agree with a mean "
            "adjusted "
            f"Rand index of {k['stability']['mean_ari']:.3f} (1 = identical)."
        )
    features = manifest.get("features", {})
    used = ", ".join([*features.get("numeric", []), *features.get("categorical", [])])
    how = (
        "Every customer read is either in a segment or in the rejects table with a reason. "
        f"Algorithm: {k['algorithm']}; features: {used}."
    )
    return _section("Summary", how, body + f"<p>{_e(text)}</p>")


def _sweep(manifest: dict[str, Any], k_metrics: pd.DataFrame) -> str:
    metrics = k_metrics.sort_values("k").reset_index(drop=True)
    chosen = int(manifest["k"]["chosen"])
    curves = [
        c for c in ("wssse", "silhouette", "calinski_harabasz", "davies_bouldin", "gap") if c in metrics
    ]
    curves = [c for c in curves if metrics[c].notna().any()]
    titles = {
        "wssse": "Elbow: within-segment sum of squares",
        "silhouette": "Silhouette (higher is better)",
        "calinski_harabasz": "Calinski-Harabasz (higher is better)",
        "davies_bouldin": "Davies-Bouldin (lower is better)",
        "gap": "Gap statistic (± s.e.)",
    }
    figure, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.2), squeeze=False)
    for axis, column in zip(axes[0], curves, strict=True):
        axis.plot(metrics["k"], metrics[column], marker="o", color="#4062bb")
        if column == "gap" and "gap_sd" in metrics:
            axis.errorbar(metrics["k"], metrics["gap"], yerr=metrics["gap_sd"], fmt="none", color="#4062bb")
        value = metrics.loc[metrics["k"] == chosen, column]
        if len(value):
            axis.scatter(
                [chosen], value, s=160, facecolors="none", edgecolors="#d62728", linewidths=2, zorder=3
            )
        axis.axvline(chosen, color="#d62728", linestyle=":", linewidth=1)
        axis.set_title(titles[column], fontsize=9)
        axis.set_xlabel("number of segments k")
        axis.set_xticks(metrics["k"])
    figure.tight_layout()
    shown = [
        "k",
        *[
            c
            for c in ("silhouette", "wssse", "calinski_harabasz", "davies_bouldin", "gap", "gap_sd")
            if c in metrics
        ],
    ]
    table = metrics[shown].copy()
    for c in shown[1:]:
        table[c] = [_number(v) for v in table[c]]
    table["k"] = [f"{k} ← chosen" if k == chosen else str(k) for k in metrics["k"]]
    classes = ["chosen" if k == chosen else "" for k in metrics["k"]]
    how = (
        "Each candidate number of segments k was fitted and measured. The elbow curve flattens where more "
        "segments stop explaining much more; the silhouette is highest where segments are most clearly "
        "apart. The red marks show the k that was chosen."
    )
    return _section(
        "How many segments",
        how,
        _figure(figure, "Metrics per k; the chosen k is circled.", "metrics per k")
        + _table(table, left=("k",), row_class=classes),
    )


def _sizes(profiles: pd.DataFrame) -> str:
    figure, axis = plt.subplots(figsize=(8, 0.45 * len(profiles) + 1))
    labels = [f"{s}: {n}" for s, n in zip(profiles[SEGMENT], profiles["segment_name"], strict=True)]
    axis.barh(labels[::-1], profiles["share"][::-1] * 100, color=[colour(s) for s in profiles[SEGMENT]][::-1])
    for y, share in enumerate(profiles["share"][::-1]):
        axis.text(share * 100, y, f" {share:.1%}", va="center", fontsize=8)
    axis.set_xlabel("share of customers (%)")
    return _section(
        "Segment sizes",
        "How many customers each segment holds. Very small segments are worth a look before acting on them.",
        _figure(figure, "Share of customers per segment.", "segment sizes"),
    )


def _heatmap(profiles: pd.DataFrame, numeric: list[str]) -> str:
    if not numeric:
        return ""
    z = profiles[[f"{c}_z" for c in numeric]].to_numpy(dtype=float)
    limit = max(1.0, float(np.nanmax(np.abs(z))))
    figure, axis = plt.subplots(figsize=(1.1 * len(numeric) + 3, 0.55 * len(profiles) + 1.5))
    image = axis.imshow(z, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    axis.set_xticks(range(len(numeric)), numeric, rotation=35, ha="right")
    axis.set_yticks(
        range(len(profiles)),
        [f"{s}: {n}" for s, n in zip(profiles[SEGMENT], profiles["segment_name"], strict=True)],
    )
    for (i, j), value in np.ndenumerate(z):
        axis.text(j, i, f"{value:+.1f}", ha="center", va="center", fontsize=8)
    figure.colorbar(image, ax=axis, label="z-score of the segment mean")
    return _section(
        "What sets each segment apart",
        "Each cell compares a segment's average with all customers', in standard deviations: red is above "
        "average, blue below. The strongest cells give the segment its name.",
        _figure(figure, "Segment means as z-scores against all customers.", "z-score heatmap"),
    )


def _scatters(
    profiles: pd.DataFrame,
    sample: pd.DataFrame,
    numeric: list[str],
    names: dict,
    configured: list[str] | None,
) -> str:
    if sample.empty or len(numeric) < 2:
        return ""
    x, y = scatter_features(profiles, numeric, configured)
    figure, axes = plt.subplots(1, 2, figsize=(12, 5))
    values = sample[numeric].astype(float)
    values = values.fillna(values.median())
    scaled = (values - values.mean()) / values.std(ddof=0).replace(0, 1)
    _, _, vt = np.linalg.svd(scaled.to_numpy(), full_matrices=False)
    projected = scaled.to_numpy() @ vt[:2].T
    for segment in sorted(sample[SEGMENT].unique()):
        rows = (sample[SEGMENT] == segment).to_numpy()
        label = f"{segment}: {names.get(segment, '')}"
        axes[0].scatter(
            sample.loc[rows, x], sample.loc[rows, y], s=6, alpha=0.5, color=colour(segment), label=label
        )
        axes[1].scatter(
            projected[rows, 0], projected[rows, 1], s=6, alpha=0.5, color=colour(segment), label=label
        )
    axes[0].set_xlabel(x)
    axes[0].set_ylabel(y)
    axes[0].set_title(f"{y} against {x}", fontsize=10)
    axes[1].set_xlabel("first principal component")
    axes[1].set_ylabel("second principal component")
    axes[1].set_title("All features, projected (PCA)", fontsize=10)
    axes[1].legend(fontsize=7, markerscale=3, loc="best")
    figure.tight_layout()
    how = (
        f"A random sample of {len(sample):,} customers, coloured by segment: on the left by {x} and {y}; "
        "on the right all features squeezed into two dimensions. Well separated colours mean distinct "
        "segments."
    )
    caption = f"Sample of customers: {y} against {x}, and a PCA projection of all numeric features."
    return _section("Customers by segment", how, _figure(figure, caption, f"scatter of {y} against {x}"))


def _profile_table(profiles: pd.DataFrame, numeric: list[str]) -> str:
    table = pd.DataFrame(
        {
            "segment": [
                f'<span class="swatch" style="background:{colour(s)}"></span>{s}' for s in profiles[SEGMENT]
            ],
            "name": [_e(n) for n in profiles["segment_name"]],
            "customers": [_number(int(n)) for n in profiles["size"]],
            "share": [f"{s:.1%}" for s in profiles["share"]],
        }
    )
    for c in numeric:
        table[f"{c}<br>mean (median)"] = [
            f"{_number(m)} ({_number(md)})"
            for m, md in zip(profiles[f"{c}_mean"], profiles[f"{c}_median"], strict=True)
        ]
    if "action" in profiles:
        table["suggested action"] = [_e(a) if isinstance(a, str) else "–" for a in profiles["action"]]
    shares = [c for c in profiles.columns if c.endswith("_share") and not c.startswith("audit_")]
    audit = [c for c in profiles.columns if c.startswith("audit_") and c.endswith("_share")]
    body = _table(table, left=("segment", "name", "suggested action"))
    extra = ""
    for title, columns in (
        ("Category mix (share within the segment)", shares),
        ("Audit only: sensitive attributes, never used as features", audit),
    ):
        if columns:
            mix = pd.DataFrame({"segment": [_e(s) for s in profiles[SEGMENT]]})
            for c in columns:
                mix[_e(c.removesuffix("_share"))] = [f"{v:.1%}" for v in profiles[c]]
            extra += f"<h3>{_e(title)}</h3>" + _table(mix, left=("segment",))
    how = (
        "Averages per segment in the original units (median in brackets), and the action the playbook "
        "suggests. Segment numbers keep their meaning from run to run."
    )
    return _section("Segment profiles", how, body + extra)


def _acting(manifest: dict[str, Any]) -> str:
    """Rules, outliers and control groups per segment (issue 16; everything from the manifest)."""
    table = act_table(manifest)
    if table.empty or len(table.columns) <= 2:
        return ""
    table = table.map(_e)
    return _section(
        "Acting on the segments", act_text(manifest), _table(table, left=("segment", "name", "rule"))
    )


def _migration(manifest: dict[str, Any]) -> str:
    migration = manifest.get("migration")
    if not migration:
        return ""
    moves = pd.DataFrame(migration["matrix"])
    label = {-1: "not in that run"}
    matrix = moves.pivot_table(index="from", columns="to", values="customers", aggfunc="sum", fill_value=0)
    matrix.index = [f"was {label.get(i, i)}" for i in matrix.index]
    matrix.columns = [f"now {label.get(c, c)}" for c in matrix.columns]
    matrix = matrix.map(lambda v: _number(int(v)))
    matrix.insert(0, "", matrix.index)
    how = (
        f"How customers moved since run {migration['previous_run']}: rows are their segment then, columns "
        "now. "
        "The diagonal holds those who stayed."
    )
    return _section("Movement since the previous run", how, _table(matrix, left=("",)))


def _details(manifest: dict[str, Any]) -> str:
    timings = pd.DataFrame(
        {
            "step": list(manifest.get("timings", {})),
            "seconds": [f"{v:.1f}" for v in manifest.get("timings", {}).values()],
        }
    )
    versions = ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items())
    body = (
        f"<p>Run {_e(manifest['run_id'])}, started {_e(manifest.get('started_at', ''))}, "
        f"finished {_e(manifest.get('finished_at', ''))} on {_e(manifest.get('spark_master', ''))}; "
        f"{_e(versions)}.</p>" + (_table(timings, left=("step",)) if len(timings) else "")
    )
    return _section("Run details", "For the data team: where the time went, and what ran.", body)


def read_run_tables(
    spark: SparkSession, run_dir: str
) -> tuple[dict, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The report's inputs from a published (or staged) run folder; all of them small."""
    manifest = json.loads(Lake(spark, run_dir).read_text(f"{run_dir}/manifest.json"))
    fmt = manifest["settings"]["output"]["format"]
    reader = spark.read.format(fmt).options(header="true", inferSchema="true")
    tables = [reader.load(f"{run_dir}/{name}").toPandas() for name in ("profiles", "k_metrics", "sample")]
    return manifest, *tables


def write_report(spark: SparkSession, run_dir: str) -> str:
    """Rebuild ``report.html`` of a run from its outputs; returns its path."""
    manifest, profiles, k_metrics, sample = read_run_tables(spark, run_dir)
    scatter = manifest["settings"]["output"].get("report_scatter")
    path = f"{run_dir}/{REPORT_FILE}"
    Lake(spark, run_dir).write_text(path, build_report(manifest, profiles, k_metrics, sample, scatter))
    return path
