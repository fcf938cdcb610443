"""The report: valid, self-contained HTML, every image decodable, every section, no customer ids."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from segspark.cli import main
from segspark.config import settings_from_dict
from segspark.job import run
from segspark.manifest import Manifest
from segspark.report import build_report
from tests.conftest import base_config

SECTIONS = [
    "Summary",
    "How many segments",
    "Segment sizes",
    "What sets each segment apart",
    "Customers by segment",
    "Customers in 3-D (interactive)",
    "Segment profiles",
    "Acting on the segments",
    "Run details",
]


class Page(HTMLParser):
    """Collects headings, images and links, and checks that every opened tag is closed."""

    VOID = {"meta", "img", "br", "link"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.headings: list[str] = []
        self.images: list[dict] = []
        self.external: list[str] = []
        self.header_cells: list[str] = []
        self.scripts: dict[str, str] = {}  # id (or "inline") -> text
        self._heading = False
        self._cell: list[str] | None = None
        self._script: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        for name in ("src", "href"):
            if name in attrs and not attrs[name].startswith("data:"):
                self.external.append(attrs[name])
        if tag not in self.VOID:
            self.stack.append(tag)
        self._heading = tag == "h2"
        if tag == "th":
            self._cell = []
        if tag == "script":
            self._script = attrs.get("id", "inline")
            self.scripts.setdefault(self._script, "")

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (
            f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        )
        self.stack.pop()
        if tag == "th" and self._cell is not None:
            self.header_cells.append("".join(self._cell))
            self._cell = None
        if tag == "script":
            self._script = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._script is not None:
            self.scripts[self._script] += data
        if self._heading:
            self.headings.append(data)
            self._heading = False


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    assert page.stack == [], f"unclosed tags: {page.stack}"
    return page


@pytest.fixture(scope="module")
def report_run(spark, demo_data, tmp_path_factory):
    lake = tmp_path_factory.mktemp("report-lake")
    output = {"run_id": "r1", "report_scatter": ["annual_income", "spending_score"]}
    config = base_config(demo_data["customers"], str(lake), model={"k": {"min": 3, "max": 6}}, output=output)
    return run(settings_from_dict(config), spark)


@pytest.fixture(scope="module")
def page_text(report_run) -> str:
    with open(f"{report_run.run_dir}/report.html") as file:
        return file.read()


def test_report_is_valid_html_with_every_section(page_text):
    page = parse(page_text)
    assert page.headings == SECTIONS
    assert page.external == []  # self-contained: no file, network or script references


def test_no_script_or_link_reaches_the_network(page_text):
    assert re.search(r"https?://", page_text) is None
    assert re.search(r"<script[^>]*\bsrc=", page_text) is None


def test_profile_headers_read_as_plain_text(report_run, page_text):
    headers = parse(page_text).header_cells
    assert not [h for h in headers if "<" in h or ">" in h]  # no markup shown as text, like a literal <br>
    assert "suggested action" in headers and "feature: mean (median)" in headers
    names = report_run.profiles.sort_values("segment")
    for segment, name in zip(names["segment"], names["segment_name"], strict=True):
        assert f"{segment}: {name}" in headers


def test_3d_view_holds_the_sample_with_its_distances(spark, report_run, page_text):
    cloud = json.loads(parse(page_text).scripts["cloud-data"])
    sample = spark.read.parquet(f"{report_run.run_dir}/sample").toPandas()  # in the order Spark reads it
    assert cloud["segment"] == sample["segment"].tolist()
    numeric = report_run.manifest["features"]["numeric"]
    # independent check: six standardised features; the first three principal components keep most of
    # the spread, so distances in the view track distances in the standardised space
    values = sample[numeric].astype(float)
    scaled = ((values - values.mean()) / values.std(ddof=0)).to_numpy()
    points = np.array(cloud["points"])
    assert points.shape == (len(sample), 3) and np.abs(points).max() <= 1.0
    pick = np.random.default_rng(0).choice(len(sample), size=200, replace=False)
    near = np.linalg.norm(points[pick, None] - points[None, pick], axis=2).ravel()
    full = np.linalg.norm(scaled[pick, None] - scaled[None, pick], axis=2).ravel()
    assert np.corrcoef(near, full)[0, 1] > 0.9


def test_every_image_decodes(page_text):
    page = parse(page_text)
    assert len(page.images) == 4
    for image in page.images:
        data = base64.b64decode(image["src"].removeprefix("data:image/png;base64,"))
        pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
        assert pixels.shape[0] > 100 and pixels.shape[1] > 300


def test_the_chosen_k_is_marked_in_the_sweep_table(report_run, page_text):
    chosen = report_run.manifest["k"]["chosen"]
    assert f'<tr class="chosen"><td class="l">{chosen} ← chosen</td>' in page_text
    assert page_text.count("← chosen") == 1


def test_no_customer_identifier_appears(demo_data, page_text):
    ids = pd.read_parquet(demo_data["customers"])["customer_id"]
    assert not [cid for cid in ids if cid in page_text]


def test_scatter_uses_the_configured_features(page_text):
    assert 'alt="scatter of spending_score against annual_income"' in page_text


def test_segment_report_rebuilds_the_same_file(report_run, page_text, capsys):
    path = f"{report_run.run_dir}/report.html"
    with open(path, "w") as file:
        file.write("damaged")
    assert main(["report", report_run.run_dir]) == 0
    assert f"report: {path}" in capsys.readouterr().out
    with open(path) as file:
        assert file.read() == page_text


def test_no_report_when_output_report_is_false(spark, demo_data, tmp_path):
    config = base_config(
        demo_data["customers"], str(tmp_path), model={"k": 4, "restarts": 1}, output={"report": False}
    )
    result = run(settings_from_dict(config), spark)
    assert not (tmp_path / "runs" / result.run_id / "report.html").exists()
    assert "report" not in result.manifest["outputs"]


def _hand_made() -> tuple[Manifest, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    manifest = {
        "run_id": "hand<made>",
        "rows": {"read": 10, "assigned": 9, "rejected": 1},
        "features": {"numeric": ["spend", "visits"], "categorical": []},
        "k": {
            "algorithm": "kmeans",
            "chosen": 2,
            "silhouette": 0.7,
            "rule": "highest silhouette over k=2..3",
            "runner_up": {"k": 3, "silhouette": 0.5},
        },
        "migration": {
            "previous_run": "before",
            "matrix": [
                {"from": 0, "to": 0, "customers": 4},
                {"from": 0, "to": 1, "customers": 1},
                {"from": 1, "to": 1, "customers": 3},
                {"from": -1, "to": 1, "customers": 1},
            ],
        },
        "timings": {"read": 1.0},
        "versions": {"spark": "4.3.0"},
    }
    profiles = pd.DataFrame(
        {
            "segment": [0, 1],
            "segment_name": ["High spend", "Low <spend> & co"],
            "size": [5, 4],
            "share": [5 / 9, 4 / 9],
            "action": ["win-back offer", None],
            "spend_mean": [90.0, 10.0],
            "spend_median": [88.0, 9.0],
            "spend_z": [1.0, -1.0],
            "visits_mean": [3.0, 4.0],
            "visits_median": [3.0, 4.0],
            "visits_z": [-0.2, 0.2],
        }
    )
    metrics = pd.DataFrame(
        {"k": [2, 3], "silhouette": [0.7, 0.5], "wssse": [10.0, 8.0], "chosen": [True, False]}
    )
    sample = pd.DataFrame(
        {"segment": [0, 0, 1, 1], "spend": [90.0, 91.0, 10.0, 11.0], "visits": [3.0, 2.0, 4.0, 5.0]}
    )
    return Manifest.model_validate(manifest), profiles, metrics, sample


def test_build_report_shows_migration_and_actions_and_escapes_text():
    text = build_report(*_hand_made())
    page = parse(text)
    flat = [h for h in SECTIONS[:-2] if "3-D" not in h]  # two features: no 3-D view; no rules
    assert page.headings == [*flat, "Movement since the previous run", "Run details"]
    assert "win-back offer" in text
    assert "Low &lt;spend&gt; &amp; co" in text and "Low <spend>" not in text
    assert "was not in that run" in text and "now 1" in text


def test_numbers_carry_no_needless_decimals_and_warnings_show():
    manifest, profiles, metrics, sample = _hand_made()
    profiles["spend_mean"] = [38.031, 10.26]
    profiles["spend_median"] = [38.0, 9.0]
    manifest.warnings = ["segment 1 'Low' holds 1 customer (0.1%), below segments.min_size"]
    page = build_report(manifest, profiles, metrics, sample)
    assert "<td>38 (38)</td>" in page and "<td>10.3 (9)</td>" in page
    assert "38.031" not in page and "38.000" not in page
    assert "<li>segment 1 &#39;Low&#39; holds 1 customer (0.1%), below segments.min_size</li>" in page


def test_3d_view_of_three_features_keeps_the_distances_between_customers():
    manifest, profiles, metrics, _ = _hand_made()
    manifest.features.numeric = ["spend", "visits", "age"]
    profiles = profiles.assign(age_mean=[30.0, 50.0], age_median=[30.0, 50.0], age_z=[-1.0, 1.0])
    rng = np.random.default_rng(3)
    sample = pd.DataFrame(
        {"segment": [0] * 20 + [1] * 20, **{c: rng.normal(size=40) for c in ("spend", "visits", "age")}}
    )
    cloud = json.loads(parse(build_report(manifest, profiles, metrics, sample)).scripts["cloud-data"])
    # three features, three components: a rotation of the standardised data, scaled to fit [-1, 1]
    features = sample[["spend", "visits", "age"]]
    scaled = ((features - features.mean()) / features.std(ddof=0)).to_numpy()
    points = np.array(cloud["points"])
    ratio = np.linalg.norm(points[1:] - points[0], axis=1) / np.linalg.norm(scaled[1:] - scaled[0], axis=1)
    np.testing.assert_allclose(ratio, ratio.mean(), atol=2e-3)
    assert cloud["colours"] == {"0": "#1f77b4", "1": "#ff7f0e"}
