"""The data card: every section, numbers that match metadata.json and the manifest, and a real browser render."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from beam_pipeline import mimic, report, sample, show
from beam_pipeline.run import run
from card_checks import card, card_with_samples, manifest_rows, shown
from conftest import ONE_WORKER, OFFLINE_TEXT

SECTIONS = ["funnel", "splits", "labels", "timing", "text", "leakage", "demographics", "images", "retrieval",
            "samples", "provenance"]
NOT_COUNTS = {"config", "versions", "probe"}  # tables whose cells are not counts (flags, versions, AUROCs)


def number(text: str) -> int:
    return int(text.replace(",", ""))


@pytest.fixture(scope="module")
def reported(tmp_path_factory, kb_index):
    base = tmp_path_factory.mktemp("report")
    roots = sample.generate(base / "sample", subjects=60, seed=9)
    output = base / "out"
    metadata = run([f"--mimic_cxr_root={roots.cxr}", f"--mimic_ed_root={roots.ed}", f"--mimic_iv_root={roots.iv}",
                    f"--output={output}", OFFLINE_TEXT, ONE_WORKER, f"--kb_index={kb_index}", "--image_size=128"])
    index, page = card(output)  # the default: aggregate only
    return output, metadata, index, page, manifest_rows(output)


@pytest.fixture(scope="module")
def with_samples(reported):
    output = reported[0]
    return card_with_samples(output, samples=6)


def test_every_section_has_numbers_from_metadata_and_the_manifest(reported):
    output, metadata, index, page, manifest = reported
    counts, stats = metadata["counts"], metadata["stats"]
    assert page.sections == SECTIONS
    funnel = {row[0]: row[1] for row in page.tables["funnel"][1:]}
    assert funnel["images in metadata"] == shown(counts["images_total"])
    assert funnel["written (matched)"] == shown(counts["matched"])
    assert funnel["no ED stay in window"] == shown(counts["no_ed_stay"]) and funnel["rejected"] == shown(
        counts["rejected"])
    reasons = counts["rejected_by_reason"]  # they add up to "rejected": one small reason hides another with it
    assert {k[len("rejected: "):]: v for k, v in funnel.items() if k.startswith("rejected: ")} == \
        dict(zip(reasons, (str(c) for c in report.cells(list(reasons.values())))))
    assert metadata["split"]["strategy"] == metadata["config"]["split_strategy"] == "official"
    assert "Strategy: <b>official</b>: MIMIC-CXR split file" in index.read_text()
    assert "most held-out" in index.read_text()  # the rule for a patient in several official splits
    for row in page.tables["splits"][1:]:
        split, images, studies, patients = row
        rows = [r for r in manifest if r["split"] == split]
        assert images == shown(len(rows)) == shown(counts["per_split"][split])
        assert studies == shown(len({r["study_id"] for r in rows})) == shown(counts["studies_per_split"][split])
        assert patients == shown(len({r["subject_id"] for r in rows})) == shown(counts["patients_per_split"][split])
    for split in mimic.SPLITS:
        table = {row[0]: row[1:] for row in page.tables[f"labels-{split}"][1:]}
        for label, states in stats["per_split"][split]["labels"].items():
            gone = {list(states)[i] for i in report.hidden(list(states.values()))}
            assert table[label][0] == ("suppressed" if "positive" in gone and not report.small(states["positive"])
                                       else shown(states["positive"]))
        sexes = stats["per_split"][split]["sex"]
        assert page.tables[f"sex-{split}"][1][1:] == [str(c) for c in report.cells(list(sexes.values()))]
    hours = {row[0]: row[1] for row in page.tables["hours"][1:]}
    assert list(hours) == list(stats["hours_from_arrival"]) and sum(stats["hours_from_arrival"].values()) == \
        counts["matched"]
    assert list(hours.values()) == [str(c) for c in report.cells(list(stats["hours_from_arrival"].values()))]
    text = {row[0]: row[1] for row in page.tables["text"][1:]}
    assert text["notes redacted by the leakage filter"] == shown(counts["notes"]["redacted"])
    passages = page.tables["passages"][1:]
    assert passages and all(row[1] for row in passages)  # ids with their titles
    assert passages[0][2] == shown(max(stats["rag"]["passages"].values()))
    inputs = {row[0]: row[3] for row in page.tables["inputs"][1:]}
    assert inputs == {k: v["sha256"] for k, v in metadata["inputs"].items()}


def test_default_page_is_aggregate_only_with_small_cells_suppressed(reported):
    output, metadata, index, page, manifest = reported
    text = index.read_text()
    assert page.images == [name for name in page.images if not name.startswith("sample-")]  # figures only
    assert "sample X-ray" not in text and "Chief complaint" not in text and "year-old" not in text
    assert report.PHI_BANNER not in text and 'id="aggregate"' in text
    small = [(name, row) for name, rows in page.tables.items() if name not in NOT_COUNTS
             for row in rows[1:] for cell in row[1:] if re.fullmatch(r"\d+", cell) and 1 <= int(cell) <= 10]
    assert not small, small  # not one count from 1 to 10 anywhere on the page
    assert any("<11" in cell for rows in page.tables.values() for row in rows for cell in row)  # there were some
    stats = metadata["stats"]["per_split"]["val"]["labels"]
    rare = [label for label in mimic.LABELS if 1 <= stats[label]["positive"] <= 10]
    assert rare and all(row[1] == "<11" and row[2] == "<11" for row in page.tables["labels-val"][1:]
                        if row[0] in rare)  # count and rate both hidden


def test_the_leakage_probe_table_shows_every_label(reported):
    _, metadata, _, page, _ = reported
    probe = metadata["leakage_probe"]
    assert probe["inputs"] == ["filtered_note", "filtered_note_without_marker", "unfiltered_note", "structured"]
    header, *rows = page.tables["probe"]
    assert header[:5] == ["label", "filtered note", "filtered note, marker deleted", "unfiltered note",
                          "structured features"]
    assert [row[0] for row in rows] == list(mimic.LABELS)
    fitted = 0
    for row in rows:
        entry = probe["labels"][row[0]]
        if "skipped" in entry:
            assert row[1:5] == ["–"] * 4 and row[-1].startswith("skipped")
        else:
            fitted += 1
            assert row[1:5] == [f"{entry[name]:.3f}" for name in probe["inputs"]]
            assert all(0.0 <= entry[name] <= 1.0 for name in probe["inputs"])
        assert row[5:8] == [shown(entry["n_train"]), shown(entry["n_val"]), shown(entry["positives_val"])]
    assert probe["n_train"] > 0 and fitted == sum("skipped" not in e for e in probe["labels"].values())


def test_suppression_helpers_hide_small_cells_and_their_complement():
    assert [str(report.Count(n)) for n in (0, 1, 10, 11, 12345)] == ["0", "<11", "<11", "11", "12,345"]
    assert [str(c) for c in report.cells([500, 3, 40, 0])] == ["500", "<11", "suppressed", "0"]  # 3 = total - rest
    assert [str(c) for c in report.cells([500, 3, 4, 40])] == ["500", "<11", "<11", "40"]
    assert report.drawn({"a": 5, "b": 50, "c": 0}) == {"a": 0, "b": 50, "c": 0}
    # a figure hides what the table hides: 412 images, 370 + 38 + 4, the 4 hidden, the 38 with it
    parts = {"<12": 370, "12-24": 38, ">=24": 4}
    assert report.drawn(parts, parts=True) == {"<12": 370, "12-24": 0, ">=24": 0}
    assert report.tick_names(parts, parts=True) == ["<12", "12-24 (suppressed)", ">=24 (<11)"]


def test_a_small_negative_count_cannot_be_worked_out_from_a_label_row():
    """The row shows positives and the positive, uncertain and blank rates of a shown total: 48 images, 0 positive,
    0 uncertain, 40 blank told the 8 negatives by subtraction. The blank rate is suppressed with them now."""
    states = {"positive": 0, "uncertain": 0, "negative": 8, "blank": 40}
    stats = {"per_split": {"val": {"labels": {name: dict(states) for name in mimic.LABELS}}}}
    assert report.label_rows(stats, "val")[0][1:] == [0, 0.0, 0.0, "suppressed"]
    assert report.rate(3, 100) == "<11" and report.rate(30, 100) == 0.3


def test_linked_images_leave_out_those_the_join_rejected():
    counts = {"images_kept_view": 100, "no_ed_stay": 30,
              "rejected_by_reason": {"join/stay_row_rejected": 4, "join/conflicting_edstays": 2, "images/corrupt_image": 5}}
    assert report.linked_images(counts) == 64  # the image-stage reject was linked first


@pytest.mark.parametrize("module", ["report", "show"])
def test_cli_on_a_folder_without_a_complete_run_says_so(module, tmp_path):
    """A run folder with shards but no metadata.json (a job still running or stopped): a one-line error, no traceback."""
    (tmp_path / "tfrecords").mkdir(parents=True)
    (tmp_path / "tfrecords" / "train-00000-of-00001.tfrecord").write_bytes(b"")
    done = subprocess.run([sys.executable, "-m", f"beam_pipeline.{module}", str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path} holds no complete run")
    assert "incomplete or still running" in done.stderr


def test_samples_opt_in_with_the_patient_data_banner(reported, with_samples):
    output, metadata, _, _, manifest = reported
    index, page = with_samples
    text = index.read_text()
    val = {r["dicom_id"] for r in manifest if r["split"] == "val"}
    shown_ids = re.findall(r'alt="sample X-ray ([0-9a-f-]+)"', text)
    assert len(shown_ids) == min(6, len(val)) and set(shown_ids) <= val
    assert all((index.parent / src).stat().st_size > 1000 for src in page.images)
    assert text.index(report.PHI_BANNER) < text.index("<h1>") and "do not share" in text.split("</title>")[0]
    assert "data use agreement" in text and ("Chief complaint" in text or "year-old" in text)


def test_report_renders_in_headless_chromium(with_samples, tmp_path):
    """Served on loopback and opened in Debian's Chromium: no broken image (figures and thumbnails), the funnel is on
    the page."""
    index, page = with_samples
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
    assert f"all {len(page.images)} images loaded" in dom and "Stage funnel" in dom and "Leakage probe" in dom
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
