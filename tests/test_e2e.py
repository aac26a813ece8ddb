"""End to end on the generated sample and on the real MIMIC-IV-ED demo, checked against independent brute force."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from beam_pipeline import mimic, models, sample
from beam_pipeline.fileio.tfrecord import Example, parse_example, read_records
from beam_pipeline.readers.common import load_metadata
from beam_pipeline.readers.tf_data import dataset
from beam_pipeline.run import run
from beam_pipeline.transforms.snapshot import FEATURE_NAMES
from conftest import ED_DEMO, IV_DEMO, ONE_WORKER, OFFLINE_TEXT, OPEN_DATA, published

BAD_TEXT = re.compile(r"\bNone\b|\bnan\b|\d\.0\b", re.IGNORECASE)


def read_csv(path: Path) -> list[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def table(root: str, t: mimic.Table) -> list[dict[str, str]]:
    return read_csv(Path(root, t.subdir, t.filename))


def manifest(output: Path) -> dict[str, dict[str, str]]:
    rows = [row for path in sorted((published(output) / "manifest").glob("*.csv")) for row in read_csv(path)]
    return {row["dicom_id"]: row for row in rows}


def brute_force_links(roots: sample.SampleRoots, views=("AP", "PA")) -> dict[str, int | None]:
    """The matching rule written the slow, obvious way: every kept image against every stay."""
    stays = [(int(s["subject_id"]), int(s["stay_id"]), mimic.parse_datetime(s["intime"]),
              mimic.parse_datetime(s["outtime"])) for s in table(roots.ed, mimic.EDSTAYS)]
    links = {}
    for row in table(roots.cxr, mimic.CXR_METADATA):
        if row["ViewPosition"] not in views:
            continue
        try:
            t = mimic.parse_study_datetime(row["StudyDate"], row["StudyTime"])
        except ValueError:
            continue
        hits = [(t <= outtime, intime, -stay) for subject, stay, intime, outtime in stays
                if subject == int(row["subject_id"]) and intime <= t <= intime + dt.timedelta(hours=24)]
        links[row["dicom_id"]] = -max(hits)[2] if hits else None
    return links


def broken_images(cases: list[dict]) -> set[str]:
    """dicom_ids whose image file the sample damaged on purpose (rejected at the image stage)."""
    return {c["dicom_id"] for c in cases if c["case"] in sample.BROKEN_FILES}


def tf_records(output: Path, metadata: dict) -> dict[str, dict]:
    """Every split read with the package's tf.data reader, as a user would; values as Python/numpy."""
    records = {}
    for split in mimic.SPLITS:
        n = 0
        for example in dataset(str(output), split, normalization="none", channels=1):
            record = {k: v.numpy() for k, v in example.items()}
            record = {k: v.tolist() if k != "image" and hasattr(v, "tolist") else v for k, v in record.items()}
            assert record["split"] == split.encode()
            records[record["dicom_id"].decode()] = record
            n += 1
        assert n == metadata["counts"]["per_split"][split]
    return records


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, kb_index):
    base = tmp_path_factory.mktemp("e2e")
    roots = sample.generate(base / "sample", subjects=80, seed=3)
    output = base / "out"
    flags = [f"--mimic_cxr_root={roots.cxr}", f"--mimic_ed_root={roots.ed}", f"--mimic_iv_root={roots.iv}",
             OFFLINE_TEXT, f"--kb_index={kb_index}"]
    metadata = run(flags + [f"--output={output}"])
    cases = json.loads((base / "sample" / "SAMPLE.json").read_text())["cases"]
    return roots, output, metadata, cases, flags


