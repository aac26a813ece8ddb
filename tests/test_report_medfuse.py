"""The medfuse_ihm / medfuse_phenotyping data card: report.build dispatches on config["cohort"]; the funnel, splits
and pairing, channel coverage, label prevalence, LOS and normaliser match metadata.json and the manifest under the
small-cell rules (and their complementary suppression); aggregate only by default, a record's hourly heatmap and
X-ray only with samples."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from beam_pipeline import mimic, report, report_cards, report_medfuse, sample
from beam_pipeline.cohorts import medfuse_stays
from beam_pipeline.fileio.tfrecord import parse_example, read_records
from beam_pipeline.readers.common import open_run, shard_files
from beam_pipeline.run import run
from card_checks import (HIDDEN, card, card_with_samples, check_unit_funnel, edited_run, hidden_ok, manifest_rows,
                         shown)
from conftest import ONE_WORKER

TASKS = ("ihm", "phenotyping")
SECTIONS = ["task", "funnel", "splits", "channels", "labels", "los", "normalizer", "samples", "provenance"]
NOT_COUNTS = {"task", "config", "versions", "inputs", "image", "normalizer"}  # flags, versions, rules, values


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """The sample tree with its ICU tables (sample_icu: icustays, chartevents, diagnoses_icd)."""
    roots = sample.generate(tmp_path_factory.mktemp("report-medfuse") / "sample", subjects=200, seed=3)
    assert (Path(roots.iv) / "icu" / "icustays.csv.gz").exists()
    return roots


@pytest.fixture(scope="module")
def runs(tree, tmp_path_factory):
    """Each task run in process with images, and its default card: task -> (output, metadata, manifest, index,
    page)."""
    found = {}
    for task in TASKS:
        output = tmp_path_factory.mktemp(f"report-medfuse-{task}") / "out"
        metadata = run([f"--cohort=medfuse_{task}", f"--mimic_cxr_root={tree.cxr}", f"--mimic_iv_root={tree.iv}",
                        f"--output={output}", "--image_size=64", ONE_WORKER])
        # what run.main does after every run: aggregate only
        found[task] = output, metadata, manifest_rows(output), *card(output)
    return found


@pytest.fixture(scope="module")
def with_samples(runs):
    return card_with_samples(runs["ihm"][0])


def test_cards_are_registered():
    assert report.CARDS["medfuse_ihm"] == report.CARDS["medfuse_phenotyping"] == "beam_pipeline.report_medfuse"


@pytest.mark.parametrize("task", TASKS)
def test_card_and_task_line(runs, task):
    _, metadata, manifest, index, page = runs[task]
    text = index.read_text()
    assert metadata["config"]["cohort"] == f"medfuse_{task}" and metadata["counts"]["matched"] == len(manifest) > 10
    assert page.sections == SECTIONS and metadata["dataset"] in text
    rows = dict(page.tables["task"][1:])
    assert rows["cohort"] == f"medfuse_{task}" and rows["task"].startswith(f"{task}: ")
    assert rows["X-ray window"] == metadata["window"]["cxr"]["rule"]
    assert all((index.parent / src).stat().st_size > 5_000 for src in page.images)
    assert set(page.images) == {"funnel.png", "channels.png", "labels.png", "los.png"}


@pytest.mark.parametrize("task", TASKS)
def test_funnel_steps_and_reasons_match_metadata(runs, task):
    _, metadata, _, _, page = runs[task]
    counts = metadata["counts"]
    names = check_unit_funnel(page, metadata, {r: n for r, n in counts["dropped"].items()
                                               if task == "ihm" or r != "los_under_48h" or n})
    assert page.tables["funnel"][1] == ["ICU stays", shown(counts["stays"])]  # the inputs' rows show it
    first = names.index("one care unit, one per admission, adult")
    assert all(names.index(f"− dropped: {r}") < first for r in medfuse_stays.STAY_DROPS)
    if task == "ihm":
        assert first < names.index("− dropped: los_under_48h") < names.index("long enough for the task")
    assert names.index("long enough for the task") < names.index("− dropped: no_events") < \
        names.index("with events")
    assert all(names.index("with events") < names.index(f"− rejected: {r}") < names.index("written")
               for r in counts["rejected_by_reason"])


def test_the_sample_has_something_to_hide(runs):
    """The sample holds small drops and small cells beside a single other one, so the rules are at work (the
    channel and label rules: test_rows_of_a_made_up_run)."""
    for task in TASKS:
        assert "<11" in [row[1] for row in runs[task][4].tables["funnel"]]
    cells = [cell for task in TASKS for rows in runs[task][4].tables.values() for row in rows for cell in row]
    assert "suppressed" in cells


def test_rows_of_a_made_up_run():
    """Channel, label and normaliser rows: small counts, shares whose complement is small, never-observed
    channels (and those MIMIC-IV has no item for), a mean over a few stays."""
    channels = ["Capillary refill rate", "Glucose", "Heart Rate", "Height", "pH"]
    coverage = {"Capillary refill rate": (0, 0), "Glucose": (4, 9), "Heart Rate": (50, 900), "Height": (45, 45),
                "pH": (0, 0)}
    metadata = {"counts": {"matched": 50, "channel_coverage": {c: {"stays": n, "bins": b}
                                                               for c, (n, b) in coverage.items()},
                           "label_prevalence": {"a": 0, "b": 3, "c": 20, "d": 42}},
                "channel_order": channels, "never_observed_channels": ["Capillary refill rate", "pH"],
                "never_in_mimic_iv": ["Capillary refill rate"], "label_names": ["a", "b", "c", "d"],
                "normalizer": {"columns": ["Glucose", "Heart Rate", "pH"], "means": [120.5, 80.25, 7.4],
                               "stds": [10.0, 12.0, 1e-7]}}
    all_but = report_cards.ALL_BUT
    assert report_medfuse.channel_rows(metadata) == [
        ["Capillary refill rate", 0, 0.0, 0, "never observed: no MIMIC-IV item"],
        ["Glucose", "<11", "<11", "suppressed", ""], ["Heart Rate", 50, 1.0, 900, ""],
        ["Height", all_but, all_but, 45, ""], ["pH", 0, 0.0, 0, "never observed"]]
    assert report_medfuse.label_rows(metadata) == [["a", 0, 0.0], ["b", "<11", "<11"], ["c", 20, 0.4],
                                                   ["d", all_but, all_but]]
    train = {"Glucose": 4, "Heart Rate": 11, "pH": 0}

    def normalizer_rows(observed):
        return report_medfuse.normalizer_rows({**metadata, "normalizer": {**metadata["normalizer"],
                                                                          "train_stays_observed": observed}})

    assert normalizer_rows(train) == [["Glucose", "<11 train stays", "<11 train stays"], ["Heart Rate", "80.25", "12"],
                                      ["pH", "7.4", "1e-07 (not observed in train: imputed)"]]
    # 50 written stays with Heart Rate, but the mean and sd are of the train split's: hidden over 10 of them
    assert normalizer_rows({**train, "Heart Rate": 10})[1] == ["Heart Rate", "<11 train stays", "<11 train stays"]
    # pH in no written stay, but in a train stay of the fit rejected at images/: its values, not an imputed one
    assert normalizer_rows({**train, "pH": 1})[2] == ["pH", "<11 train stays", "<11 train stays"]
    assert normalizer_rows(None)[1] == ["Heart Rate", "<11 train stays", "<11 train stays"]  # an older run's
    assert "No normaliser" in report_medfuse.normalizer_part({**metadata, "normalizer": None}, [])


@pytest.mark.parametrize("task", TASKS)
def test_splits_and_pairing(runs, task):
    _, metadata, manifest, _, page = runs[task]
    counts = metadata["counts"]
    rows = {row[0]: row[1:] for row in page.tables["splits"][1:]}
    assert list(rows) == [*mimic.SPLITS, "total"]
    for split in mimic.SPLITS:
        stays, patients, paired, unpaired = rows[split]
        records = [r for r in manifest if r["split"] == split]
        n_paired = sum(r["has_cxr"] == "1" for r in records)
        assert hidden_ok(stays, len(records)) and len(records) == counts["per_split"][split]
        assert counts["patients_per_split"][split] == len({r["subject_id"] for r in records})
        assert hidden_ok(patients, counts["patients_per_split"][split])
        assert stays not in HIDDEN or patients in HIDDEN  # no more patients than stays: they would bound them
        assert hidden_ok(paired, n_paired) and hidden_ok(unpaired, len(records) - n_paired)
        assert sum(cell in HIDDEN for cell in (stays, paired, unpaired)) != 1
    assert rows["total"][0] == shown(counts["matched"])
    assert hidden_ok(rows["total"][2], counts["paired"]) and counts["paired"] == sum(r["has_cxr"] == "1"
                                                                                     for r in manifest)
    for column in (0, 2, 3):  # a column and its total
        assert sum(rows[s][column] in HIDDEN for s in (*mimic.SPLITS, "total")) != 1
    # which list decided each written stay's split: a source x split table that adds up to the split table
    test_flags, val_flags = medfuse_stays.load_split_files()
    expected = {}
    for r in manifest:
        split, source = medfuse_stays.subject_split(int(r["subject_id"]), test_flags, val_flags,
                                                    metadata["split"]["salt"])
        assert split == r["split"]
        expected[source, split] = expected.get((source, split), 0) + 1
    sources = {row[0]: row[1:] for row in page.tables["split-sources"][1:]}
    assert list(sources) == ["testset_iv", "valset_iv", medfuse_stays.HASH_FALLBACK, "written"]
    assert sources["written"] == [rows[s][0] for s in (*mimic.SPLITS, "total")]
    for source, cells in list(sources.items())[:-1]:
        per_split = [expected.get((source, s), 0) for s in mimic.SPLITS]
        assert all(hidden_ok(cell, n) for cell, n in zip(cells, [*per_split, sum(per_split)])), (source, cells)
        assert sum(cell in HIDDEN for cell in cells) != 1
    for i in range(4):  # a split's column: its stays and the sources
        assert sum(cells[i] in HIDDEN for cells in sources.values()) != 1
    assert sum(metadata["counts"]["split_sources"].values()) >= counts["matched"]  # counted before image rejects


@pytest.mark.parametrize("task", TASKS)
def test_channel_coverage(runs, task):
    _, metadata, _, _, page = runs[task]
    coverage, matched = metadata["counts"]["channel_coverage"], metadata["counts"]["matched"]
    rows = page.tables["channels"][1:]
    assert len(rows) == 17 and [row[0] for row in rows] == metadata["channel_order"]
    for channel, stays, share, bins, note in rows:
        n = coverage[channel]["stays"]
        if 1 <= n <= 10:
            assert stays == share == "<11" and bins == "suppressed"
        elif 1 <= matched - n <= 10:
            assert stays == share == report_cards.ALL_BUT and bins == shown(coverage[channel]["bins"])
        else:
            assert stays == shown(n) and share == f"{n / matched:.1%}" and bins == shown(coverage[channel]["bins"])
        assert bool(note) == (channel in metadata["never_observed_channels"]) == (n == 0)
        assert ("no MIMIC-IV item" in note) == (channel in metadata["never_in_mimic_iv"])
    assert {"Capillary refill rate", "Glascow coma scale total"} <= set(metadata["never_observed_channels"])


@pytest.mark.parametrize("task", TASKS)
def test_label_prevalence_los_and_normalizer(runs, task):
    _, metadata, manifest, _, page = runs[task]
    prevalence, matched = metadata["counts"]["label_prevalence"], metadata["counts"]["matched"]
    labels = page.tables["labels"][1:]
    assert len(labels) == (1 if task == "ihm" else 25) and [row[0] for row in labels] == metadata["label_names"]
    for name, positives, share in labels:
        n = prevalence[name]
        assert (positives, share) == (("<11", "<11") if 1 <= n <= 10 else
                                      (report_cards.ALL_BUT,) * 2 if 1 <= matched - n <= 10 else
                                      (shown(n), f"{n / matched:.1%}")), name
        assert n == sum(r[name] == "1" for r in manifest)
    los = dict(page.tables["los"][1:])
    assert los.pop("total") == shown(matched) and list(los) == [name for _, _, name in report_medfuse.LOS_BINS]
    hours = [float(r["los_hours"]) for r in manifest]
    for low, high, name in report_medfuse.LOS_BINS:
        assert hidden_ok(los[name], sum(low <= h < high for h in hours)), name
    assert sum(cell in HIDDEN for cell in los.values()) != 1
    if task == "ihm":
        assert min(hours) >= 48 and los["< 1 d"] == los["1–2 d"] == "0"
    normalizer = metadata["normalizer"]
    assert normalizer, "the sample's train split has hours to fit on"
    rows = page.tables["normalizer"][1:]
    assert [row[0] for row in rows] == normalizer["columns"]
    train = normalizer["train_stays_observed"]
    for (column, mean, sd), value in zip(rows, normalizer["means"]):
        if 0 < train[column] <= 10:
            assert mean == sd == "<11 train stays", column
        else:
            assert float(mean.replace(",", "")) == pytest.approx(value, rel=1e-3)


def test_the_normaliser_hours_are_hidden_with_the_train_stays(runs, tmp_path):
    """IHM series are 48 hourly bins, so the normaliser's train hours are 48 x the train stays: with 6 of the
    sample's train stays moved to test the split table hides the train stays, and the hours must not give them back
    (and say "<11" as HTML text, escaped)."""
    def edit(metadata, manifest):
        for row in [row for row in manifest if row["split"] == "train"][:6]:
            row["split"] = "test"
        for key, column in (("per_split", "stay_id"), ("patients_per_split", "subject_id")):
            metadata["counts"][key] = {s: len({r[column] for r in manifest if r["split"] == s}) for s in mimic.SPLITS}

    run = edited_run(runs["ihm"][0], tmp_path / "run", edit)
    index, page = card(run, target=str(tmp_path / "card"))
    splits = {row[0]: row[1] for row in page.tables["splits"][1:]}
    assert splits["train"] in HIDDEN
    hours = runs["ihm"][1]["normalizer"]["rows"]
    normalizer = re.search(r'<section id="normalizer">.*?</p>', index.read_text()).group(0)
    assert f"; {html.escape(splits['train'])} hours," in normalizer and f"{hours:,}" not in normalizer


def train_stays(output) -> dict[str, int]:
    """Per channel, the train stays with it observed, counted in every train record."""
    folder, metadata = open_run(str(output))
    found = dict.fromkeys(metadata["channel_order"], 0)
    for path in shard_files(folder, "train", metadata):
        for raw in read_records(path):
            _, mask = report_medfuse.series(parse_example(raw))
            for channel, observed in zip(metadata["channel_order"], mask.any(axis=0)):
                found[channel] += int(observed)
    return found


@pytest.mark.parametrize("task", TASKS)
def test_the_normaliser_mean_is_shown_over_more_than_10_train_stays(runs, task):
    """The mean and sd are of the train stays of the fit: the sample's FiO2, seen in 12 written IHM stays of which 6
    in train, showed its train mean and sd, as metadata.json counted stays of every split. The fit also holds the
    train stays rejected at images/, which the written train records do not count."""
    output, metadata, _, _, page = runs[task]
    coverage, written = metadata["counts"]["channel_coverage"], train_stays(output)
    fitted = metadata["normalizer"]["train_stays_observed"]
    assert [c for c in coverage if coverage[c]["stays"] > 10 and fitted[c] <= 10]  # the case at hand
    assert {c: coverage[c]["train_stays"] for c in coverage} == written
    assert all(fitted[c] >= written[c] for c in coverage)
    rows = {row[0]: row[1:] for row in page.tables["normalizer"][1:]}
    for column, cells in rows.items():
        assert (cells == ["<11 train stays"] * 2) == (0 < fitted[column] <= 10), column


@pytest.mark.parametrize("task", TASKS)
def test_default_card_is_aggregate_only(runs, task):
    _, metadata, manifest, index, page = runs[task]
    text = index.read_text()
    assert report.PHI_BANNER not in text and 'id="aggregate"' in text and "--samples N" in text
    assert not [src for src in page.images if src.startswith("sample")]
    record_ids = {r[column] for r in manifest for column in ("stay_id", "hadm_id", "cxr_dicom_id", "subject_id")}
    assert not [value for value in record_ids - {""} if value in text]
    small = [(name, row) for name, rows in page.tables.items() if name not in NOT_COUNTS
             for row in rows[1:] for cell in row[1:] if re.fullmatch(r"\d+", cell) and 1 <= int(cell) <= 10]
    assert not small, small  # not one count from 1 to 10 anywhere on the page


def test_samples_add_a_heatmap_and_thumbnail_under_the_banner(runs, with_samples):
    _, metadata, manifest, _, _ = runs["ihm"]
    index, page = with_samples
    text = index.read_text()
    assert text.index(report.PHI_BANNER) < text.index("<h1>") and "do not share" in text.split("</title>")[0]
    assert "sample-00-series.png" in page.images and (index.parent / "sample-00-series.png").stat().st_size > 10_000
    shown_ids = re.findall(r'alt="sample X-ray ([0-9a-f-]+)"', text)
    if metadata["counts"]["paired"]:  # paired records are picked first
        assert len(shown_ids) == 1 and "sample-00.png" in page.images
        assert shown_ids[0] in {r["cxr_dicom_id"] for r in manifest if r["has_cxr"] == "1"}
    assert "data use agreement" in text and len(re.findall('class="series-card"', text)) == 1


def test_a_split_whose_stays_are_hidden_hides_its_patients():
    """The review's case: 500, 40 and 8 stays, one a patient. The 8 hid the 40 val stays beside them, yet the val
    patients showed 40: no more patients than stays, so the hidden count was at least 40, here exactly."""
    test_flags, val_flags = medfuse_stays.load_split_files()
    wanted, manifest, subject = {"train": 500, "val": 40, "test": 8}, [], 10_000_000
    while len(manifest) < sum(wanted.values()):
        split, _ = medfuse_stays.subject_split(subject, test_flags, val_flags, "s")
        if sum(r["split"] == split for r in manifest) < wanted[split]:
            manifest.append({"subject_id": str(subject), "split": split, "has_cxr": "0"})
        subject += 1
    metadata = {"counts": {"per_split": wanted, "patients_per_split": dict(wanted)}, "split": {"salt": "s"},
                "config": {"split_salt": "s"}}
    rows = report_medfuse.split_rows(metadata, manifest)
    assert [row[:3] for row in rows] == [["train", 500, 500], ["val", "suppressed", "suppressed"],
                                         ["test", "<11", "<11"], ["total", 548, ""]]


def test_protect_hides_a_second_cell_beside_a_lone_small_one():
    values = {"total": 40, "a": 3, "b": 25, "c": 12, "d": 0}
    shown_cells = report_cards.protect(values, [["total", "a", "b", "c", "d"]], fixed=["total"])
    assert shown_cells == {"total": 40, "a": "<11", "b": 25, "c": "suppressed", "d": 0}
    # a chain: the lone small removal hides the earlier step, whose own relation then hides the top
    steps = {"top": 50, "-x": 0, "mid": 50, "-y": 4, "end": 46}
    order = {"top": 0, "mid": 1, "end": 2}
    cells = report_cards.protect(steps, [["top", "mid", "-x"], ["mid", "end", "-y"]], fixed=["end"],
                                 rank=lambda k: (1, order[k]) if k in order else (0, steps[k]))
    assert cells == {"top": "suppressed", "-x": 0, "mid": "suppressed", "-y": "<11", "end": 46}
    # a follower is hidden with its leader at once: its own relation then already holds two hidden cells
    counts = {"a": 20, "b": 25, "c": 5, "total": 50, "pa": 19, "pb": 15, "pc": 4, "ptotal": 38}
    cells = report_cards.protect(counts, [["total", "a", "b", "c"], ["ptotal", "pa", "pb", "pc"]], fixed=["total"],
                                 follow={"pa": "a", "pb": "b", "pc": "c"})
    assert cells == {"a": "suppressed", "b": 25, "c": "<11", "total": 50, "pa": "suppressed", "pb": 15, "pc": "<11",
                     "ptotal": 38}
