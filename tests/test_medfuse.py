"""--cohort=medfuse_ihm / medfuse_phenotyping end to end on the generated sample tree: the README's command, the
stays, labels, series, pairing and listfiles against a brute-force reading of cohort-definitions.md §B over the raw
files, the train-only normaliser, the planted cases, byte-identical reruns."""

from __future__ import annotations

import csv
import datetime as dt
import filecmp
import io
import json
import math
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from beam_pipeline import mimic, sample, show
from beam_pipeline.cohorts import medfuse_stays
from beam_pipeline.cohorts.medfuse_events import ITEM_LABELS, ITEM_VARIABLES, clean_value
from beam_pipeline.readers.common import UnsupportedCohort
from beam_pipeline.run import parse, run
from beam_pipeline.transforms import hourly
from cohort_files import examples, manifest, read_csv
from conftest import ONE_WORKER, published

HOUR = dt.timedelta(hours=1)
TASKS = ("ihm", "phenotyping")


def medfuse_argv(task: str, roots: sample.SampleRoots, output: Path, *flags: str) -> list[str]:
    return [f"--cohort=medfuse_{task}", f"--mimic_cxr_root={roots.cxr}", f"--mimic_iv_root={roots.iv}",
            f"--output={output}", "--image_size=64", *flags]


@pytest.fixture(scope="session")
def medfuse_tree(tmp_path_factory):
    return sample.generate(tmp_path_factory.mktemp("medfuse") / "sample", subjects=200, seed=3)


@pytest.fixture(scope="session")
def medfuse_runs(medfuse_tree, tmp_path_factory):
    """Each task by the README's command in a fresh interpreter (every core), with the benchmark files and the
    normalised copy: task -> (run folder, metadata, stdout)."""
    runs = {}
    for task in TASKS:
        output = tmp_path_factory.mktemp(f"medfuse-{task}") / "out"
        done = subprocess.run([sys.executable, "-m", "beam_pipeline.run",
                               *medfuse_argv(task, medfuse_tree, output, "--benchmark_files",
                                             "--normalize_timeseries")],
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-4000:]
        folder = published(output)
        runs[task] = folder, json.loads((folder / "metadata.json").read_text()), done.stdout
    return runs


def _time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S")


def _float(text: str) -> float | None:
    return float(text) if text != "" else None