def test_sample_read_back_with_tf_data_matches_manifest(synthetic):
    roots, output, metadata, _, _ = synthetic
    records = tf_records(output, metadata)
    rows = manifest(output)
    assert set(records) == set(rows) and len(rows) == metadata["counts"]["matched"] > 100
    for dicom_id, record in records.items():
        row = rows[dicom_id]
        assert record["subject_id"] == int(row["subject_id"]) and record["stay_id"] == int(row["stay_id"])
        assert record["split"] == row["split"].encode()
        assert record["study_datetime"] == row["study_datetime"].encode()
        assert len(record["labels/chexpert"]) == 14 and len(record["features/values"]) == len(FEATURE_NAMES)
        assert set(record["labels/mask"]) <= {0, 1} and set(record["labels/binary"]) <= {-1, 0, 1}
        assert record["image"].shape == (518, 518, 1) and record["image"].dtype == np.float32
        assert 0.0 <= record["image"].min() and record["image"].max() <= 1.0 and record["image"].std() > 0.05
        note = record["note/text"].decode()
        assert note and not BAD_TEXT.search(note), note
    counts = metadata["counts"]
    assert counts["images_total"] == counts["images_unreadable"] + counts["images_other_view"] + \
        counts["images_kept_view"]
    assert counts["images_kept_view"] == counts["matched"] + counts["no_ed_stay"] + counts["rejected"]
    assert counts["dropped_after_ed_departure"] == 0  # kept and flagged without --within_ed_stay


def subjects_with_unreadable_vitals(roots: sample.SampleRoots) -> set[int]:
    """Subjects with a vitalsign row whose time cannot be read (the sample plants one): the reader rejects it, so
    each X-ray of theirs taken after arrival (every linked one: the window starts at intime) is rejected."""
    found = set()
    for row in table(roots.ed, mimic.VITALSIGN):
        try:
            mimic.parse_datetime(row["charttime"])
        except ValueError:
            found.add(int(row["subject_id"]))
    return found


def brute_force_departures(roots: sample.SampleRoots) -> dict[int, dt.datetime]:
    return {int(s["stay_id"]): mimic.parse_datetime(s["outtime"]) for s in table(roots.ed, mimic.EDSTAYS)}


def test_sample_ed_departure_and_label_counts_are_of_written_records(synthetic):
    """after_ed_departure in manifest and TFRecords equals study time > the stay's outtime from edstays; notes of
    X-rays after departure never say the patient is in the ED; every funnel count under "matched and written"
    equals a count over the records actually read back."""
    roots, output, metadata, _, _ = synthetic
    records, rows = tf_records(output, metadata), manifest(output)
    outtimes = brute_force_departures(roots)
    metadata_times = {}
    for row in table(roots.cxr, mimic.CXR_METADATA):
        try:
            metadata_times[row["dicom_id"]] = mimic.parse_study_datetime(row["StudyDate"], row["StudyTime"])
        except ValueError:
            continue  # the planted bad StudyTime is a reject
    after = set()
    for dicom_id, record in records.items():
        outtime = outtimes[record["stay_id"]]
        expected = metadata_times[dicom_id] > outtime
        after |= {dicom_id} if expected else set()
        assert record["after_ed_departure"] == int(expected) and rows[dicom_id]["after_ed_departure"] == str(
            int(expected))
        assert rows[dicom_id]["ed_outtime"] == mimic.format_datetime(outtime)  # the manifest: always
        written = mimic.format_datetime(metadata_times[dicom_id])  # the time compared, fraction and all
        assert record["study_datetime"].decode() == rows[dicom_id]["study_datetime"] == written
        read_back = (mimic.parse_datetime(rows[dicom_id][c]) for c in ("study_datetime", "ed_outtime"))
        assert (next(read_back) > next(read_back)) == expected  # the written times agree with the flag
        assert record["ed_outtime"] == (mimic.format_datetime(outtime).encode() if expected else b"")  # known only
        note = record["note/text"].decode()
        assert ("In the ED for" not in note and "Left the ED" in note) if expected else "Left the ED" not in note
    counts = metadata["counts"]
    assert 10 < len(after) == counts["after_ed_departure"] < len(records)
    statuses = [r["labels/status"].decode() for r in records.values()]
    assert counts["labels"] == {s: statuses.count(s) for s in ("labeled", "all_blank", "no_label_row")}
    assert sum(counts["labels"].values()) == counts["matched"] and counts["labels"]["no_label_row"] > 0
    assert counts["written_notes"]["truncated"] == sum(r["note/truncated"] for r in records.values())
    assert counts["written_notes"]["redacted"] == sum("[REDACTED]" in r["note/text"].decode()
                                                      for r in records.values()) > 0


