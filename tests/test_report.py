"""The data card: every section, numbers that match metadata.json and the manifest, and a real browser render."""

from __future__ import annotations

import functools
import html
import json
import re
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from beam_pipeline import mimic, report, report_cards, sample, show
from beam_pipeline.run import run
from card_checks import (HIDDEN, Page, card, card_with_samples, drawn_figures, edited_run, follows, hidden_ok,
                         manifest_rows, shown)
from conftest import ONE_WORKER, OFFLINE_TEXT

SECTIONS = ["funnel", "splits", "labels", "timing", "text", "leakage", "demographics", "images", "retrieval",
            "samples", "provenance"]
NOT_COUNTS = {"config", "versions"}  # tables whose cells are not counts (flags, versions)


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
    assert funnel["images in metadata"] == shown(counts["images_total"])  # the inputs table shows its rows
    assert funnel["written (matched)"] == shown(counts["matched"])
    assert hidden_ok(funnel["no ED stay in window"], counts["no_ed_stay"])
    assert hidden_ok(funnel["rejected"], counts["rejected"])
    reasons = counts["rejected_by_reason"]
    assert {k[len("rejected: "):] for k in funnel if k.startswith("rejected: ")} == set(reasons)
    assert all(hidden_ok(funnel[f"rejected: {k}"], n) for k, n in reasons.items())
    assert metadata["split"]["strategy"] == metadata["config"]["split_strategy"] == "official"
    assert "Strategy: <b>official</b>: MIMIC-CXR split file" in index.read_text()
    assert "most held-out" in index.read_text()  # the rule for a patient in several official splits
    splits = {row[0]: row[1:] for row in page.tables["splits"][1:]}
    assert list(splits) == [*mimic.SPLITS, "total"] and splits["total"][0] == shown(counts["matched"])
    for split in mimic.SPLITS:
        images, studies, patients = splits[split]
        rows = [r for r in manifest if r["split"] == split]
        assert hidden_ok(images, len(rows)) and len(rows) == counts["per_split"][split]
        assert hidden_ok(studies, len({r["study_id"] for r in rows}))
        assert len({r["study_id"] for r in rows}) == counts["studies_per_split"][split]
        assert hidden_ok(patients, len({r["subject_id"] for r in rows}))
        assert len({r["subject_id"] for r in rows}) == counts["patients_per_split"][split]
        table = {row[0]: row[1:] for row in page.tables[f"labels-{split}"][1:]}
        sexes = stats["per_split"][split]["sex"]
        if images in HIDDEN:  # every count of the split hidden with its images, which they add up to
            assert studies in HIDDEN and patients in HIDDEN  # no more of them than images: they would bound them
            assert all(cell == images for cells in table.values() for cell in cells)
            assert page.tables[f"sex-{split}"][1][1:] == [images] * len(sexes)
            continue
        for label, states in stats["per_split"][split]["labels"].items():
            gone = {list(states)[i] for i in report.hidden(list(states.values()))}
            assert table[label][0] == ("suppressed" if "positive" in gone and not report.small(states["positive"])
                                       else shown(states["positive"]))
        assert page.tables[f"sex-{split}"][1][1:] == [str(c) for c in report.cells(list(sexes.values()))]
    hours = {row[0]: row[1] for row in page.tables["hours"][1:]}
    assert list(hours) == list(stats["hours_from_arrival"]) and sum(stats["hours_from_arrival"].values()) == \
        counts["matched"]
    assert list(hours.values()) == [str(c) for c in report.cells(list(stats["hours_from_arrival"].values()))]
    text = {row[0]: row[1] for row in page.tables["text"][1:]}
    assert text["notes redacted by the leakage filter"] == shown(counts["notes"]["redacted"])
    passages = page.tables["passages"][1:]
    assert passages and all(row[1] for row in passages[:-1])  # ids with their titles
    assert passages[0][2] == shown(max(stats["rag"]["passages"].values()))
    rest = list(stats["rag"]["passages"].values())[15:]  # the sample retrieved more than 15 passages
    assert rest and passages[-1] == ["other passages", "", shown(sum(rest))]
    inputs = {row[0]: row[3] for row in page.tables["inputs"][1:]}
    assert inputs == {k: v["sha256"] for k, v in metadata["inputs"].items()}
    rules = metadata["text"]["leakage_rules"]["rules"]  # the card names the rules; their patterns stay in the json
    assert all(html.escape(json.dumps(r["id"])) in index.read_text() for r in rules)
    assert not any(html.escape(json.dumps(r["patterns"][0])) in index.read_text() for r in rules)


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
    _, metadata, index, page, _ = reported
    probe = metadata["leakage_probe"]
    assert probe["inputs"] == ["filtered_note", "filtered_note_without_marker", "unfiltered_note", "structured"]
    header, *rows = page.tables["probe"]
    assert header == ["label", "filtered note", "filtered note, marker deleted", "unfiltered note",
                      "structured features", ""]  # no per-label counts (test_the_probe_shows_no_count...)
    assert [row[0] for row in rows] == list(mimic.LABELS)
    fitted = 0
    for row in rows:
        entry = probe["labels"][row[0]]
        if "skipped" in entry:
            assert row[1:5] == ["–"] * 4 and row[5].startswith("skipped")
        else:
            fitted += 1
            assert row[1:] == [f"{entry[name]:.3f}" for name in probe["inputs"]] + [""]
            assert all(0.0 <= entry[name] <= 1.0 for name in probe["inputs"])
    assert probe["n_train"] > 0 and fitted == sum("skipped" not in e for e in probe["labels"].values())
    # the subsample's sizes: its splits' images (the whole split here), so a hidden split's mark
    splits = {row[0]: row[1] for row in page.tables["splits"][1:]}
    assert probe["n_train"] == metadata["counts"]["per_split"]["train"] and \
        probe["n_val"] == metadata["counts"]["per_split"]["val"]
    assert f"holds {splits['train']} train and {splits['val']} val records, labelled or not" in \
        html.unescape(re.search(r'<section id="leakage">.*?</p>', index.read_text()).group(0))


