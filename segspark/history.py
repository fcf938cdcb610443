"""Segments over time: each stable segment's share and centroid across a lake's runs, the customers
moving between segments, and drift.

Everything comes from the runs' manifests (each segment's share and centroid, the run's scaling, and
the migration against the run before), so a lake's history costs no pass over its customers.

A segment drifts when, since the run before, its share of the customers moved by more than
``segments.drift.share`` (absolute: 0.05 is 5 points), or its centroid by more than
``segments.drift.centroid`` standard deviations: the Euclidean distance between the two centroids with
each feature divided by its standard deviation in the later run (after log1p for ``features.log``),
the same distance that matches segment ids across runs. Segments new in a run, or retired, do not drift.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from segspark.config import DriftSettings
from segspark.errors import InputDataError
from segspark.lake import RUNS_DIR, Lake
from segspark.manifest import Manifest, Migration, Segment, Space, read_manifest
from segspark.segments import NEW_CUSTOMER, NOT_ASSIGNED

log = logging.getLogger(__name__)

DEFAULT_RUNS = 10  # runs shown by `segspark history` and the report
TOP_FLOWS = 3  # the largest flows between two segments named per step
SHARE_DIGITS = 9  # shares compared with the drift threshold to this many decimals


@dataclass(frozen=True)
class Change:
    """One segment present in two runs in a row."""

    segment: int
    name: str
    share_before: float
    share_after: float
    centroid_move: float | None  # standard deviations; None when the runs' features differ
    feature: str | None  # the feature whose centre value moved most ...
    feature_move: float | None  # ... and by how many standard deviations (signed)

    @property
    def share_change(self) -> float:
        return self.share_after - self.share_before


@dataclass(frozen=True)
class Moves:
    """Customers between two runs, from the later run's migration matrix."""

    compared_with: str  # the run the later one was compared with when it ran
    stayed: int
    changed: int  # in a segment in both runs, another one now
    new: int  # not in the earlier run
    gone: int  # not assigned in the later run
    flows: tuple[tuple[int, int, int], ...]  # (from, to, customers) between segments, largest first

    @classmethod
    def of(cls, migration: Migration) -> Moves:
        """
        >>> Moves.of(Migration.model_validate({"previous_run": "a", "matrix": [
        ...     {"from": -1, "to": 0, "customers": 5}, {"from": 0, "to": 0, "customers": 90},
        ...     {"from": 0, "to": 1, "customers": 7}, {"from": 1, "to": -1, "customers": 2}]}))
        Moves(compared_with='a', stayed=90, changed=7, new=5, gone=2, flows=((0, 1, 7),))
        """
        cells = [(c.from_, c.to, c.customers) for c in migration.matrix]
        between = [c for c in cells if c[0] != NEW_CUSTOMER and c[1] != NOT_ASSIGNED]
        flows = sorted((c for c in between if c[0] != c[1]), key=lambda c: (-c[2], c[0], c[1]))
        return cls(
            compared_with=migration.previous_run,
            stayed=sum(n for a, b, n in between if a == b),
            changed=sum(n for _, _, n in flows),
            new=sum(n for a, _, n in cells if a == NEW_CUSTOMER),
            gone=sum(n for a, b, n in cells if b == NOT_ASSIGNED and a != NEW_CUSTOMER),
            flows=tuple(flows[:TOP_FLOWS]),
        )


@dataclass(frozen=True)
class Step:
    """From one run to the next: the segments' changes, new and retired segments, moving customers."""

    previous_run: str
    run_id: str
    changes: tuple[Change, ...]
    new: tuple[int, ...]
    retired: tuple[int, ...]
    moves: Moves | None
    drift: DriftSettings  # the later run's thresholds

    def share_drifted(self, change: Change) -> bool:
        # rounded: 0.55 - 0.50 is 5 points, not 5.0000000000000044
        return round(abs(change.share_change), SHARE_DIGITS) > self.drift.share

    def centroid_drifted(self, change: Change) -> bool:
        return change.centroid_move is not None and change.centroid_move > self.drift.centroid

    def warnings(self) -> list[str]:
        """One sentence per drift, for the summary, the manifest's warnings and the report."""
        sentences = []
        for c in self.changes:
            segment = f"segment {c.segment} ({c.name})"
            if self.share_drifted(c):
                verb = "grew" if c.share_change > 0 else "shrank"
                sentences.append(
                    f"drift: {segment} {verb} from {c.share_before:.1%} to {c.share_after:.1%} of the "
                    f"customers since run {self.previous_run} ({100 * c.share_change:+.1f} points; "
                    f"segments.drift.share is {100 * self.drift.share:g} points)"
                )
            if self.centroid_drifted(c):
                sentences.append(
                    f"drift: the centre of {segment} moved {c.centroid_move:.2f} standard deviations since "
                    f"run {self.previous_run} (most in {c.feature}: {c.feature_move:+.2f} sd; "
                    f"segments.drift.centroid is {self.drift.centroid:g})"
                )
        return sentences