def brute_force(task: str, roots: sample.SampleRoots) -> dict[int, dict]:
    """§B read literally over the raw files: stay_id -> what the record must hold (or the drop reason)."""
    iv, cxr = Path(roots.iv), Path(roots.cxr)
    stays = read_csv(iv / "icu" / "icustays.csv.gz")
    admissions = {int(r["hadm_id"]): r for r in read_csv(iv / "hosp" / "admissions.csv.gz")}
    patients = {int(r["subject_id"]): r for r in read_csv(iv / "hosp" / "patients.csv.gz")}
    codes = defaultdict(set)
    for r in read_csv(iv / "hosp" / "diagnoses_icd.csv.gz"):
        codes[int(r["hadm_id"])].add(r["icd_code"].replace(".", ""))
    groups = defaultdict(set)
    for r in read_csv(Path(medfuse_stays.__file__).parent.parent / "resources" / "medfuse_splits" /
                  "phenotype_codes.csv"):
        groups[r["phenotype"]].add(r["code"])
    images, unknown_time = defaultdict(list), set()
    for r in read_csv(cxr / "mimic-cxr-2.0.0-metadata.csv.gz"):
        if r["ViewPosition"] == "AP":
            try:
                images[int(r["subject_id"])].append((mimic.parse_study_datetime(r["StudyDate"], r["StudyTime"]),
                                                     r["dicom_id"]))
            except ValueError:  # it may be any stay's latest AP image: the subject's stays are not paired
                unknown_time.add(int(r["subject_id"]))
    events = defaultdict(list)
    for name in ("icu/chartevents.csv.gz", "hosp/labevents.csv.gz"):
        for r in read_csv(iv / name):
            if int(r["itemid"]) in ITEM_VARIABLES:
                events[int(r["subject_id"])].append(r)

    single_unit = [s for s in stays if s["first_careunit"] == s["last_careunit"]
                   and int(s["hadm_id"]) in admissions and int(s["subject_id"]) in patients]
    per_admission = Counter(s["hadm_id"] for s in single_unit)
    out = {}
    for s in stays:
        stay_id, subject, hadm = int(s["stay_id"]), int(s["subject_id"]), int(s["hadm_id"])
        intime, outtime = _time(s["intime"]), _time(s["outtime"])
        los = (outtime - intime) / HOUR
        if s["first_careunit"] != s["last_careunit"]:
            out[stay_id] = {"drop": "unit_transfer"}
            continue
        if per_admission[s["hadm_id"]] > 1:
            out[stay_id] = {"drop": "several_icu_stays"}
            continue
        p = patients[subject]
        age = int(p["anchor_age"]) + intime.year - int(p["anchor_year"]) if int(p["anchor_age"]) < 91 else 91
        if age < 18:
            out[stay_id] = {"drop": "under_18"}
            continue
        if task == "ihm" and los < 48:
            out[stay_id] = {"drop": "los_under_48h"}
            continue
        hours = 48.0 if task == "ihm" else los
        series = []
        for r in events[subject]:
            if _float(r["hadm_id"]) != hadm or r.get("stay_id") not in (None, "", str(stay_id)):
                continue
            t = (_time(r["charttime"]) - intime).total_seconds() / 3600
            value = clean_value(ITEM_VARIABLES[int(r["itemid"])], r["value"] or None, _float(r["valuenum"]),
                                r["valueuom"] or None, ITEM_LABELS[int(r["itemid"])])
            if value is not None and -1e-6 < t < hours + 1e-6:
                series.append((t, ITEM_VARIABLES[int(r["itemid"])], value))
        if not series:
            out[stay_id] = {"drop": "no_events"}
            continue
        if subject in unknown_time:
            out[stay_id] = {"reject": "cxr_row_rejected"}
            continue
        a = admissions[hadm]
        deaths = [_time(a["deathtime"])] if a["deathtime"] else []
        deaths += [dt.datetime.fromisoformat(p["dod"])] if p["dod"] else []
        admit, disch = _time(a["admittime"]), _time(a["dischtime"]) if a["dischtime"] else None
        labels = ([int(any(disch and admit <= d <= disch for d in deaths))] if task == "ihm" else
                  [int(bool(codes[hadm] & groups[name])) for name in sorted(groups)])
        end = intime + (48 * HOUR if task == "ihm" else outtime - intime)
        paired = sorted((t, d) for t, d in images[subject] if intime <= t <= end)
        latest = [d for t, d in paired if t == paired[-1][0]] if paired else []
        out[stay_id] = {"subject_id": subject, "hadm_id": hadm, "labels": labels, "hours": hours,
                        "dicom_id": min(latest) if latest else "", "series": series}
    return out


@pytest.mark.parametrize("task", TASKS)
def test_stays_labels_and_pairing_match_a_brute_force_reading(task, medfuse_tree, medfuse_runs):
    folder, metadata, stdout = medfuse_runs[task]
    expected = brute_force(task, medfuse_tree)
    rows = manifest(folder, "stay_id")
    rejects = [json.loads(line) for p in (folder / "rejects").glob("*.jsonl") for line in p.open()]
    bad_images = {r["dicom_id"] for r in rejects if r["stage"] == "images"}  # the sample breaks some on purpose
    paired = {s: e for s, e in expected.items() if "drop" not in e and "reject" not in e}
    kept = {s: e for s, e in paired.items() if e["dicom_id"] not in bad_images}
    assert set(rows) == set(kept)
    assert metadata["counts"]["rejected_by_reason"].get("join/cxr_row_rejected", 0) == sum(
        1 for e in expected.values() if "reject" in e)
    assert metadata["counts"]["rejected"] == len(paired) - len(kept) + sum(1 for e in expected.values()
                                                                           if "reject" in e)
    drops = Counter(e["drop"] for e in expected.values() if "drop" in e)
    assert {k: v for k, v in metadata["counts"]["dropped"].items() if v} == dict(drops)
    names = metadata["label_names"]
    for stay_id, row in rows.items():
        want = kept[stay_id]
        assert [int(row[n]) for n in names] == want["labels"], stay_id
        assert row["cxr_dicom_id"] == want["dicom_id"] and row["has_cxr"] == str(int(bool(want["dicom_id"])))
    for step, left in metadata["funnel"].items():
        assert any(line.startswith(step) and str(left) in line.split() for line in stdout.splitlines()), step