def probe_page(entries: dict[str, dict], n_val: int) -> str:
    """probe_part of a made-up probe: ``entries`` (label -> metadata.json's counts) with the same AUROCs, the other
    labels fitted on ``n_val`` val records of which 50 positive."""
    inputs = ["filtered_note", "filtered_note_without_marker", "unfiltered_note", "structured"]
    method = {"classifier": "logistic regression", "text_features": "hashed terms", "subsample": "the smallest",
              "how_to_read": "near structured: little"}
    plain = {"n_train": 800, "n_val": n_val, "positives_train": 100, "positives_val": 50}
    labels = {name: {**plain, **entries.get(name, {})} for name in mimic.LABELS}
    labels = {name: entry if "skipped" in entry else {**entry, **dict.fromkeys(inputs, 0.6)}
              for name, entry in labels.items()}
    return report.probe_part({"inputs": inputs, "method": method, "n_train": 800, "n_val": n_val, "min_class": 5,
                              "labels": labels}, {})


def test_the_probe_shows_no_count_the_label_table_hides():
    """The review's cases. Val states 30 positive, 4 uncertain, 200 negative, 300 blank: the label table hides the
    30 beside the 4. The probe's val subsample is the whole val split (up to 5,000), and its per-label counts gave
    them back: 30 val positives (--uncertain_policy zeros), 34 = 30 + 4 (ones), 530 val records where a label
    without uncertain values has 534 (ignore: the 4 have no target); and 7 val negatives as 120 records less 113
    positives, 3 as 120 less 117 in a skipped label. The probe table shows AUROCs only."""
    states = {"positive": 30, "uncertain": 4, "negative": 200, "blank": 300}
    stats = {"per_split": {"val": {"labels": {name: dict(states) for name in mimic.LABELS}}}}
    row = report.label_rows(stats, "val")[0]
    assert row[1:4] == ["suppressed", "suppressed", "<11"]  # the positives and the uncertain rate
    first, second = mimic.LABELS[:2]
    cases = {"zeros": ({first: {"positives_val": 30, "n_val": 534}}, 534),
             "ones": ({first: {"positives_val": 34, "n_val": 534}}, 534),
             "ignore": ({first: {"positives_val": 30, "n_val": 530}}, 534),
             "few negatives": ({first: {"positives_val": 113, "n_val": 120},
                                second: {"positives_val": 117, "n_val": 120, "skipped": "3 negatives in val"}}, 120)}
    for case, (entries, n_val) in cases.items():
        text = probe_page(entries, n_val)
        header, *rows = Page(text).tables["probe"]
        assert len(header) == 6 and [r[0] for r in rows] == list(mimic.LABELS), case
        cells = [cell for r in rows for cell in r[1:]]
        assert all(re.fullmatch(r"0\.600|–|(skipped: .*)?", cell) for cell in cells), (case, cells)
        assert f"holds 800 train and {n_val} val records" in text  # the split table's count