@dataclass(frozen=True)
class History:
    """The last runs of a lake, oldest first, and the steps between them."""

    runs: tuple[Manifest, ...]
    steps: tuple[Step, ...]

    @property
    def run_ids(self) -> list[str]:
        return [m.run_id for m in self.runs]

    def names(self) -> dict[int, str]:
        """Each segment's name, as the newest run that has the segment calls it."""
        return {s.segment: s.segment_name for m in self.runs for s in m.segments}

    def shares(self) -> pd.DataFrame:
        """Share of the customers: one row per run, one column per segment (NaN: not in that run)."""
        rows = {m.run_id: {s.segment: s.share for s in m.segments} for m in self.runs}
        frame = pd.DataFrame.from_dict(rows, orient="index")
        return frame.reindex(columns=sorted(frame.columns))

    def centroid_moves(self) -> pd.DataFrame:
        """Centroid movement since the run before (standard deviations): one row per later run."""
        rows = {s.run_id: {c.segment: c.centroid_move for c in s.changes} for s in self.steps}
        frame = pd.DataFrame.from_dict(rows, orient="index", dtype=float)
        return frame.reindex(columns=self.shares().columns)

    def warnings(self) -> list[tuple[str, str]]:
        """(run id, sentence) for every drift in the history."""
        return [(s.run_id, w) for s in self.steps for w in s.warnings()]


def compare(previous: Manifest, current: Manifest) -> Step:
    """The step from run ``previous`` to run ``current``."""
    before = {s.segment: s for s in previous.segments}
    after = {s.segment: s for s in current.segments}
    space = _space(previous, current)
    changes = []
    for segment in sorted(set(before) & set(after)):
        moved = _moved(before[segment], after[segment], space)
        changes.append(
            Change(
                segment=segment,
                name=after[segment].segment_name,
                share_before=before[segment].share,
                share_after=after[segment].share,
                **moved,
            )
        )
    migration = current.migration
    return Step(
        previous_run=previous.run_id,
        run_id=current.run_id,
        changes=tuple(changes),
        new=tuple(sorted(set(after) - set(before))),
        retired=tuple(sorted(set(before) - set(after))),
        moves=Moves.of(migration) if migration else None,
        drift=current.settings.segments.drift,  # the defaults for runs from before segments.drift
    )


def drift_warnings(lake: Lake, previous_run: str | None, manifest: Manifest) -> list[str]:
    """The drift warnings of a run (its manifest) against the published run ``previous_run``."""
    if previous_run is None:
        return []
    try:
        previous = read_manifest(lake, lake.run_dir(previous_run))
    except Exception as exc:  # an unreadable earlier run must not stop this one
        log.warning("cannot read run %s (%s): no drift check", previous_run, exc)
        return []
    warnings = compare(previous, manifest).warnings()
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


def read_history(lake: Lake, runs: int = DEFAULT_RUNS, current: Manifest | None = None) -> History:
    """The last ``runs`` published runs of the lake, oldest first (by the time they finished).

    ``current``: a run's manifest (a staged run, or a published one whose report is being rebuilt): the
    history then ends with it, and runs that finished after it are left out.
    """
    manifests = []
    for run_id in lake.list_dirs(lake.path(RUNS_DIR)):
        try:
            manifest = read_manifest(lake, lake.run_dir(run_id))
        except Exception as exc:
            log.warning("run %s left out of the history: %s", run_id, exc)
            continue
        if manifest.succeeded and manifest.segments:
            manifests.append(manifest)
    if current is not None:
        manifests = [m for m in manifests if m.run_id != current.run_id and _order(m) < _order(current)]
        manifests.append(current)
    manifests = sorted(manifests, key=_order)[-runs:] if runs > 0 else []
    steps = tuple(compare(a, b) for a, b in zip(manifests, manifests[1:], strict=False))
    return History(tuple(manifests), steps)