@pytest.mark.parametrize("task", TASKS)
def test_series_are_the_hourly_bins_of_the_cleaned_events(task, medfuse_tree, medfuse_runs):
    folder, metadata, _ = medfuse_runs[task]
    expected = brute_force(task, medfuse_tree)
    channels = metadata["channel_order"]
    for stay_id, example in examples(folder, "stay_id").items():
        want = expected[stay_id]
        n_bins = int(want["hours"] + 1 - 1e-6)
        assert example["timeseries/shape"] == [n_bins, 17]
        values = np.asarray(example["timeseries/values"]).reshape(n_bins, 17)
        mask = np.asarray(example["timeseries/mask"]).reshape(n_bins, 17)
        last: dict[tuple[int, int], tuple] = {}  # the latest event of a bin, ties to the larger value

        def order(event):
            return event[0], str(event[1]) if isinstance(event[1], str) else event[1]

        for t, channel, value in want["series"]:
            key = (min(max(int(t - 1e-6), 0), n_bins - 1), channels.index(channel))
            last[key] = max(last.get(key, (t, value)), (t, value), key=order)
        assert {(b, c) for b, c in zip(*np.nonzero(mask))} == set(last)
        for (b, c), (_, value) in last.items():
            if not isinstance(value, str):
                assert values[b, c] == pytest.approx(value, rel=1e-6)
        assert example["has_cxr"] == [int(bool(want["dicom_id"]))]
        assert ("image/encoded" in example) == bool(want["dicom_id"])
        # IHM predicts at intime + 48 h: when the stay ends is not in its records (phenotyping's horizon is the stay)
        assert ("los_hours" in example) == ("outtime" in example) == (task == "phenotyping")
    assert ("los_hours" in metadata["features"]) == (task == "phenotyping")  # the spec readers parse with


@pytest.mark.parametrize("task", TASKS)
def test_normaliser_is_fitted_on_train_only(task, medfuse_tree, medfuse_runs):
    """Fitted before the image stage: the train stays whose paired X-ray is then rejected are in the fit (their
    features recomputed here from the brute-force events), the val and test stays are not; metadata.json says so
    and counts the fit's stays per channel."""
    folder, metadata, _ = medfuse_runs[task]
    records = examples(folder, "stay_id")
    rejected = {r["dicom_id"] for p in (folder / "rejects").glob("*.jsonl") for r in map(json.loads, p.open())
                if r["stage"] == "images"}
    expected = brute_force(task, medfuse_tree)
    flags = medfuse_stays.load_split_files()

    def split(subject_id: int) -> str:
        return medfuse_stays.subject_split(subject_id, *flags, metadata["config"]["split_salt"])[0]

    assert all(r["split"] == split(int(r["subject_id"])) for r in manifest(folder, "stay_id").values())
    unwritten = [hourly.discretize(e["series"], e["hours"]) for e in expected.values()
                 if "drop" not in e and "reject" not in e and e["dicom_id"] in rejected
                 and split(e["subject_id"]) == "train"]
    written = [r for r in records.values() if r["split"] == [b"train"]]
    train = np.concatenate([np.asarray(r["timeseries/features"]).reshape(-1, 76) for r in written]
                           + [series.features() for series in unwritten])
    # The card's gate counts the fit's stays per channel, not only the written ones: metadata.json said the fit was
    # of written stays, and a channel seen only in train stays rejected at images/ showed its mean as imputed.
    observed = sum(np.asarray(r["timeseries/mask"]).reshape(-1, 17).any(axis=0) for r in written) + sum(
        series.mask.any(axis=0) for series in unwritten)
    assert metadata["normalizer"]["train_stays_observed"] == dict(zip(hourly.CHANNELS, observed.tolist()))
    assert "rejected at images/" in metadata["normalizer"]["fitted_on"]
    assert metadata["normalizer"]["rows"] == len(train)
    columns = [metadata["feature_names"].index(name) for name in metadata["normalizer"]["columns"]]
    assert np.allclose(metadata["normalizer"]["means"], train[:, columns].astype(np.float64).mean(axis=0), atol=1e-5)
    stds = np.maximum(train[:, columns].astype(np.float64).std(axis=0, ddof=1), 1e-7)
    assert np.allclose(metadata["normalizer"]["stds"], stds, rtol=1e-5)
    record = next(iter(records.values()))
    features = np.asarray(record["timeseries/features"]).reshape(-1, 76)
    normalized = np.asarray(record["timeseries/normalized"]).reshape(-1, 76)
    assert np.allclose(normalized[:, columns], (features[:, columns] - metadata["normalizer"]["means"])
                       / np.array(metadata["normalizer"]["stds"]), atol=1e-4)
    for channel in ("Capillary refill rate", "Glascow coma scale total"):  # only CareVue ids: never in MIMIC-IV
        assert metadata["counts"]["channel_coverage"][channel] == {"stays": 0, "bins": 0, "train_stays": 0}
        assert channel in metadata["never_observed_channels"]