def sums(page, metadata: dict) -> dict[str, list[str]]:
    """Every row of counts on the ED card that adds up to a total the page shows, as shown: the total first."""
    counts, top_k = metadata["counts"], metadata["config"]["rag_top_k"]
    funnel = dict(page.tables["funnel"][1:])
    kept = f"kept views ({','.join(metadata['config']['views'])})"
    splits = {row[0]: row[1] for row in page.tables["splits"][1:]}  # images
    views = {row[0]: row[1:] for row in page.tables["views"][1:]}
    found = {"images in metadata": [funnel[k] for k in ("images in metadata", "unreadable rows", "other views", kept)],
             "kept views": [funnel[k] for k in (kept, "no ED stay in window", "written (matched)", "rejected",
                                                "after ED departure, dropped (--within_ed_stay)")],
             "rejected": [funnel[k] for k in funnel if k.startswith("rejected")],
             "images per split": [shown(counts["matched"]), *(splits[s] for s in mimic.SPLITS)],  # the header's
             "scores": [shown(counts["matched"] * top_k), *(row[1] for row in page.tables["scores"][1:])],
             # the top sizes and passages and their rest ("other ...", when there is one)
             "sizes": [shown(counts["matched"]), *(row[1] for row in page.tables["sizes"][1:])],
             "passages": [shown(counts["matched"] * top_k), *(row[2] for row in page.tables["passages"][1:])]}
    for split in mimic.SPLITS:
        found.update({f"{name}-{split}": [splits[split], *page.tables[f"{name}-{split}"][1][1:]]
                      for name in ("age", "sex")})
        found[f"views-{split}"] = [splits[split], *views[split]]
    return found


@pytest.fixture(scope="module")
def subtracted(reported, tmp_path_factory):
    """The sample run with the review's demo case (3 unreadable rows, which were the images in metadata less the
    other and the kept views, and 4 X-rays dropped after ED departure), a lone small retrieval score bin (the
    bins add up to the written records x top k), and the review's lone small source size (3 of the written images,
    the rest of one size), passage (3 retrievals, the rest of one passage), labelled count (4 written images, the
    others without labels) and X-rays before ED departure (2): its run folder, metadata and card, and the figures
    drawn for it."""
    def edit(metadata, manifest):
        counts, stats = metadata["counts"], metadata["stats"]
        scores, matched = stats["rag"]["scores"], counts["matched"]
        counts.update(images_unreadable=3, dropped_after_ed_departure=4, images_kept_view=counts["images_kept_view"]
                      + 4, images_total=counts["images_total"] + 7)
        small = [k for k, n in scores.items() if 1 <= n <= 10]  # the sample's 2, 7 and 3 become 5, 0 and 0
        scores[max(scores, key=scores.get)] += sum(scores[k] for k in small) - 5
        scores.update(dict.fromkeys(small, 0) | {small[0]: 5})
        stats["image_sizes"] = {"3056x2544": matched - 3, "2544x3056": 3}
        first, second = list(stats["rag"]["passages"])[:2]
        stats["rag"]["passages"] = {first: sum(scores.values()) - 3, second: 3}
        counts["labels"] = {"labeled": 4, "all_blank": matched - 10, "no_label_row": 6}
        counts["after_ed_departure"] = matched - 2

    base = tmp_path_factory.mktemp("report-subtracted")
    run = edited_run(reported[0], base / "run", edit)
    with pytest.MonkeyPatch.context() as monkeypatch:
        drawn = drawn_figures(monkeypatch)
        _, page = card(run, target=str(base / "card"))
    return run, report.open_run(str(run))[1], page, drawn


def test_no_hidden_count_follows_by_subtraction_from_a_shown_total(reported, subtracted):
    """The funnel rows, the images per split (the header shows their total), the score bins, the source sizes and
    passages and each split's age, sex and view counts: in the sample (its 8 val images were the 117 written less
    96 train and 13 test; its 6 rejected images the 152 kept views less 29 without an ED stay and 117 written) and
    in the review's funnel, no row that adds up to a shown total has exactly one hidden cell. Nor does a count of
    the written images give back a small rest: 4 labelled were the written less those without labels, 2 before ED
    departure the written less those after."""
    for metadata, page in ((reported[1], reported[3]), subtracted[1:3]):
        relations = sums(page, metadata)
        assert not {name: cells for name, cells in relations.items() if follows(*cells)}
        assert any(cell in HIDDEN for cells in relations.values() for cell in cells)
    _, metadata, page, _ = subtracted
    funnel = dict(page.tables["funnel"][1:])
    assert funnel["unreadable rows"] == funnel["after ED departure, dropped (--within_ed_stay)"] == "<11"
    assert [row[1] for row in page.tables["scores"][1:]].count("<11") == 1
    assert page.tables["sizes"][1:] == [["3056x2544", "suppressed"], ["2544x3056", "<11"]]
    assert [row[2] for row in page.tables["passages"][1:]] == ["suppressed", "<11"]
    assert funnel["written: without labels"] == funnel["written: after ED departure"] == report_cards.ALL_BUT
    # beyond the table's rows, the rest is one more cell; the figure draws what the table shows, of its first rows
    sizes = {f"{n}x1": n for n in (300, 200, *range(100, 87, -1))} | {"1x1": 5}
    assert report.top_cells(sizes, "other")[1] == {**{k: n for k, n in sizes.items() if n > 88},
                                                   "88x1": "suppressed", "other": "<11"}
    assert report.top_figure({"a": 113, "b": 3}, "other") == {"a (suppressed)": 0, "b": 3}


