"""The data card: every section, numbers that match metadata.json and the manifest, and a real browser render."""

from __future__ import annotations

import csv
import functools
import re
import shutil
import subprocess
import threading
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from beam_pipeline import mimic, report, sample, show
from beam_pipeline.run import run
from conftest import ONE_WORKER, OFFLINE_TEXT, published

SECTIONS = ["funnel", "splits", "labels", "timing", "text", "demographics", "images", "retrieval", "samples",
            "provenance"]


class Page(HTMLParser):
    """Section ids, image sources and every table (by class) as rows of cell texts."""

    def __init__(self, text: str):
        super().__init__()
        self.sections, self.images, self.tables = [], [], {}
        self._table = self._row = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "table":
            self._table = self.tables.setdefault(attrs.get("class", ""), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._row.append("")

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = self._row = None

    def handle_data(self, data):
        if self._row is not None and self._row:
            self._row[-1] += data


def number(text: str) -> int:
    return int(text.replace(",", ""))


@pytest.fixture(scope="module")
def reported(tmp_path_factory, kb_index):
    base = tmp_path_factory.mktemp("report")
    roots = sample.generate(base / "sample", subjects=60, seed=9)
    output = base / "out"
    metadata = run([f"--mimic_cxr_root={roots.cxr}", f"--mimic_ed_root={roots.ed}", f"--mimic_iv_root={roots.iv}",
                    f"--output={output}", OFFLINE_TEXT, ONE_WORKER, f"--kb_index={kb_index}", "--image_size=128"])
    index = Path(report.build(str(output), samples=6))
    manifest = [row for p in sorted((published(output) / "manifest").glob("*.csv")) for row in csv.DictReader(p.open())]
    return output, metadata, index, Page(index.read_text()), manifest


def test_every_section_has_numbers_from_metadata_and_the_manifest(reported):
    output, metadata, index, page, manifest = reported
    counts, stats = metadata["counts"], metadata["stats"]
    assert page.sections == SECTIONS
    funnel = {row[0]: number(row[1]) for row in page.tables["funnel"][1:]}
    assert funnel["images in metadata"] == counts["images_total"] and funnel["written (matched)"] == counts["matched"]
    assert funnel["no ED stay in window"] == counts["no_ed_stay"] and funnel["rejected"] == counts["rejected"]
    assert {k[len("rejected: "):]: v for k, v in funnel.items() if k.startswith("rejected: ")} == \
        counts["rejected_by_reason"]
    for row in page.tables["splits"][1:]:
        split, images, studies, patients = row[0], *map(number, row[1:])
        rows = [r for r in manifest if r["split"] == split]
        assert images == len(rows) == counts["per_split"][split]
        assert studies == len({r["study_id"] for r in rows}) == counts["studies_per_split"][split]
        assert patients == len({r["subject_id"] for r in rows}) == counts["patients_per_split"][split]
    for split in mimic.SPLITS:
        table = {row[0]: number(row[1]) for row in page.tables[f"labels-{split}"][1:]}
        assert table == {label: stats["per_split"][split]["labels"][label]["positive"] for label in mimic.LABELS}
        sexes = page.tables[f"sex-{split}"]
        assert sum(map(number, sexes[1][1:])) == counts["per_split"][split]
    hours = {row[0]: number(row[1]) for row in page.tables["hours"][1:]}
    assert hours == stats["hours_from_arrival"] and sum(hours.values()) == counts["matched"]
    text = {row[0]: row[1] for row in page.tables["text"][1:]}
    assert number(text["notes redacted by the leakage filter"]) == counts["notes"]["redacted"]
    passages = page.tables["passages"][1:]
    assert passages and all(row[1] for row in passages)  # ids with their titles
    assert number(passages[0][2]) == max(stats["rag"]["passages"].values())
    inputs = {row[0]: row[3] for row in page.tables["inputs"][1:]}
    assert inputs == {k: v["sha256"] for k, v in metadata["inputs"].items()}


def test_samples_come_from_the_validation_split_and_every_image_exists(reported):
    output, metadata, index, page, manifest = reported
    val = {r["dicom_id"] for r in manifest if r["split"] == "val"}
    shown = re.findall(r'alt="sample X-ray ([0-9a-f-]+)"', index.read_text())
    assert len(shown) == min(6, len(val)) and set(shown) <= val
    assert all((index.parent / src).stat().st_size > 1000 for src in page.images)
    assert "data use agreement" in index.read_text()


def test_report_renders_in_headless_chromium(reported, tmp_path):
    """Served on loopback and opened in Debian's Chromium: no broken image, the funnel is on the page."""
    _, _, index, page, _ = reported
    browser = shutil.which("chromium")
    assert browser, "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(index.parent))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--virtual-time-budget=10000"]
    try:
        dom = subprocess.run([browser, *flags, f"--user-data-dir={tmp_path / 'a'}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        shot = tmp_path / "report.png"
        subprocess.run([browser, *flags, f"--user-data-dir={tmp_path / 'b'}", "--window-size=1280,2000",
                        f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    finally:
        server.shutdown()
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert f'data-images="{len(page.images)}"' in body and 'data-broken-images="0"' in body
    assert f"all {len(page.images)} images loaded" in dom and "Stage funnel" in dom
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_inspect_prints_records_and_saves_images(reported, tmp_path, capsys):
    output, _, _, _, manifest = reported
    wanted = sorted(r["dicom_id"] for r in manifest if r["split"] == "test")[:2]
    show.main([str(output), "--split=test", *[f"--dicom_id={d}" for d in wanted], f"--save_images={tmp_path}"])
    out = capsys.readouterr().out
    for dicom_id in wanted:
        assert f"dicom_id {dicom_id}  split test" in out and (tmp_path / f"{dicom_id}.png").stat().st_size > 0
    assert "Chief complaint" in out or "year-old" in out or "Patient" in out
    assert "retrieval for '" in out and "image 128x128 png from" in out
    with pytest.raises(SystemExit):
        show.main([str(output), "--split=test", "--dicom_id=not-a-dicom"])