def format_history(history: History, where: str) -> str:
    """``segspark history``: the history as plain text (a ``!`` marks a drift)."""
    if not history.runs:
        raise InputDataError(f"--lake {where}: no published run there (no runs/<run_id>/manifest.json)")
    ids = history.run_ids
    width = max(len(r) for r in ids)
    lines = [f"segments over the last {len(ids)} runs of {where}, oldest first"]
    lines += [f"  {m.run_id:<{width}}  finished {m.finished_at or '?'}" for m in history.runs]
    lines += ["", "segments (named as in the newest run that has them):"]
    lines += [f"  {segment:>3}  {name}" for segment, name in sorted(history.names().items())]
    shares, flags = history.shares(), drift_flags(history)

    def table(frame: pd.DataFrame, fmt: Callable[[float], str], flagged: set) -> list[str]:
        rows = [["run", *map(str, frame.columns)], *cells(frame, fmt, flagged)]
        return [
            ("  " + run_id.ljust(width) + "".join(map(_aligned, rest))).rstrip() for run_id, *rest in rows
        ]

    lines += ["", "share of the customers", *table(shares, "{:.1%}".format, flags["share"])]
    if history.steps:
        lines += ["", "centroid movement since the run before (standard deviations of the features)"]
        lines += table(history.centroid_moves(), "{:.2f}".format, flags["centroid"])
        lines += ["", "customers moving between segments"]
        lines += [f"  {s.previous_run} -> {s.run_id}: {moves_text(s)}" for s in history.steps]
        step = history.steps[-1]
        limits = f"share > {100 * step.drift.share:g} points or centroid > {step.drift.centroid:g} sd"
        warnings = history.warnings()
        lines += ["", f"drift ({limits} since the run before):"]
        lines += [f"  ! {run_id}: {w.removeprefix('drift: ')}" for run_id, w in warnings] or ["  none"]
    else:
        lines += ["", "one run only: nothing to compare yet"]
    return "\n".join(lines)


def moves_text(step: Step) -> str:
    """Customers moving in one step, in words."""
    moves = step.moves
    if moves is None:
        return "not recorded (the later run had no earlier run to compare with)"
    flows = ", ".join(f"{a} -> {b}: {n:,}" for a, b, n in moves.flows)
    text = (
        f"{moves.stayed:,} stayed, {moves.changed:,} changed segment{f' ({flows})' if flows else ''}, "
        f"{moves.new:,} new, {moves.gone:,} gone"
    )
    if moves.compared_with != step.previous_run:
        text += f" (compared with run {moves.compared_with}, the latest run when it started)"
    if step.new:
        text += f"; new segments: {', '.join(map(str, step.new))}"
    if step.retired:
        text += f"; retired segments: {', '.join(map(str, step.retired))}"
    return text


def cells(frame: pd.DataFrame, fmt: Callable[[float], str], flagged: set[tuple[str, int]]) -> list[list[str]]:
    """A runs-by-segments frame as rows of text: the run id, then each value ("–": the segment was not
    in that run; "!" after a drift).

    >>> cells(pd.DataFrame({0: [0.5, 0.62], 1: [0.5, None]}, index=["a", "b"]), "{:.0%}".format, {("b", 0)})
    [['a', '50%', '50%'], ['b', '62% !', '–']]
    """
    return [
        [
            str(run_id),
            *[
                ("–" if pd.isna(v) else fmt(v)) + (" !" if (run_id, s) in flagged else "")
                for s, v in row.items()
            ],
        ]
        for run_id, row in frame.iterrows()
    ]


def drift_flags(history: History) -> dict[str, set[tuple[str, int]]]:
    """(run id, segment) of every share drift and of every centroid drift."""
    return {
        "share": {(s.run_id, c.segment) for s in history.steps for c in s.changes if s.share_drifted(c)},
        "centroid": {
            (s.run_id, c.segment) for s in history.steps for c in s.changes if s.centroid_drifted(c)
        },
    }


def _aligned(cell: str) -> str:
    """A cell of ``cells`` in a fixed-width column, its drift mark beside it."""
    value = cell.removesuffix(" !")
    return f"{value:>9}{' !' if value != cell else '  '}"


def _space(previous: Manifest, current: Manifest) -> Space | None:
    """The later run's space, when both runs used the same features."""
    before, after = previous.space, current.space
    if not before or not after or before.vector_columns != after.vector_columns:
        return None
    return after


def _moved(before: Segment, after: Segment, space: Space | None) -> dict[str, float | str | None]:
    """How far a segment's centroid moved, in standard deviations of the later run, and the feature
    that moved most."""
    if space is None or before.center_unscaled is None or after.center_unscaled is None:
        return {"centroid_move": None, "feature": None, "feature_move": None}
    std = np.asarray(space.scaler_std, dtype=float)
    delta = (np.asarray(after.center_unscaled) - np.asarray(before.center_unscaled)) / np.where(
        std > 0, std, 1.0
    )
    most = int(np.argmax(np.abs(delta)))
    return {
        "centroid_move": float(np.linalg.norm(delta)),
        "feature": space.vector_columns[most],
        "feature_move": float(delta[most]),
    }


def _order(manifest: Manifest) -> tuple[str, str, str]:
    return (manifest.finished_at or "", manifest.started_at, manifest.run_id)