@pytest.mark.parametrize("task", TASKS)
def test_listfiles_and_benchmark_files_follow_medfuse_layout(task, medfuse_runs):
    folder, metadata, _ = medfuse_runs[task]
    rows = manifest(folder, "stay_id")
    for split in mimic.SPLITS:
        [path] = (folder / "listfiles").glob(f"{split}-*_listfile.csv")
        text = path.read_text()
        header, *lines = list(csv.reader(io.StringIO(text)))
        assert header == ["stay", "period_length", "stay_id"] + (
            ["y_true"] if task == "ihm" else metadata["label_names"])
        assert {int(line[2]) for line in lines} == {s for s, r in rows.items() if r["split"] == split}
        for stay, period, stay_id, *labels in lines:
            row = rows[int(stay_id)]
            assert (folder / "timeseries" / split / stay).is_file()
            assert float(period) == (0.0 if task == "ihm" else pytest.approx(float(row["los_hours"])))
            assert [int(x) for x in labels] == [int(row[n]) for n in metadata["label_names"]]
            series = read_csv(folder / "timeseries" / split / stay)
            assert list(series[0]) == ["Hours", *metadata["channel_order"]]
            hours = [float(r["Hours"]) for r in series]
            assert hours == sorted(hours) and 0 <= hours[0] and hours[-1] <= (48 if task == "ihm" else
                                                                              float(row["los_hours"])) + 1e-6


@pytest.mark.parametrize("task", TASKS)
def test_planted_stays_come_out_as_the_sample_says(task, medfuse_tree, medfuse_runs):
    folder, metadata, _ = medfuse_runs[task]
    rows = manifest(folder, "stay_id")
    cases = [c for c in json.loads((Path(medfuse_tree.cxr).parent / "SAMPLE.json").read_text())["medfuse"]["cases"]
             if c.get("expected") and "stay_id" in c]
    assert {"cxr_at_intime_plus_48h", "cxr_fraction_after_intime_plus_48h", "unit_transfer", "in_hospital_death",
            "two_icu_stays_in_one_admission", "dod_on_discharge_date_only", "los_under_48h",
            "under_18_in_stay_year"} <= {c["case"] for c in cases}
    for case in cases:
        want = case["expected"][task]
        if want is None:
            assert case["stay_id"] not in rows, case["case"]
            continue
        row = rows[case["stay_id"]]
        assert row["cxr_dicom_id"] == (want["cxr_dicom_id"] or ""), case["case"]
        if task == "ihm":
            assert row["in_hospital_mortality"] == str(want["label"]), case["case"]
        else:
            assert {n for n in metadata["label_names"] if row[n] == "1"} == set(want["phenotypes"]), case["case"]


