"""--cohort=symile_mimic end to end on the generated sample tree: the README's command, a brute-force reading of the
reference rules (cohort-definitions.md §A) against every output, the planted edge cases, byte-identical reruns."""

from __future__ import annotations

import datetime as dt
import filecmp
import json
import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import wfdb

from beam_pipeline import mimic, sample
from beam_pipeline.fileio.tfrecord import read_records
from beam_pipeline.run import run
from cohort_files import examples, manifest, read_csv, write_table
from conftest import ONE_WORKER, published

HOUR = dt.timedelta(hours=1)


def symile_argv(roots: sample.SampleRoots, output: Path, *flags: str) -> list[str]:
    return ["--cohort=symile_mimic", f"--mimic_cxr_root={roots.cxr}", f"--mimic_iv_root={roots.iv}",
            f"--mimic_ecg_root={roots.ecg}", f"--output={output}", "--image_size=64", *flags]


@pytest.fixture(scope="session")
def symile_tree(tmp_path_factory):
    return sample.generate(tmp_path_factory.mktemp("symile") / "sample", subjects=200, seed=3)


@pytest.fixture(scope="session")
def symile_cli(symile_tree, tmp_path_factory):
    """The README's command (only the cohort's required flags, plus a small image size), in a fresh interpreter:
    the default local run, every core."""
    output = tmp_path_factory.mktemp("symile-out") / "out"
    done = subprocess.run([sys.executable, "-m", "beam_pipeline.run", *symile_argv(symile_tree, output)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return output, done


@pytest.fixture(scope="session")
def symile_run(symile_cli):
    output, _ = symile_cli
    folder = published(output)
    return folder, json.loads((folder / "metadata.json").read_text())


def _time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S")


def expected_admissions(roots: sample.SampleRoots) -> tuple[dict[int, dict], dict[str, int], set[int]]:
    """The reference rules read literally over the raw files: hadm_id -> the choices; the drop counts; and the
    admissions rejected because a kept-view image of their subject has an unreadable time (it may be their CXR)."""
    iv, cxr, ecg_root = Path(roots.iv) / "hosp", Path(roots.cxr), Path(roots.ecg)
    images, unknown_time = defaultdict(list), set()
    for row in read_csv(cxr / "mimic-cxr-2.0.0-metadata.csv.gz"):
        if row["ViewPosition"] not in ("AP", "PA"):
            continue
        try:
            when = mimic.parse_study_datetime(row["StudyDate"], row["StudyTime"])
        except ValueError:
            unknown_time.add(int(row["subject_id"]))
            continue
        images[int(row["subject_id"])].append((when, row["dicom_id"], int(row["study_id"])))
    chexpert = {int(r["study_id"]) for r in read_csv(cxr / "mimic-cxr-2.0.0-chexpert.csv.gz")}
    ecgs = defaultdict(list)
    for row in read_csv(ecg_root / "record_list.csv"):
        ecgs[int(row["subject_id"])].append((_time(row["ecg_time"]), int(row["study_id"]), row["path"]))
    labs = defaultdict(list)
    wanted = set(mimic.SYMILE_LAB_ITEMIDS)
    for row in read_csv(iv / "labevents.csv.gz"):
        if int(row["itemid"]) in wanted and row["valuenum"] != "":
            labs[int(row["subject_id"])].append((int(row["itemid"]), _time(row["charttime"]),
                                                 int(row["labevent_id"]), float(row["valuenum"])))

    def usable(path: str) -> bool:
        signal = wfdb.rdrecord(str(ecg_root / path)).p_signal
        return not np.isnan(signal).any() and bool(np.any(signal != 0)) and signal.shape == (5000, 12)

    chosen, drops, cxr_rejected = {}, defaultdict(int), set()
    for row in read_csv(iv / "admissions.csv.gz"):
        subject, hadm, admit = int(row["subject_id"]), int(row["hadm_id"]), _time(row["admittime"])
        if subject in unknown_time:
            cxr_rejected.add(hadm)
            continue
        cxrs = sorted((t, d, s) for t, d, s in images[subject] if 24 * HOUR < t - admit <= 72 * HOUR)
        in_window = sorted((t, s, p) for t, s, p in ecgs[subject] if -24 * HOUR <= t - admit <= 24 * HOUR)
        values = {}
        for itemid, t, event_id, value in sorted(labs[subject], key=lambda r: (r[1], r[2])):
            if -24 * HOUR <= t - admit <= 24 * HOUR:
                values.setdefault(itemid, value)
        if not cxrs:
            drops["no_cxr_in_window"] += 1
        elif cxrs[0][2] not in chexpert:
            drops["no_chexpert_row"] += 1
        elif not in_window:
            drops["no_ecg_in_window"] += 1
        elif not values:
            drops["no_lab_in_window"] += 1
        else:
            good = [e for e in in_window if usable(e[2])]
            if not good:
                drops["no_usable_ecg"] += 1
                continue
            chosen[hadm] = {"subject_id": subject, "dicom_id": cxrs[0][1], "study_id": cxrs[0][2],
                            "ecg_study_id": good[0][1], "ecg_path": good[0][2],
                            "labs": [values.get(i) for i in mimic.SYMILE_LAB_ITEMIDS]}
    return chosen, dict(drops), cxr_rejected


def test_readme_command_prints_the_admission_funnel(symile_cli, symile_run):
    _, done = symile_cli
    _, metadata = symile_run
    lines = done.stdout.splitlines()
    for step, left in metadata["funnel"].items():
        assert any(line.startswith(step) and str(left) in line.split() for line in lines), (step, left)
    assert metadata["config"]["cohort"] == "symile_mimic"
    assert (metadata["config"]["image_size"], metadata["config"]["split_strategy"]) == (64, "hash")
    assert "Report:" in done.stdout


def test_choices_and_drops_match_a_brute_force_reading_of_the_rules(symile_tree, symile_run):
    folder, metadata = symile_run
    expected, drops, cxr_rejected = expected_admissions(symile_tree)
    counts = metadata["counts"]
    rejects = [json.loads(line) for p in (folder / "rejects").glob("*.jsonl") for line in p.open()]
    assert 0 < counts["rejected_by_reason"]["join/cxr_row_rejected"] == len(cxr_rejected)
    bad_images = {r["dicom_id"] for r in rejects if r["stage"] == "images"}
    rejected = {h for h, want in expected.items() if want["dicom_id"] in bad_images}
    rows = manifest(folder, "hadm_id")
    assert set(rows) == set(expected) - rejected
    assert {k: v for k, v in counts["dropped"].items() if v} == drops
    assert counts["admissions"] == sum(counts["dropped"].values()) + counts["rejected"] + counts["matched"]
    for hadm, row in rows.items():
        want = expected[hadm]
        assert (row["cxr_dicom_id"], int(row["cxr_study_id"]), int(row["ecg_study_id"]), row["ecg_path"]) == (
            want["dicom_id"], want["study_id"], want["ecg_study_id"], want["ecg_path"]), hadm
        assert [None if row[str(i)] == "" else float(row[str(i)]) for i in mimic.SYMILE_LAB_ITEMIDS] == want["labs"]


def test_planted_cases_come_out_as_the_sample_says(symile_tree, symile_run):
    folder, _ = symile_run
    rows = manifest(folder, "hadm_id")
    cases = [c for c in json.loads((Path(symile_tree.cxr).parent / "SAMPLE.json").read_text())["symile"]["cases"]
             if "hadm_id" in c]
    assert {c["case"] for c in cases} >= {"cxr_at_24h_excluded", "cxr_at_72h_included", "cxr_tie_smallest_dicom_id",
                                          "ecg_at_minus_24h", "ecg_at_plus_24h", "ecg_after_nan_and_all_zero",
                                          "labs_on_window_edges", "shared_cxr", "chosen_cxr_without_chexpert"}
    for case in cases:
        if case["expected_outcome"] != "written":
            assert case["hadm_id"] not in rows, case["case"]
            continue
        row = rows[case["hadm_id"]]
        assert (row["cxr_dicom_id"], int(row["ecg_study_id"])) == (case["expected_cxr_dicom_id"],
                                                                   case["expected_ecg_study_id"]), case["case"]
        assert {k: float(v) for k, v in case["expected_labs"].items()} == {
            str(i): float(row[str(i)]) for i in mimic.SYMILE_LAB_ITEMIDS if row[str(i)] != ""}, case["case"]


def test_records_hold_the_ecg_in_mv_and_train_only_percentiles(symile_tree, symile_run):
    folder, metadata = symile_run
    records = examples(folder, "hadm_id")
    assert set(records) == set(manifest(folder, "hadm_id"))
    train = [r for r in records.values() if r["split"][0] == b"train"]
    assert train and metadata["counts"]["per_split"]["train"] == len(train)
    for column, itemid in enumerate(mimic.SYMILE_LAB_ITEMIDS):
        values = np.sort([r["labs/values"][column] for r in train if not math.isnan(r["labs/values"][column])])
        mean = float(np.mean([np.searchsorted(values, v, side="right") / len(values) for v in values])) \
            if len(values) else 0.0
        for record in records.values():
            value = record["labs/values"][column]
            if math.isnan(value):
                assert record["labs/observed"][column] == 0
                assert record["labs/percentiles"][column] == pytest.approx(mean, abs=1e-6)
            else:
                assert record["labs/observed"][column] == 1
                assert record["labs/percentiles"][column] == pytest.approx(
                    np.searchsorted(values, value, side="right") / len(values), abs=1e-6)
    example = records[min(records)]
    signal = np.asarray(example["ecg/signal"], dtype=np.float32).reshape(example["ecg/shape"])
    direct = wfdb.rdrecord(str(Path(symile_tree.ecg) / example["ecg/path"][0].decode())).p_signal
    assert signal.shape == (5000, 12) and np.allclose(signal, direct, atol=1e-6)
    assert [n.decode() for n in example["ecg/lead_names"]] == list(mimic.ECG_LEADS)
    assert example["image/height"] == [64] and len(example["labels/chexpert"]) == 14
    assert len(example["labels/symile"]) == 6


def test_candidate_sets_are_seeded_blocks_within_each_split(symile_run):
    folder, metadata = symile_run
    rows = manifest(folder, "hadm_id")
    for split in ("val", "test"):
        [path] = (folder / "candidates").glob(f"{split}-*.csv")
        blocks = defaultdict(list)
        for row in read_csv(path):
            blocks[int(row["query_hadm_id"])].append((int(row["candidate_hadm_id"]), int(row["label"])))
        members = {h for h, r in rows.items() if r["split"] == split}
        assert set(blocks) == members
        for query, block in blocks.items():
            assert block[0] == (query, 1) and all(label == 0 for _, label in block[1:])
            negatives = [c for c, _ in block[1:]]
            assert len(negatives) == min(9, len(members) - 1) and len(set(negatives)) == len(negatives)
            assert query not in negatives and set(negatives) <= members


def test_rerun_is_byte_identical_with_one_worker(symile_tree, symile_run, tmp_path):
    folder, metadata = symile_run
    again = run(symile_argv(symile_tree, tmp_path / "again", ONE_WORKER))
    other = published(tmp_path / "again")
    for sub in ("tfrecords", "manifest", "candidates", "rejects"):
        names = sorted(p.name for p in (folder / sub).iterdir())
        assert names == sorted(p.name for p in (other / sub).iterdir())
        assert filecmp.cmpfiles(folder / sub, other / sub, names, shallow=False)[0] == names, sub
    strip = lambda m: {**m, "config": {**m["config"], "output": ""}}  # noqa: E731
    assert strip(again) == strip(metadata)


def test_the_tf_data_spec_parses_a_record(symile_run):
    import tensorflow as tf

    from beam_pipeline.readers.tf_data import parse_spec

    folder, metadata = symile_run
    path = next(p for p in sorted((folder / "tfrecords").glob("*.tfrecord")) if p.stat().st_size)
    parsed = tf.io.parse_single_example(next(iter(read_records(str(path)))), parse_spec(metadata))
    assert parsed["ecg/signal"].shape == (60000,) and parsed["labs/percentiles"].shape == (50,)


@pytest.mark.parametrize("ecg_damage", ["time", "path"])
def test_rows_rejected_at_read_reject_the_admissions_that_could_have_used_them(tmp_path, ecg_damage):
    """Five subjects with one admission each: the earliest CXR, ECG or creatinine, or the patients row, damaged in
    one subject each (dA1's dicom_id is also under another subject; the times lack seconds, or the ECG's record path
    climbs out of the root); the fifth is clean. The four are rejected, never written with the next CXR, ECG or lab
    or without age, and the funnel adds up."""
    from beam_pipeline.transforms.ecg import write_ecg
    cxr, iv, ecg = tmp_path / "cxr", tmp_path / "iv", tmp_path / "ecg"
    subjects = {"patients": 10000001, "cxr": 10000002, "ecg": 10000003, "lab": 10000004, "clean": 10000005}
    damaged = {subject: kind for kind, subject in subjects.items()}
    metadata, labels, patients, admissions, labs, ecgs = [], [], [], [], [], []
    for i, s in enumerate(subjects.values()):
        kind = damaged[s]
        for n, (day, time) in enumerate((("21500302", "140000.000"), ("21500303", "0.000")), 1):
            study = 50000000 + 10 * i + n
            metadata.append(dict(dicom_id=f"d{s}-{n}", subject_id=s, study_id=study, ViewPosition="AP",
                                 StudyDate=day, StudyTime=time))
            labels.append(dict(subject_id=s, study_id=study, **{label: f"{n % 2}.0" for label in mimic.LABELS}))
        if kind == "cxr":
            metadata.append({**metadata[-2], "subject_id": 10000009, "study_id": 50000099})
        patients.append(dict(subject_id=s, gender="F", anchor_age=60, anchor_year="2l50" if kind == "patients"
                             else "2150"))
        admissions.append(dict(subject_id=s, hadm_id=20000000 + i, admittime="2150-03-01 08:00:00"))
        for n, (value, time) in enumerate((("1.0", "2150-03-01 09:00"), ("9.0", "2150-03-01 13:00:00")), 1):
            labs.append(dict(labevent_id=10 * i + n, subject_id=s, itemid=50912, valuenum=value,
                             charttime=time if kind == "lab" or n == 2 else time + ":00"))
        for n, time in enumerate(("2150-03-01 09:00", "2150-03-01 10:00:00"), 1):
            study, path = 40000000 + 10 * i + n, f"files/p1000/p{s}/s{40000000 + 10 * i + n}/{40000000 + 10 * i + n}"
            write_ecg((ecg / path).parent, str(study), np.random.default_rng(study).uniform(-2, 2, (5000, 12)))
            if kind == "ecg" and n == 1 and ecg_damage == "path":
                ecgs.append(dict(subject_id=s, study_id=study, file_name=study, path=f"../ecg/{path}",
                                 ecg_time=time + ":00"))  # the same record, by a path outside the root
            else:
                ecgs.append(dict(subject_id=s, study_id=study, file_name=study, path=path,
                                 ecg_time=time if kind == "ecg" and ecg_damage == "time" or n == 2 else time + ":00"))
    write_table(cxr / "mimic-cxr-2.0.0-metadata.csv", mimic.CXR_METADATA, metadata)
    write_table(cxr / "mimic-cxr-2.0.0-chexpert.csv", mimic.CXR_CHEXPERT, labels)
    write_table(iv / "hosp" / "patients.csv", mimic.PATIENTS, patients)
    write_table(iv / "hosp" / "admissions.csv", mimic.ADMISSIONS, admissions)
    write_table(iv / "hosp" / "labevents.csv", mimic.LABEVENTS, labs)
    write_table(ecg / "record_list.csv", mimic.ECG_RECORD_LIST, ecgs)
    result = run(["--cohort=symile_mimic", f"--mimic_cxr_root={cxr}", f"--mimic_iv_root={iv}",
                  f"--mimic_ecg_root={ecg}", f"--output={tmp_path / 'out'}", "--images=false", ONE_WORKER])
    c = result["counts"]
    assert c["rejected_by_reason"] == {f"join/{kind}_row_rejected": 1 for kind in ("patient", "cxr", "ecg", "lab")}
    assert (c["admissions"], c["rejected"], c["matched"]) == (5, 4, 1)
    assert c["rejects_by_stage_reason"].get("read/bad_path", 0) == (ecg_damage == "path")
    [row] = manifest(published(tmp_path / "out"), "hadm_id").values()
    assert (row["subject_id"], row["cxr_dicom_id"], row["ecg_study_id"], row["50912"]) == (
        "10000005", "d10000005-1", "40000041", "1.0")


def one_admission_each(root: Path, subjects: dict[int, dict]) -> list[str]:
    """A hand-made tree: per subject one admission, an AP X-ray at +30 h with its CheXpert row, an ECG at +1 h, a
    patients row (``subjects[s]["patient"]`` overrides its columns) and creatinine (50912) rows
    ``subjects[s]["creatinine"]``: (hours from admittime, valuenum) each. Returns the run's flags."""
    from beam_pipeline.transforms.ecg import write_ecg
    cxr, iv, ecg = root / "cxr", root / "iv", root / "ecg"
    tables = defaultdict(list)
    admittime = dt.datetime(2150, 3, 1, 8)
    for i, (s, rows) in enumerate(subjects.items()):
        study, ecg_study = 50000000 + i, 40000000 + i
        path = f"files/p1000/p{s}/s{ecg_study}/{ecg_study}"
        write_ecg((ecg / path).parent, str(ecg_study), np.random.default_rng(ecg_study).uniform(-2, 2, (5000, 12)))
        tables[mimic.CXR_METADATA.name].append(dict(dicom_id=f"d{s}", subject_id=s, study_id=study, ViewPosition="AP",
                                               StudyDate="21500302", StudyTime="140000.000"))
        tables[mimic.CXR_CHEXPERT.name].append(dict(subject_id=s, study_id=study, **dict.fromkeys(mimic.LABELS, "1.0")))
        tables[mimic.PATIENTS.name].append({**dict(subject_id=s, gender="F", anchor_age=60, anchor_year=2150),
                                                **rows.get("patient", {})})
        tables[mimic.ADMISSIONS.name].append(dict(subject_id=s, hadm_id=20000000 + i, admittime=str(admittime)))
        tables[mimic.ECG_RECORD_LIST.name].append(dict(subject_id=s, study_id=ecg_study, file_name=ecg_study, path=path,
                                                  ecg_time=str(admittime + HOUR)))
        tables[mimic.LABEVENTS.name] += [dict(labevent_id=100 * i + n, subject_id=s, itemid=50912, valuenum=repr(value),
                                         charttime=str(admittime + hours * HOUR))
                                    for n, (hours, value) in enumerate(rows.get("creatinine", ()))]
    for name, rows in tables.items():
        table = mimic.TABLES[name]
        folder = {"cxr": cxr, "iv": iv, "ecg": ecg}[table.module]
        write_table(folder / table.subdir / f"{table.basename}.csv", table, rows)
    return ["--cohort=symile_mimic", f"--mimic_cxr_root={cxr}", f"--mimic_iv_root={iv}", f"--mimic_ecg_root={ecg}",
            f"--output={root / 'out'}", "--images=false", ONE_WORKER]


def test_values_the_records_cannot_hold_are_rejects_and_the_manifest_matches_the_records(tmp_path):
    """A chosen creatinine of 1e39 was written to labs/values as inf (the manifest said 1e+39); an anchor_year that
    puts the age beyond int64 failed the whole job in the TFRecord writer. Now the first is join/
    lab_value_beyond_float32 (never the next creatinine), the second images/encode_failed; the same 1e39 later in
    the window of another admission changes nothing, and the counts add up."""
    result = run(one_admission_each(tmp_path, {
        10000001: {"creatinine": [(1, 1e39), (2, 9.0)]},
        10000002: {"creatinine": [(1, 1.0), (2, 1e39)]},
        10000003: {"creatinine": [(1, 2.0)], "patient": {"anchor_year": -2 ** 63}}}))
    c = result["counts"]
    assert c["rejected_by_reason"] == {"join/lab_value_beyond_float32": 1, "images/encode_failed": 1}
    assert (c["admissions"], c["rejected"], c["matched"]) == (3, 2, 1)
    folder = published(tmp_path / "out")
    [row] = manifest(folder, "hadm_id").values()
    [record] = examples(folder, "hadm_id").values()
    values = dict(zip(mimic.SYMILE_LAB_ITEMIDS, record["labs/values"]))
    assert (row["subject_id"], row["50912"], values[50912]) == ("10000002", "1.0", 1.0)
    assert not any(math.isinf(v) for v in record["labs/values"])
    [failed] = [json.loads(line) for path in (folder / "rejects").glob("*.jsonl") for line in path.open()
                if json.loads(line)["reason"] == "encode_failed"]
    assert (failed["stage"], failed["subject_id"], failed["detail"]) == (
        "images", 10000003, f"feature age (int64): ValueError: Value out of range: {60 + 2150 + 2 ** 63}")
