"""The report: valid, self-contained HTML, every image decodable, every section, no customer ids."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import matplotlib.image
import pandas as pd
import pytest

from segspark.cli import main
from segspark.config import settings_from_dict
from segspark.job import run
from segspark.report import build_report
from tests.conftest import base_config

SECTIONS = [
    "Summary",
    "How many segments",
    "Segment sizes",
    "What sets each segment apart",
    "Customers by segment",
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
        self._heading = False

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

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (
            f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        )
        self.stack.pop()

    def handle_data(self, data):
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


def _hand_made() -> tuple[dict, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
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
    return manifest, profiles, metrics, sample


def test_build_report_shows_migration_and_actions_and_escapes_text():
    text = build_report(*_hand_made())
    page = parse(text)
    assert page.headings == [*SECTIONS[:-2], "Movement since the previous run", "Run details"]
    assert "win-back offer" in text
    assert "Low &lt;spend&gt; &amp; co" in text and "Low <spend>" not in text
    assert "was not in that run" in text and "now 1" in text