@pytest.mark.parametrize("task", TASKS)
def test_stays_whose_chosen_xray_the_sample_broke_come_out_as_the_sample_says(task, medfuse_tree, medfuse_runs):
    """Each listed stay is not written and its X-ray is rejected for the listed reason. A repeated metadata row is
    not among them: medfuse merges exact copies and pairs the image (this sample's stay 30368228 was listed as
    rejected for duplicate_dicom_id and was written)."""
    folder, _, _ = medfuse_runs[task]
    rows = manifest(folder, "stay_id")
    rejects = {(r["dicom_id"], r["reason"]) for path in (folder / "rejects").glob("*.jsonl")
               for r in map(json.loads, path.open())}
    cases = [c for c in json.loads((Path(medfuse_tree.cxr).parent / "SAMPLE.json").read_text())["medfuse"]["cases"]
             if c["case"] == "chosen_cxr_unusable" and c["task"] == task]
    assert cases or task == "ihm"
    for case in cases:
        assert case["stay_id"] not in rows and (case["dicom_id"], case["expected_reject"]) in rejects, case


@pytest.mark.parametrize("task", TASKS)
def test_rerun_is_byte_identical_with_one_worker(task, medfuse_tree, medfuse_runs, tmp_path):
    folder, metadata, _ = medfuse_runs[task]
    again = run(medfuse_argv(task, medfuse_tree, tmp_path / "again", ONE_WORKER, "--benchmark_files",
                             "--normalize_timeseries"))
    other = published(tmp_path / "again")
    for sub in ("tfrecords", "manifest", "listfiles", "rejects", *(f"timeseries/{s}" for s in mimic.SPLITS)):
        names = sorted(p.name for p in (folder / sub).iterdir())
        assert names == sorted(p.name for p in (other / sub).iterdir())
        assert filecmp.cmpfiles(folder / sub, other / sub, names, shallow=False)[0] == names, sub
    strip = lambda m: {**m, "config": {**m["config"], "output": ""}}  # noqa: E731
    assert strip(again) == strip(metadata)


def test_counts_add_up(medfuse_runs):
    for folder, metadata, _ in medfuse_runs.values():
        c = metadata["counts"]
        assert c["stays"] == sum(c["dropped"].values()) + c["rejected"] + c["matched"] and c["matched"] > 0
        assert sum(len(p.read_text().splitlines()) for p in (folder / "rejects").glob("*.jsonl")) == c["rejects_total"]
        assert math.isclose(sum(c["per_split"].values()), c["matched"])


@pytest.mark.parametrize("task", TASKS)
def test_tf_data_reads_every_stay_paired_or_not(task, medfuse_runs):
    """An unpaired stay (has_cxr 0, about half) has no image/* features: metadata.json says so (optional, present
    when has_cxr == 1), so parse_spec and dataset() read it, with defaults and an all-zero image, instead of failing
    on the first one ("image/encoded is required but could not be found")."""
    import cv2

    from beam_pipeline.readers.tf_data import dataset

    folder, metadata, _ = medfuse_runs[task]
    records = examples(folder, "stay_id")
    seen = Counter()
    for split in mimic.SPLITS:
        for example in dataset(str(folder), split, normalization="none", channels=1):
            written = records[int(example["stay_id"])]
            assert int(example["has_cxr"]) == written["has_cxr"][0] == int("image/encoded" in written)
            if written["has_cxr"][0]:
                pixels = cv2.imdecode(np.frombuffer(written["image/encoded"][0], np.uint8), cv2.IMREAD_GRAYSCALE)
                np.testing.assert_array_equal(example["image"].numpy()[..., 0], pixels / np.float32(255))
                assert int(example["image/height"]) == 64
            else:
                assert example["image/encoded"].numpy() == b"" and int(example["image/height"]) == 0
                assert not example["image"].numpy().any()
            seen[written["has_cxr"][0]] += 1
    assert sum(seen.values()) == len(records) and seen[0] and seen[1]
    optional = {name: f.get("present_when") for name, f in metadata["features"].items() if f.get("optional")}
    assert optional == {name: "has_cxr == 1" for name in metadata["features"] if name.startswith("image/")}


