"""Segments over time and drift, from hand-made manifests whose answers are worked out by hand."""

from __future__ import annotations

import math
import re

import pytest

from segspark.cli import main
from segspark.history import History, compare, format_history, read_history
from segspark.lake import Lake
from segspark.manifest import Manifest
from segspark.report import build_report
from tests.test_report import _hand_made, parse


def manifest(run_id: str, finished: str, segments: dict, **extra) -> Manifest:
    """A run's manifest with what the history reads: segment -> (share, centroid before scaling)."""
    return Manifest.model_validate(
        {
            "run_id": run_id,
            "status": "succeeded",
            "started_at": finished,
            "finished_at": finished,
            "settings": {"segments": {"drift": extra.pop("drift", {})}},
            "space": {
                "vector_columns": extra.pop("columns", ["a", "b"]),
                "scaler_std": extra.pop("std", [2.0, 1.0]),
            },
            "segments": [
                {
                    "segment": s,
                    "segment_name": f"name {s}",
                    "share": share,
                    "size": 0,
                    "center_unscaled": centre,
                }
                for s, (share, centre) in segments.items()
            ],
            **extra,
        }
    )


def test_centroid_movement_is_in_standard_deviations_of_the_later_run():
    before = manifest("r1", "2026-01-01", {0: (0.5, [0.0, 0.0]), 1: (0.5, [10.0, 10.0])})
    after = manifest("r2", "2026-01-08", {0: (0.5, [1.2, 0.5]), 1: (0.5, [10.0, 10.0])}, std=[2.0, 0.0])
    step = compare(before, after)
    moved, still = step.changes
    # a moved 1.2 / 2 = 0.6 sd; b has no spread (std 0) and counts in its own units: 0.5
    assert moved.centroid_move == pytest.approx(math.sqrt(0.6**2 + 0.5**2))
    assert (moved.feature, moved.feature_move) == ("a", pytest.approx(0.6))
    assert still.centroid_move == 0
    assert step.warnings() == [
        "drift: the centre of segment 0 (name 0) moved 0.78 standard deviations since run r1 "
        "(most in a: +0.60 sd; segments.drift.centroid is 0.5)"
    ]


def test_a_share_drifts_when_it_moves_by_more_than_the_threshold_in_points():
    before = manifest("r1", "2026-01-01", {0: (0.50, [0, 0]), 1: (0.30, [5, 5]), 2: (0.20, [9, 9])})
    after = manifest("r2", "2026-01-08", {0: (0.55, [0, 0]), 1: (0.36, [5, 5]), 2: (0.09, [9, 9])})
    step = compare(before, after)
    assert [step.share_drifted(c) for c in step.changes] == [False, True, True]  # 5 points is not more
    assert step.warnings() == [
        "drift: segment 1 (name 1) grew from 30.0% to 36.0% of the customers since run r1 "
        "(+6.0 points; segments.drift.share is 5 points)",
        "drift: segment 2 (name 2) shrank from 20.0% to 9.0% of the customers since run r1 "
        "(-11.0 points; segments.drift.share is 5 points)",
    ]


def test_the_later_runs_thresholds_apply():
    before = manifest("r1", "2026-01-01", {0: (0.30, [0, 0])})
    after = manifest("r2", "2026-01-08", {0: (0.36, [4, 0])}, drift={"share": 0.1, "centroid": 2.5})
    assert compare(before, after).warnings() == []  # 6 points and 2 sd: within these thresholds


def test_new_and_retired_segments_and_other_features_do_not_drift():
    before = manifest("r1", "2026-01-01", {0: (0.5, [0, 0]), 1: (0.5, [5, 5])})
    after = manifest("r2", "2026-01-08", {0: (0.48, [9, 9]), 2: (0.52, [1, 1])}, columns=["a", "c"])
    step = compare(before, after)
    assert (step.new, step.retired) == ((2,), (1,))
    assert [c.segment for c in step.changes] == [0]
    assert step.changes[0].centroid_move is None  # other features: the centres are not comparable
    assert step.warnings() == []


def _lake_with_runs(spark, root) -> Lake:
    """r-b finished first, then r-c, then r-a; a failed run and a folder without a manifest too."""
    runs = {
        "r-a": manifest("r-a", "2026-01-15T00:00:00+00:00", {0: (0.4, [0, 0]), 1: (0.6, [5, 5])}),
        "r-b": manifest("r-b", "2026-01-01T00:00:00+00:00", {0: (0.5, [0, 0]), 1: (0.5, [5, 5])}),
        "r-c": manifest(
            "r-c",
            "2026-01-08T00:00:00+00:00",
            {0: (0.5, [0, 0]), 1: (0.5, [5, 5])},
            migration={
                "previous_run": "r-b",
                "matrix": [
                    {"from": 0, "to": 0, "customers": 9},
                    {"from": 0, "to": 1, "customers": 1},
                    {"from": 1, "to": 1, "customers": 10},
                    {"from": -1, "to": 1, "customers": 3},
                ],
            },
        ),
        "r-failed": Manifest(run_id="r-failed", status="failed"),
    }
    for run_id, content in runs.items():
        (root / "runs" / run_id).mkdir(parents=True)
        (root / "runs" / run_id / "manifest.json").write_text(content.to_json())
    (root / "runs" / "r-empty").mkdir()
    return Lake(spark, str(root))


def test_history_holds_the_last_runs_by_the_time_they_finished(spark, tmp_path):
    lake = _lake_with_runs(spark, tmp_path)
    assert read_history(lake).run_ids == ["r-b", "r-c", "r-a"]
    assert read_history(lake, runs=2).run_ids == ["r-c", "r-a"]
    # a report rebuilt for r-c shows the runs up to r-c, as the run itself did
    current = Manifest.model_validate_json((tmp_path / "runs" / "r-c" / "manifest.json").read_text())
    history = read_history(lake, current=current)
    assert history.run_ids == ["r-b", "r-c"]
    assert history.shares().to_dict(orient="index") == {"r-b": {0: 0.5, 1: 0.5}, "r-c": {0: 0.5, 1: 0.5}}

    text = format_history(read_history(lake), "the-lake")
    assert "segments over the last 3 runs of the-lake, oldest first" in text
    assert "  r-b -> r-c: 19 stayed, 1 changed segment (0 -> 1: 1), 3 new, 0 gone" in text
    assert "  r-c -> r-a: not recorded (the later run had no earlier run to compare with)" in text
    assert "  ! r-a: segment 0 (name 0) shrank from 50.0% to 40.0%" in text
    assert re.search(r"\n  r-a +40\.0% ! +60\.0% !\n", text)


def test_history_of_a_lake_without_runs_says_so(spark, tmp_path, capsys):
    assert main(["history", "--lake", str(tmp_path / "nothing")]) == 3
    assert "no published run there" in capsys.readouterr().err


def test_report_shows_the_segments_over_time_with_names_escaped():
    runs = (
        manifest("r1", "2026-01-01", {0: (0.5, [0, 0]), 1: (0.5, [5, 5])}),
        manifest("r2", "2026-01-08", {0: (0.6, [0, 0]), 1: (0.4, [5, 5])}),
    )
    runs[1].segments[0].segment_name = "High <spend>"
    history = History(runs, (compare(*runs),))
    text = build_report(*_hand_made(), history=history)
    assert "Segments over time" in parse(text).headings
    assert "0: High &lt;spend&gt;" in text and "High <spend>" not in text
    assert "<td>60.0% !</td>" in text
    assert "run r2: segment 0 (High &lt;spend&gt;) grew from 50.0% to 60.0%" in text
