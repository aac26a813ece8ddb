"""--cohort=cxr_report end to end on the generated sample tree: the study choice, report reading and length filter
against a direct reading of the rules over the raw files, the instruction JSONL, patient-disjoint splits, the
release's zip read like the tree, byte-identical reruns."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest

from beam_pipeline import mimic, sample
from beam_pipeline.cohorts import report_sections as rs
from beam_pipeline.run import run
from cohort_files import examples, read_csv, table_rows
from conftest import ONE_WORKER, published


def report_argv(roots: sample.SampleRoots, reports: str, output: Path, *flags: str) -> list[str]:
    return ["--cohort=cxr_report", f"--mimic_cxr_root={roots.cxr}", f"--mimic_cxr_reports={reports}",
            f"--output={output}", "--image_size=32", *flags]


@pytest.fixture(scope="session")
def report_tree(tmp_path_factory):
    return sample.generate(tmp_path_factory.mktemp("cxr-report") / "sample", subjects=120, seed=5)


@pytest.fixture(scope="session")
def report_run(report_tree, tmp_path_factory):
    """The README's command in a fresh interpreter, reports from the tree: (run folder, metadata)."""
    output = tmp_path_factory.mktemp("cxr-report-out") / "out"
    done = subprocess.run([sys.executable, "-m", "beam_pipeline.run",
                           *report_argv(report_tree, report_tree.cxr, output)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    folder = published(output)
    return folder, json.loads((folder / "metadata.json").read_text())


def expected(roots: sample.SampleRoots, one_per_subject: bool = False) -> tuple[dict[str, dict], dict[str, int]]:
    """dicom_id -> (study, target) per the rules, and the drop counts."""
    studies = defaultdict(list)
    for r in table_rows(roots.cxr, mimic.CXR_METADATA):
        if r["ViewPosition"] == "PA":
            try:
                t = mimic.parse_study_datetime(r["StudyDate"], r["StudyTime"])
            except ValueError:
                continue
            studies[(int(r["subject_id"]), int(r["study_id"]))].append((r["dicom_id"], t))
    kept, drops = {}, defaultdict(int)
    for (subject, study), images in sorted(studies.items()):
        path = Path(roots.cxr, mimic.report_path(subject, study))
        if not path.exists():
            drops["no_report"] += 1
            continue
        findings, impression, target = rs.target(rs.decode(path.read_bytes()))
        words = len(target.split())
        reason = ("no_findings_or_impression" if not target else "target_too_short" if words < 20 else
                  "target_too_long" if words > 65 else None)
        if reason:
            drops[reason] += 1
            continue
        dicom_id, t = min(images)
        kept[dicom_id] = {"subject_id": subject, "study_id": study, "time": t, "target": target,
                          "findings": findings, "impression": impression}
    if one_per_subject:
        first = {}
        for dicom_id, k in sorted(kept.items(), key=lambda item: (item[1]["time"], item[1]["study_id"])):
            first.setdefault(k["subject_id"], dicom_id)
        drops["not_first_of_subject"] = len(kept) - len(first)
        kept = {d: kept[d] for d in first.values()}
    return kept, dict(drops)


def test_targets_and_drops_match_the_rules_read_directly(report_tree, report_run):
    folder, metadata = report_run
    want, drops = expected(report_tree)
    records = examples(folder, "dicom_id")
    rejects = [json.loads(line) for p in (folder / "rejects").glob("*.jsonl") for line in p.open()]
    rejected = {r["dicom_id"] for r in rejects if r["stage"] in ("images", "join", "split", "report")}
    assert {k.decode() for k in records} == set(want) - rejected
    assert {k: v for k, v in metadata["counts"]["dropped"].items() if v} == drops
    for key, example in records.items():
        w = want[key.decode()]
        assert example["report/target"] == [w["target"].encode()]
        assert example["report/findings"] == [w["findings"].encode()]
        assert example["report/impression"] == [w["impression"].encode()]
        assert 20 <= example["report/words"][0] <= 65 and example["view_position"] == [b"PA"]
    c = metadata["counts"]
    assert c["studies"] == sum(c["dropped"].values()) + c["rejected"] + c["matched"]
    assert sum(c["target_words"].values()) == c["matched"]


def test_instruction_examples_and_patient_disjoint_splits(report_run):
    folder, metadata = report_run
    rows = {r["dicom_id"]: r for p in sorted((folder / "manifest").glob("*.csv")) for r in read_csv(p)}
    by_subject = defaultdict(set)
    for r in rows.values():
        by_subject[r["subject_id"]].add(r["split"])
    assert all(len(splits) == 1 for splits in by_subject.values())
    records = examples(folder, "dicom_id")
    seen = set()
    for split in mimic.SPLITS:
        [path] = (folder / "instructions").glob(f"{split}-*.jsonl")
        for line in path.read_text().splitlines():
            example = json.loads(line)
            user, assistant = example["messages"]
            assert user["role"] == "user" and assistant["role"] == "assistant"
            assert user["content"][0] == {"type": "text", "text": metadata["config"]["instruction"]}
            assert user["content"][1] == {"type": "image",
                                          "image": records[example["id"].encode()]["image/path"][0].decode()}
            assert assistant["content"] == [{"type": "text",
                                             "text": records[example["id"].encode()]["report/target"][0].decode()}]
            assert example["split"] == split == rows[example["id"]]["split"]
            seen.add(example["id"])
    assert seen == set(rows)


def test_the_release_zip_reads_like_the_tree(report_tree, report_run, tmp_path):
    folder, _ = report_run
    archive = tmp_path / "mimic-cxr-reports.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(Path(report_tree.cxr, "files").rglob("*.txt")):
            zipped.write(path, "mimic-cxr-reports/" + str(path.relative_to(report_tree.cxr)))
    run(report_argv(report_tree, str(archive), tmp_path / "zip", ONE_WORKER))
    other = published(tmp_path / "zip")
    for sub in ("tfrecords", "manifest", "instructions", "rejects"):
        names = sorted(p.name for p in (folder / sub).iterdir())
        assert names == sorted(p.name for p in (other / sub).iterdir())
        assert filecmp.cmpfiles(folder / sub, other / sub, names, shallow=False)[0] == names, sub


def test_one_per_subject_keeps_the_earliest_passing_study(report_tree, tmp_path):
    metadata = run(report_argv(report_tree, report_tree.cxr, tmp_path / "one", ONE_WORKER, "--one_per_subject",
                               "--images=false"))
    want, drops = expected(report_tree, one_per_subject=True)
    rows = {r["dicom_id"] for p in (published(tmp_path / "one") / "manifest").glob("*.csv") for r in read_csv(p)}
    assert rows == set(want)
    assert metadata["counts"]["dropped"]["not_first_of_subject"] == drops["not_first_of_subject"]