def test_ed_cxr_only_readers_refuse_a_medfuse_output_by_name(medfuse_runs):
    """The PyTorch reader, show and tf.data's supervised form read ed_cxr's features: on a medfuse output they stop
    before any record, naming the cohort, where they raised a bare KeyError ('text', 'labels/chexpert')."""
    from beam_pipeline.readers.pytorch import MimicCxrEdDataset
    from beam_pipeline.readers.tf_data import dataset

    folder = str(medfuse_runs["ihm"][0])
    with pytest.raises(UnsupportedCohort, match=r"reads ed_cxr outputs only, and .* is a medfuse_ihm output"):
        MimicCxrEdDataset(folder, "train")
    with pytest.raises(SystemExit, match=r"^error: python -m beam_pipeline.show reads ed_cxr outputs only, and .* "
                                         r"is a medfuse_ihm output"):
        show.main([folder, "--split=train"])
    with pytest.raises(UnsupportedCohort, match="a medfuse_ihm output"):
        dataset(folder, "train", supervised=True)


@pytest.mark.parametrize("task", TASKS)
def test_split_fractions_other_than_the_lists_own_are_refused_at_launch(task, capsys):
    """Subjects in neither MedFuse list are split by the lists' own fractions; --split_fractions was accepted,
    recorded in metadata.json's config and ignored."""
    argv = [f"--cohort=medfuse_{task}", "--mimic_cxr_root=a", "--mimic_iv_root=b", "--output=c"]
    with pytest.raises(SystemExit):
        parse(argv + ["--split_fractions=0.5,0.25,0.25"])
    assert (f"--cohort=medfuse_{task} splits by MedFuse's subject lists and the subjects in neither by the lists' own "
            "fractions 0.72,0.08,0.2; --split_fractions=0.5,0.25,0.25 does not apply") in capsys.readouterr().err
    assert parse(argv)[0].split_fractions == medfuse_stays.HASH_FALLBACK_FRACTIONS  # what metadata.json records
    assert parse(argv + ["--split_fractions=0.72,0.08,0.2"])[0].split_fractions == (0.72, 0.08, 0.2)


@pytest.mark.parametrize("task", TASKS)
def test_views_other_than_ap_are_refused_at_launch(task, capsys):
    """The pairing takes AP X-rays only: --views=AP,PA was accepted and recorded in metadata.json and the data card,
    and no PA image was ever paired (--views=PA paired nothing, silently)."""
    argv = [f"--cohort=medfuse_{task}", "--mimic_cxr_root=a", "--mimic_iv_root=b", "--output=c"]
    for views in ("AP,PA", "PA", "*"):
        with pytest.raises(SystemExit):
            parse(argv + [f"--views={views}"])
        assert (f"--cohort=medfuse_{task} pairs AP X-rays only (MedFuse); --views={views} does not apply"
                in capsys.readouterr().err)
    assert parse(argv)[0].views == parse(argv + ["--views=AP"])[0].views == ("AP",)


@pytest.mark.parametrize("task", TASKS)
def test_datetime_features_give_their_format_fraction_included(task, medfuse_runs):
    """intime, outtime and cxr/study_datetime are written by mimic.format_datetime: the X-ray's carries StudyTime's
    fraction, so each description gives the format with it."""
    folder, metadata, _ = medfuse_runs[task]
    records = examples(folder, "stay_id").values()
    pattern = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{6})?")
    datetimes = {name for r in records for name, values in r.items()
                 if values and isinstance(values[0], bytes) and pattern.fullmatch(values[0])}
    described = {name for name, f in metadata["features"].items()
                 if "YYYY-MM-DD HH:MM:SS[.ffffff]" in f["description"]}
    assert datetimes == described == {"intime", "cxr/study_datetime", *(("outtime",) if task == "phenotyping" else ())}
    assert any(b"." in r["cxr/study_datetime"][0] for r in records)