def test_sample_records_carry_filtered_notes_tokens_and_retrieval(synthetic, kb_index):
    """The acceptance of the text stage: filtered notes, unpadded tokens, enhanced notes, retrieval ids and scores in
    the records; tokenizer, embedding model, index checksum and per-rule hit counts in metadata.json."""
    _, output, metadata, _, _ = synthetic
    records = tf_records(output, metadata)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models.resolve(models.PACKAGED))  # the reference, not our loader
    passage_ids = {json.loads(line)["id"] for line in Path(kb_index, "passages.jsonl").open()}
    for record in records.values():
        note = record["note/text"].decode()
        assert record["note/input_ids"] == tokenizer(note, truncation=True, max_length=512)["input_ids"]
        assert record["note/length"] == len(record["note/input_ids"]) and record["note/truncated"] == 0
        assert record["note/enhanced"].decode().startswith(note + "\n\nRetrieved context:\n[1] ")
        assert len(record["rag/ids"]) == 3 and {i.decode() for i in record["rag/ids"]} <= passage_ids
        assert record["rag/scores"] == sorted(record["rag/scores"], reverse=True)
        assert record["note/enhanced_length"] == len(record["note/enhanced_input_ids"]) > record["note/length"]
    assert len({tuple(r["rag/ids"]) for r in records.values()}) > len(records) / 4  # context differs per note
    top = max(metadata["stats"]["rag"]["passages"].values())
    assert top < 0.15 * sum(metadata["stats"]["rag"]["passages"].values())  # no passage serves every note
    for record in records.values():
        query = record["rag/query"].decode()
        assert not re.search(r"\b(pna|pneumonia|chf|cxr)\b", query, re.IGNORECASE), query  # filtered like the note
        assert "acuity" not in query
    text = metadata["text"]
    assert text["tokenizer"]["name"] == models.PACKAGED and len(text["tokenizer"]["sha256"]) == 64
    retrieval = text["retrieval"]
    assert retrieval["embedding_model"] == models.PACKAGED and retrieval["top_k"] == 3
    assert retrieval["index_sha256"] == json.loads(Path(kb_index, "kb.json").read_text())["index_sha256"]
    counts = metadata["counts"]
    rejected_later = sum(n for reason, n in counts["rejected_by_reason"].items()
                         if reason.startswith(("split/", "images/")))  # stages after the text stage
    assert counts["leakage_hits"] and counts["notes"]["tokenized"] == len(records) + rejected_later
    assert metadata["features"]["note/input_ids"]["shape"] == [None] and metadata["features"]["rag/ids"]["shape"] == [3]


def test_sample_links_equal_brute_force_and_planted_cases(synthetic):
    roots, output, metadata, cases, _ = synthetic
    rows = manifest(output)
    expected = brute_force_links(roots)
    duplicated = {c["dicom_id"] for c in cases if c["expected_reject"] == "duplicate_dicom_id"}
    broken = broken_images(cases)
    unreadable_vitals = subjects_with_unreadable_vitals(roots)
    subject_of = {r["dicom_id"]: int(r["subject_id"]) for r in table(roots.cxr, mimic.CXR_METADATA)}
    vitals_rejected = {d for d, s in expected.items() if s and subject_of[d] in unreadable_vitals}
    assert {d: int(r["stay_id"]) for d, r in rows.items()} == {d: s for d, s in expected.items()
                                                              if s and d not in broken | vitals_rejected}
    assert metadata["counts"]["no_ed_stay"] == sum(s is None for s in expected.values())
    kept = {r["dicom_id"] for r in table(roots.cxr, mimic.CXR_METADATA) if r["ViewPosition"] in ("AP", "PA")}
    rejects = [json.loads(line) for p in (published(output) / "rejects").glob("*.jsonl") for line in p.open()]
    by_reason = {}
    for reject in rejects:
        by_reason.setdefault(reject["reason"], set()).add(reject["dicom_id"])
    for case in cases:
        for dicom_id in set(case["dicom_ids"]) & kept - vitals_rejected:  # those: checked below
            if case["expected_reject"] == "bad_study_time" or (dicom_id in broken and expected[dicom_id]):
                assert dicom_id in by_reason[case["expected_reject"]] and dicom_id not in rows, case
            elif case["expected_stay_id"] == "none":
                assert dicom_id not in rows, case
            else:
                assert int(rows[dicom_id]["stay_id"]) == case["expected_stay_id"], case
    assert duplicated and duplicated <= by_reason["duplicate_dicom_id"] and duplicated <= set(rows)
    assert vitals_rejected and vitals_rejected - broken == by_reason["vitalsign_row_rejected"]
    assert by_reason["bad_timestamp"] and all(r["stage"] == "read" for r in rejects
                                              if r["reason"] == "bad_timestamp")