def test_figures_hide_what_the_tables_hide(subtracted):
    """The funnel figure draws no cell the funnel table hides, and its "linked to an ED stay" step (kept views less
    no ED stay and the join rejects) does not show one either; a split whose images the split table hides is not
    drawn among the labels, nor is its count in the title."""
    _, metadata, page, drawn = subtracted
    funnel = dict(page.tables["funnel"][1:])
    steps, reasons = next(axes for axes in drawn if axes[0]["title"] == "Stage funnel (images)")
    for name, length in {**steps["bars"], **{f"rejected: {k}": n for k, n in reasons["bars"].items()}}.items():
        assert funnel.get(name, "") not in HIDDEN or length == 0, name
    linked = dict(zip(steps["bars"], steps["texts"]))["linked to an ED stay"]
    kept = f"kept views ({','.join(metadata['config']['views'])})"
    assert not follows(funnel[kept], linked, funnel["no ED stay in window"],
                       *(cell for name, cell in funnel.items() if name.startswith("rejected: join/")))
    splits = {row[0]: row[1] for row in page.tables["splits"][1:]}
    labels = next(axes for axes in drawn if len(axes) == 3 and axes[0]["title"].startswith("train ("))
    for split, axis in zip(mimic.SPLITS, labels):
        if splits[split] in HIDDEN:
            assert axis["title"].startswith(f"{split} ({splits[split]} images") and axis["total"] == 0
        else:
            assert axis["title"].startswith(f"{split} ({splits[split]} images") and axis["total"] > 0


def test_the_labels_figure_says_an_empty_split_has_no_images(monkeypatch):
    """A split with no images (--split_fractions=0.9,0.1,0, a small subset) is "0 images" in the labels figure's
    title, as in the split table: it said "<11", as the title counted at least one."""
    drawn = drawn_figures(monkeypatch)
    empty = {"positive": 0, "uncertain": 0, "negative": 0, "blank": 0}
    stats = {"per_split": {s: {"labels": {name: dict(empty) for name in mimic.LABELS}} for s in mimic.SPLITS}}
    stats["per_split"]["train"]["labels"] = {name: {**empty, "positive": 20, "negative": 30, "blank": 50}
                                             for name in mimic.LABELS}
    report.labels_figure(stats, {})
    titles = [axis["title"] for axis in drawn[0]]
    assert [t.split(";")[0] for t in titles] == ["train (100 images", "val (0 images", "test (0 images"]


def test_a_hidden_split_hides_its_studies_and_patients():
    """20, 25 and 5 images: the 5 hides the 20 train images beside it. The 19 train patients (and 20 studies)
    bound them from below, yet the patients' own column hid the 15 val ones beside its 4 test ones, and showed them.
    A split's every count is hidden with its images, and each column still has no lone hidden cell."""
    metadata = {"counts": {"per_split": {"train": 20, "val": 25, "test": 5},
                           "patients_per_split": {"train": 19, "val": 15, "test": 4}}}
    rows = report_cards.split_rows(metadata, "images", {"studies": {"train": 20, "val": 25, "test": 5}})
    assert rows == [["train", "suppressed", "suppressed", "suppressed"], ["val", 25, 25, 15],
                    ["test", "<11", "<11", "<11"], ["total", 50, 50, 38]]


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
              "rejected_by_reason": {"join/stay_row_rejected": 4, "join/conflicting_edstays": 2,
                                     "images/corrupt_image": 5}}
    assert report.linked_images(counts) == 64  # the image-stage reject was linked first


@pytest.mark.parametrize("module", ["report", "show"])
def test_cli_on_a_folder_without_a_complete_run_says_so(module, tmp_path):
    """A run folder with shards but no metadata.json (a job still running or stopped): a one-line error, no
    traceback."""
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
        server.server_close()
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


def test_all_but_a_few_is_said_of_a_count_above_zero_only():
    """None of a small total is 0 (the total already shows "<11"), not "all but <11"; 497 of 500 is."""
    assert report_cards.of_total(0, 5)[0] == report_cards.Count(0)
    assert report_cards.of_total(497, 500) == [report_cards.ALL_BUT, report_cards.ALL_BUT]
    assert report_cards.share_bars({"none": 0, "most": 497, "half": 250}, 500) == {
        "none": 0, f"most ({report_cards.ALL_BUT})": 0, "half": 250}