def test_sample_features_are_as_of_the_xray(synthetic):
    """For every record, the latest-vitals features equal a brute-force 'latest charted value at or before the
    study time' over the raw vitalsign table, and counts of vitals and ED medications agree too."""
    roots, output, metadata, _, _ = synthetic
    records = tf_records(output, metadata)
    vitals, pyxis = {}, {}
    for row in table(roots.ed, mimic.VITALSIGN):
        try:
            vitals.setdefault(int(row["stay_id"]), []).append((mimic.parse_datetime(row["charttime"]), row))
        except ValueError:
            continue  # the planted bad timestamp is a reject
    for row in table(roots.ed, mimic.PYXIS):
        pyxis.setdefault(int(row["stay_id"]), []).append((mimic.parse_datetime(row["charttime"]), row["name"]))
    checked_late = 0
    for record in records.values():
        t = mimic.parse_datetime(record["study_datetime"].decode())
        t_exact = t + dt.timedelta(seconds=1)  # manifest time is truncated to the second; data are whole minutes
        stay_rows = sorted(vitals.get(record["stay_id"], []), key=lambda x: x[0])
        before = [row for when, row in stay_rows if when < t_exact]
        checked_late += len(before) < len(stay_rows)
        features = dict(zip(FEATURE_NAMES, record["features/values"]))
        missing = dict(zip(FEATURE_NAMES, record["features/missing"]))
        assert features["n_vitals"] == len(before)
        for name in mimic.VITALS:
            values = [float(r[name]) for r in before if r[name]]
            if values:
                assert features[f"last_{name}"] == pytest.approx(values[-1], abs=1e-3)
            else:
                assert missing[f"last_{name}"] == 1
        given = {name.lower() for when, name in pyxis.get(record["stay_id"], []) if when < t_exact}
        assert features["n_ed_meds"] == len(given)
    assert checked_late > 10  # many records had vitals charted after them, and none leaked


def test_same_input_and_config_give_byte_identical_output(synthetic, tmp_path):
    """A second run, in one in-process worker instead of the default worker process per core (other bundles,
    other processes) and reading each image in turn instead of 8 ahead on I/O threads, writes the same bytes:
    images, tokens, retrieval scores and all."""
    _, output, metadata, _, flags = synthetic
    assert metadata["config"]["image_read_ahead"] == 8
    again = run(flags + [f"--output={tmp_path}", ONE_WORKER, "--image_read_ahead=0"])
    for name in metadata["outputs"]["files"]:
        assert hashlib.sha256((published(tmp_path) / name).read_bytes()).digest() == \
            hashlib.sha256((published(output) / name).read_bytes()).digest(), name
    strip = lambda m: {**m, "config": {**m["config"], "output": None, "image_read_ahead": None}}  # noqa: E731
    assert json.dumps(strip(again)) == json.dumps(strip(metadata))  # key order too: metadata.json's bytes


def without_scores(raw: bytes) -> bytes:
    """A serialized Example without its rag/scores feature, re-serialized with its features in key order."""
    example = Example.FromString(raw)
    del example.features.feature["rag/scores"]
    return example.SerializeToString(deterministic=True)


def test_other_cpu_kernels_change_only_the_retrieval_scores_last_bits(synthetic, tmp_path):
    """Byte-identical output is promised on one CPU type (README, "Text"): another CPU takes other kernel variants.
    The same run with torch's generic kernels in every process (ATEN_CPU_CAPABILITY=default) instead of this
    machine's AVX2/AVX-512 ones: every file the same but the TFRecords, whose records differ only in rag/scores, by
    float rounding; the retrieved passages, so the enhanced notes and their tokens, and metadata.json are the same."""
    import torch

    _, output, metadata, _, flags = synthetic
    done = subprocess.run([sys.executable, "-m", "beam_pipeline.run", *flags, f"--output={tmp_path}"],
                          env={**os.environ, "ATEN_CPU_CAPABILITY": "default"}, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    strip = lambda m: {**m, "config": {**m["config"], "output": None}}  # noqa: E731
    assert json.dumps(strip(load_metadata(str(tmp_path)))) == json.dumps(strip(metadata))
    changed = 0
    for name in metadata["outputs"]["files"]:
        ours, theirs = published(output) / name, published(tmp_path) / name
        if not name.endswith(".tfrecord"):
            assert ours.read_bytes() == theirs.read_bytes(), name
            continue
        for a, b in zip(read_records(str(ours)), read_records(str(theirs)), strict=True):
            scores, other_scores = (parse_example(raw)["rag/scores"] for raw in (a, b))
            assert np.allclose(scores, other_scores, rtol=0, atol=1e-6)
            assert without_scores(a) == without_scores(b)  # every other feature, to the bit
            changed += scores != other_scores
    assert changed or torch.backends.cpu.get_cpu_capability() == "DEFAULT"  # else both runs took the same kernels


@pytest.fixture(scope="module")
def open_data(tmp_path_factory):
    base = tmp_path_factory.mktemp("open")
    roots = sample.generate_on_open_data(base / "sample", OPEN_DATA, seed=0)
    output = base / "out"
    metadata = run([f"--mimic_cxr_root={roots.cxr}", f"--mimic_ed_root={roots.ed}", f"--mimic_iv_root={roots.iv}",
                    f"--output={output}", OFFLINE_TEXT, ONE_WORKER])
    cases = json.loads((base / "sample" / "SAMPLE.json").read_text())["cases"]
    return roots, output, metadata, cases


def test_real_ed_demo_rows_link_like_brute_force(open_data):
    roots, output, metadata, cases = open_data
    rows = manifest(output)
    expected = brute_force_links(roots)
    broken = broken_images(cases)
    assert {d: int(r["stay_id"]) for d, r in rows.items()} == {d: s for d, s in expected.items()
                                                              if s and d not in broken}
    assert len(rows) > 50
    documented = {d: int(r["stay_id"]) for d, r in rows.items() if r["subject_id"] == "10000032"}
    assert documented["02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"] == 33258284
    assert documented["2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab"] == 38112554
    assert documented["68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714"] == 39399961  # not 32952584 (back-to-back)
    assert documented["fffabebf-74fd3a1f-673b6b41-96ec0ac9-2ab69818"] == 39399961


def test_real_ed_demo_notes_and_checksums(open_data):
    roots, output, metadata, _ = open_data
    records = tf_records(output, metadata)
    ages = [dict(zip(FEATURE_NAMES, r["features/values"]))["age"] for r in records.values()]
    assert all(18 <= a <= 91 for a in ages)
    for record in records.values():
        note = record["note/text"].decode()
        assert not BAD_TEXT.search(note), note
    the_note = records["68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714"]["note/text"].decode()
    assert the_note.startswith("52-year-old female arriving by ambulance. Chief complaint: Abdominal distention")
    for folder, tables in ((ED_DEMO, ("edstays", "triage", "vitalsign", "medrecon", "pyxis")),
                           (IV_DEMO, ("patients",))):
        sums = dict(reversed(line.split()) for line in (folder / "SHA256SUMS.txt").read_text().splitlines() if line)
        for name in tables:
            t = mimic.TABLES[name]
            assert metadata["inputs"][name]["sha256"] == sums[f"{t.subdir}/{t.filename}"]
