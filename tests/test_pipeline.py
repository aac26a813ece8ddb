"""The whole job on small hand-built MIMIC trees where every outcome is known in advance."""

import csv
import datetime as dt
import gzip
import json
import logging
import re
from pathlib import Path

import pytest

from beam_pipeline import accounting, failpoints, mimic, report
from beam_pipeline.accounting import NAMESPACE
from beam_pipeline.fileio import tfrecord
from beam_pipeline.fileio.metadata import summarize_outputs
from beam_pipeline.readers.common import load_metadata
from beam_pipeline.cohorts.ed_cxr import funnel as format_funnel
from beam_pipeline.run import execute, main, parse, run
from beam_pipeline.transforms.snapshot import FEATURE_NAMES
from conftest import ONE_WORKER, OFFLINE_TEXT, metadata_row, published, radiograph_jpeg, upload_tree

SUBJECT, OTHER = 10000001, 10000002
T0 = dt.datetime(2150, 3, 1, 10, 0)
H = dt.timedelta(hours=1)


def when(delta: dt.timedelta) -> str:
    return str(T0 + delta)


def vitals(minutes, hr, stay_id=30000001):
    return {"subject_id": SUBJECT, "stay_id": stay_id, "charttime": when(dt.timedelta(minutes=minutes)),
            "heartrate": hr, "temperature": 98.6}


def scenario():
    images = [
        metadata_row("d-at-intime", SUBJECT, 50000001, when(0 * H)),
        metadata_row("d-mid", SUBJECT, 50000002, when(2 * H), view="AP"),
        metadata_row("d-24h", SUBJECT, 50000003, when(24 * H)),
        metadata_row("d-24h-1s", SUBJECT, 50000004, when(24 * H + dt.timedelta(seconds=1))),
        metadata_row("d-stay-b", SUBJECT, 50000005, when(31 * H)),
        {**metadata_row("d-lateral", SUBJECT, 50000001, when(0 * H)), "ViewPosition": "LATERAL"},
        {**metadata_row("d-blank-view", SUBJECT, 50000001, when(0 * H)), "ViewPosition": ""},
        {**metadata_row("d-bad-time", SUBJECT, 50000006, when(H)), "StudyTime": "25xx"},
        metadata_row("d-no-stay", OTHER, 50000007, when(H)),
    ]
    stays = [{"subject_id": SUBJECT, "stay_id": 30000001, "intime": when(0 * H), "outtime": when(5 * H),
              "gender": "F", "arrival_transport": "AMBULANCE"},
             {"subject_id": SUBJECT, "stay_id": 30000002, "intime": when(30 * H), "outtime": when(36 * H),
              "gender": "F", "arrival_transport": "WALK IN"}]
    triage = [{"subject_id": SUBJECT, "stay_id": 30000001, "heartrate": 110, "acuity": 2,
               "chiefcomplaint": 'Dyspnea, "worse"\nsince AM', "pain": "8"}]
    vital_rows = [vitals(60, 80), vitals(180, 187)]  # 187 is charted after d-mid (2 h) and must never show
    labels = [{"subject_id": SUBJECT, "study_id": 50000002, "Edema": "1.0", "Pneumonia": "-1.0"},
              {"subject_id": SUBJECT, "study_id": 50000003}]  # all blank
    patients = [{"subject_id": SUBJECT, "gender": "F", "anchor_age": 70, "anchor_year": 2148}]
    splits = [{"dicom_id": d["dicom_id"], "study_id": d["study_id"], "subject_id": d["subject_id"],
               "split": "validate"} for d in images]
    return dict(images=images, stays=stays, triage=triage, vitals=vital_rows, labels=labels, patients=patients,
                splits=splits)


def argv(roots, output, *extra):
    cxr, ed, iv = roots
    return [f"--mimic_cxr_root={cxr}", f"--mimic_ed_root={ed}", f"--mimic_iv_root={iv}", f"--output={output}",
            OFFLINE_TEXT, ONE_WORKER, *extra]


def read_tfrecords(output: Path) -> dict[str, dict]:
    output = published(output)
    records = {}
    for path in sorted((output / "tfrecords").glob("*.tfrecord")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            length = int.from_bytes(data[offset:offset + 8], "little")
            example = tfrecord.parse_example(data[offset + 12:offset + 12 + length])
            records[example["dicom_id"][0].decode()] = example
            offset += 16 + length
    return records


def read_manifest(output: Path) -> list[dict]:
    output = published(output)
    rows = []
    for path in sorted((output / "manifest").glob("manifest-*.csv")):
        with open(path, newline="") as f:
            rows.extend(csv.DictReader(f))
    return rows


@pytest.fixture
def scenario_run(mini_mimic, tmp_path):
    roots = mini_mimic(**scenario())
    output = tmp_path / "out"
    config, options = parse(argv(roots, output))
    result = execute(config, options)
    result.wait_until_finish()
    return roots, output, result, json.loads((published(output) / "metadata.json").read_text())


def test_outcome_of_every_image(scenario_run):
    _, output, _, metadata = scenario_run
    manifest = {row["dicom_id"]: row for row in read_manifest(output)}
    assert set(manifest) == {"d-at-intime", "d-mid", "d-24h", "d-stay-b"}
    assert manifest["d-24h"]["stay_id"] == "30000001" and manifest["d-stay-b"]["stay_id"] == "30000002"
    assert manifest["d-mid"] == {
        "subject_id": str(SUBJECT), "study_id": "50000002", "dicom_id": "d-mid", "stay_id": "30000001",
        "split": manifest["d-mid"]["split"], "study_datetime": "2150-03-01 12:00:00",
        "ed_intime": "2150-03-01 10:00:00", "ed_outtime": "2150-03-01 15:00:00", "hours_from_arrival": "2.000",
        "after_ed_departure": "0"}
    assert {d: r["after_ed_departure"] for d, r in manifest.items()} == {
        "d-at-intime": "0", "d-mid": "0", "d-24h": "1", "d-stay-b": "0"}  # d-24h: 19 h after its stay's outtime
    counts = metadata["counts"]
    assert {k: counts[k] for k in ("images_total", "images_unreadable", "images_other_view", "images_kept_view",
                                   "matched", "no_ed_stay", "rejected")} == {
        "images_total": 9, "images_unreadable": 0, "images_other_view": 2, "images_kept_view": 7, "matched": 4,
        "no_ed_stay": 2, "rejected": 1}
    assert counts["rejected_by_reason"] == {"metadata/bad_study_time": 1}
    assert counts["labels"] == {"labeled": 1, "all_blank": 1, "no_label_row": 2}
    assert counts["after_ed_departure"] == 1 and counts["dropped_after_ed_departure"] == 0
    assert sum(counts["per_split"].values()) == 4 and sum(counts["patients_per_split"].values()) == 1
    rejects = [json.loads(line) for path in (published(output) / "rejects").glob("*.jsonl") for line in path.open()]
    assert rejects == [{"stage": "metadata", "reason": "bad_study_time", "subject_id": SUBJECT, "study_id": 50000006,
                        "dicom_id": "d-bad-time", "detail": "cxr_metadata: StudyTime is not HHMMSS[.ffffff]: '25xx'"}]


def test_vitals_after_the_xray_never_reach_note_or_features(scenario_run):
    _, output, _, _ = scenario_run
    record = read_tfrecords(output)["d-mid"]
    note = record["note/text"][0].decode()
    features = dict(zip(FEATURE_NAMES, record["features/values"]))
    assert "heart rate 80 bpm" in note and "187" not in note
    assert features["last_heartrate"] == 80 and features["n_vitals"] == 1 and features["triage_heartrate"] == 110
    assert note.startswith("72-year-old female arriving by ambulance. Chief complaint: Dyspnea, \"worse\" since AM.")
    later = read_tfrecords(output)["d-24h"]
    assert dict(zip(FEATURE_NAMES, later["features/values"]))["last_heartrate"] == 187  # known by then


def test_labels_and_feature_names_in_records(scenario_run):
    _, output, _, metadata = scenario_run
    records = read_tfrecords(output)
    edema, pneumonia = mimic.LABELS.index("Edema"), mimic.LABELS.index("Pneumonia")
    mid = records["d-mid"]
    assert mid["labels/chexpert"][edema] == 1.0 and mid["labels/chexpert"][pneumonia] == -1.0
    assert mid["labels/binary"][edema] == 1 and mid["labels/binary"][pneumonia] == 0  # default policy: zeros
    assert mid["labels/mask"] == [1] * 14 and mid["labels/present"] == [1] and mid["labels/status"] == [b"labeled"]
    for dicom_id, status in (("d-24h", b"all_blank"), ("d-at-intime", b"no_label_row")):  # unlabelled, not negative
        record = records[dicom_id]
        assert record["labels/mask"] == [0] * 14 and record["labels/binary"] == [-1] * 14
        assert record["labels/present"] == [0] and record["labels/status"] == [status]
    assert metadata["label_order"] == list(mimic.LABELS)
    assert metadata["feature_names"] == list(FEATURE_NAMES)
    assert set(metadata["features"]) == set(mid)


def test_layout_is_exact_and_counts_match_beam_metrics(scenario_run):
    _, output, result, metadata = scenario_run
    folder = published(output)
    assert sorted(str(p.relative_to(output)) for p in output.iterdir()) == ["LATEST", "runs"]
    assert (output / "LATEST").read_text() == f"runs/{folder.name}\n" and list((output / "runs").iterdir()) == [folder]
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == ["manifest/manifest-00000-of-00001.csv", "metadata.json", "rejects/rejects-00000-of-00001.jsonl",
                     "tfrecords/dataset_info.json", "tfrecords/features.json",
                     "tfrecords/test-00000-of-00001.tfrecord", "tfrecords/train-00000-of-00001.tfrecord",
                     "tfrecords/val-00000-of-00001.tfrecord"]
    assert metadata["outputs"]["files"] == files[:1] + files[2:]
    metrics = {m.key.metric.name: m.committed for m in result.metrics().query()["counters"]
               if m.key.metric.namespace == NAMESPACE}
    counts = metadata["counts"]
    for name in ("images_kept_view", "images_other_view", "matched", "no_ed_stay", "rejected"):
        assert metrics[name] == counts[name]
    assert metrics["rows_read/cxr_metadata"] == counts["images_total"]
    decoded = counts["images_decoded_at"]  # every written image was decoded once, at one scale
    assert decoded and sum(decoded.values()) == counts["matched"]
    assert decoded == {k: metrics[f"images_decoded_at_{k}"] for k in decoded}
    assert counts["images_size_differs_from_metadata"] == metrics.get("images_size_differs_from_metadata", 0)


def test_official_split_is_the_default_and_rejects_images_missing_from_the_split_file(mini_mimic, tmp_path):
    tables = scenario()
    tables["splits"] = [row for row in tables["splits"] if row["dicom_id"] != "d-24h"]
    roots = mini_mimic(**tables)
    metadata = run(argv(roots, tmp_path / "out", "--uncertain_policy=ones"))
    counts = metadata["counts"]
    assert metadata["config"]["split_strategy"] == "official" and metadata["split"]["strategy"] == "official"
    assert counts["per_split"] == {"train": 0, "val": 3, "test": 0}
    assert counts["rejected_by_reason"] == {"metadata/bad_study_time": 1, "split/not_in_official_split": 1}
    assert counts["images_kept_view"] == counts["matched"] + counts["no_ed_stay"] + counts["rejected"]
    mid = read_tfrecords(tmp_path / "out")["d-mid"]
    assert mid["labels/binary"][mimic.LABELS.index("Pneumonia")] == 1


def test_a_patients_official_split_comes_from_the_whole_split_file_whatever_the_views(mini_mimic, tmp_path):
    """The subject's kept-view images are in official train, its LATERAL image (another view by default) in test:
    every one of its records goes to test, with or without LATERAL kept, so two runs never put it in two splits."""
    tables = scenario()
    tables["splits"] = [{**row, "split": "test" if row["dicom_id"] == "d-lateral" else "train"}
                        for row in tables["splits"]]
    roots = mini_mimic(**tables)
    splits, sections = {}, []
    for name, views in (("default", ()), ("lateral", ("--views=AP,PA,LATERAL",))):
        sections.append(run(argv(roots, tmp_path / name, *views))["split"])
        splits[name] = {row["dicom_id"]: row["split"] for row in read_manifest(tmp_path / name)}
    assert splits["default"] == dict.fromkeys(["d-at-intime", "d-mid", "d-24h", "d-stay-b"], "test")
    assert splits["lateral"] == {**splits["default"], "d-lateral": "test"}
    for section in sections:  # the file's count is the same in both runs; 4 records left their own train
        assert section["split_file_patients_in_several_splits"] == 1
        assert section["reassigned_patients"] == 1 and section["reassigned_records"] == 4


def test_no_note_text_in_logs(mini_mimic, tmp_path, caplog):
    """Nothing at INFO or above carries row contents. (Beam itself logs whole elements at DEBUG: never enable
    DEBUG logging on credentialed data; the README says so.)"""
    roots = mini_mimic(**scenario())
    with caplog.at_level(logging.INFO):
        run(argv(roots, tmp_path / "out"))
    assert caplog.records  # Beam did log
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "Dyspnea" not in text and "worse" not in text


def test_existing_output_is_refused_then_overwritten(mini_mimic, tmp_path, capsys):
    roots = mini_mimic(**scenario())
    run(argv(roots, tmp_path / "out"))
    with pytest.raises(SystemExit, match="already holds the outputs of a run.*--overwrite"):
        main(argv(roots, tmp_path / "out"))
    first = published(tmp_path / "out")
    (first / "tfrecords" / "stale-00000-of-00009.tfrecord").write_bytes(b"old")
    main(argv(roots, tmp_path / "out", "--overwrite"))
    assert not first.exists() and list((tmp_path / "out" / "runs").iterdir()) == [published(tmp_path / "out")]
    assert "matched and written" in capsys.readouterr().out


def test_missing_column_fails_before_running(mini_mimic, tmp_path):
    roots = mini_mimic(**scenario())
    path = Path(roots[1]) / "ed" / "vitalsign.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("subject_id,stay_id,charttime,temperature,heartrate,resprate,o2sat,sbp,rhythm,pain\n")
    with pytest.raises(SystemExit, match=f"{path}: required column 'dbp'"):
        main(argv(roots, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--windw_end_hours=12"], "unknown flags: --windw_end_hours"),
    (["--split_fractions=0.5,0.5,0.5"], "must be three non-negative numbers summing to 1"),
    (["--window_start_hours=5", "--window_end_hours=1"], "window_start_hours must be <="),
    (["--uncertain_policy=maybe"], "invalid choice"),
    (["--views", "AP", "PA"], "unexpected arguments: PA"),  # Beam alone would drop PA with a warning
    (["--overwrite", "--keep_runs"], "--overwrite (replace the published run) and --keep_runs"),
])
def test_bad_flags_are_errors(flags, message, capsys, tmp_path):
    with pytest.raises(SystemExit):
        parse(argv(("a", "b", "c"), tmp_path, *flags))
    assert message in capsys.readouterr().err


def test_reads_and_writes_gs_paths_with_the_same_result(mini_mimic, tmp_path, gcs_emulator):
    """The whole job from gs:// inputs to gs:// outputs (GCS emulator on loopback) gives the local run's bytes."""
    from google.api_core.exceptions import Conflict

    roots = mini_mimic(**scenario())
    try:
        gcs_emulator.create_bucket("mimic-test")
    except Conflict:  # run before in this session (the emulator lives for the whole session): start empty again
        for blob in gcs_emulator.list_blobs("mimic-test"):
            blob.delete()
    gs_roots = [upload_tree(gcs_emulator, "mimic-test", Path(root), f"in/{Path(root).name}") for root in roots]
    local = run(argv(roots, tmp_path / "local"))
    remote = run(argv(gs_roots, "gs://mimic-test/out"))
    assert remote["counts"] == local["counts"]
    assert remote["inputs"]["edstays"]["sha256"] == local["inputs"]["edstays"]["sha256"]
    bucket = gcs_emulator.bucket("mimic-test")
    run_id = remote["config"]["output"].split("/")[-1]
    assert bucket.blob("out/LATEST").download_as_bytes() == f"runs/{run_id}\n".encode()
    for name in local["outputs"]["files"]:
        assert bucket.blob(f"out/runs/{run_id}/{name}").download_as_bytes() == \
            (published(tmp_path / "local") / name).read_bytes(), name
    with pytest.raises(SystemExit, match="already holds the outputs"):
        main(argv(gs_roots, "gs://mimic-test/out"))
    again = run(argv(gs_roots, "gs://mimic-test/out", "--overwrite"))  # replaced: only the new run is left
    assert [b.name for b in bucket.list_blobs(prefix="out/") if "/metadata.json" in b.name] == \
        [f"out/runs/{again['config']['output'].split('/')[-1]}/metadata.json"]
    assert not list(bucket.list_blobs(prefix=f"out/runs/{run_id}/"))
    page_path = f"{again['config']['output']}/report/index.html"
    assert report.build("gs://mimic-test/out") == page_path  # the after-Dataflow step
    page = bucket.blob(page_path[len("gs://mimic-test/"):]).download_as_bytes().decode()
    assert f"{report.Count(local['counts']['matched'])} records" in page  # 4: shown as a suppressed small cell


def test_bad_images_are_rejected_and_the_job_goes_on(mini_mimic, tmp_path):
    """Missing, empty, truncated and random-bytes images become rejects with a reason; counts still add up."""
    good = radiograph_jpeg(120, 100)
    roots = mini_mimic(**scenario(), image_bytes={"d-at-intime": None, "d-mid": b"", "d-24h": good[:len(good) // 2],
                                                   "d-stay-b": bytes(range(256)) * 20})
    metadata = run(argv(roots, tmp_path / "out"))
    counts = metadata["counts"]
    assert counts["matched"] == 0 and counts["rejected"] == 5
    # funnel numbers are of written records: the four records built (with label status, one after departure) and
    # then rejected at the image stage are in none of them
    assert counts["labels"] == {"labeled": 0, "all_blank": 0, "no_label_row": 0}
    assert counts["after_ed_departure"] == 0 and counts["written_notes"] == {"redacted": 0, "truncated": 0}
    assert counts["rejected_by_reason"] == {"metadata/bad_study_time": 1, "images/missing_image": 1,
                                            "images/empty_image": 1, "images/truncated_image": 1,
                                            "images/not_a_jpeg": 1}
    assert counts["images_kept_view"] == counts["matched"] + counts["no_ed_stay"] + counts["rejected"]
    assert not (tmp_path / "out" / "LATEST").exists()  # a run that wrote no records is not published
    rejects = {r["dicom_id"]: r for path in (Path(metadata["config"]["output"]) / "rejects").glob("*.jsonl")
               for r in map(json.loads, path.open())}
    assert rejects["d-mid"]["stage"] == "images" and rejects["d-mid"]["subject_id"] == SUBJECT
    assert "files/p10/p10000001/s50000001/d-at-intime.jpg" in rejects["d-at-intime"]["detail"]


def test_images_can_be_left_out(mini_mimic, tmp_path):
    roots = mini_mimic(**scenario(), image_bytes={"d-mid": None})
    metadata = run(argv(roots, tmp_path / "out", "--images=false"))
    assert metadata["counts"]["matched"] == 4 and metadata["image"] is None
    assert not any(name.startswith("image/encoded") for name in metadata["features"])
    assert "image/encoded" not in read_tfrecords(tmp_path / "out")["d-mid"]
    page = Path(report.build(str(tmp_path / "out"))).read_text()
    assert "Sample validation records (0)" in page and 'id="funnel"' in page


def test_kept_runs_publish_latest_only_after_success(mini_mimic, tmp_path, monkeypatch):
    """--keep_runs: a failed rerun leaves LATEST and the previous run alone; a successful one moves LATEST, keeps
    the earlier complete run and deletes what the failed one left behind."""
    base = tmp_path / "out"
    roots = mini_mimic(**scenario())
    first = run(argv(roots, base))
    latest = (base / "LATEST").read_text()
    assert latest == f"runs/{Path(first['config']['output']).name}\n" and Path(first["config"]["output"]).parent == \
        base / "runs"
    assert load_metadata(str(base)) == first  # readers follow LATEST
    monkeypatch.setenv(failpoints.ENV, "before_metadata:raise")  # every shard written, then the job fails
    with pytest.raises(Exception, match=failpoints.ENV):
        run(argv(roots, base, "--keep_runs"))
    monkeypatch.delenv(failpoints.ENV)
    assert (base / "LATEST").read_text() == latest
    failed = [r for r in (base / "runs").iterdir() if r.name != Path(first["config"]["output"]).name]
    assert len(failed) == 1 and list(failed[0].glob("tfrecords/*.tfrecord"))  # shards, but...
    assert not (failed[0] / "metadata.json").exists()  # ...a failed run is never complete
    assert load_metadata(str(base)) == first  # the previous run is intact
    second = run(argv(roots, base, "--keep_runs"))
    assert load_metadata(str(base)) == second and load_metadata(first["config"]["output"]) == first
    assert sorted(r.name for r in (base / "runs").iterdir()) == sorted(
        Path(m["config"]["output"]).name for m in (first, second))


def test_progress_is_logged_with_counts_and_rates_only(mini_mimic, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(accounting, "PROGRESS_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="beam_pipeline.progress"):
        run(argv(mini_mimic(**scenario()), tmp_path / "out"))
    lines = [r.getMessage() for r in caplog.records if r.name == "beam_pipeline.progress"]
    assert "progress: records written 4 (" in "\n".join(lines) and any("kept-view images" in line for line in lines)
    assert all(re.fullmatch(r"progress: [a-z -]+ \d+ \(\d+\.\d/s\)", line) for line in lines)


def test_ed_departure_in_records_notes_and_the_within_ed_stay_flag(scenario_run, mini_mimic, tmp_path):
    """d-24h is taken 19 h after its stay ended (outtime 15:00): flagged in manifest and TFRecord, and its note says
    the patient left; --within_ed_stay drops it and counts it, and the funnel still adds up."""
    _, output, _, _ = scenario_run
    records = read_tfrecords(output)
    late, mid = records["d-24h"], records["d-mid"]
    assert late["after_ed_departure"] == [1] and late["ed_outtime"] == [b"2150-03-01 15:00:00"]
    assert mid["after_ed_departure"] == [0] and mid["ed_outtime"] == [b""]  # in the ED: its departure is the future
    assert "Left the ED 19 h ago, after 5 h in the ED." in late["note/text"][0].decode()
    assert "In the ED for" not in late["note/text"][0].decode()
    assert "In the ED for 2 h." in mid["note/text"][0].decode()
    metadata = run(argv(mini_mimic(**scenario()), tmp_path / "within", "--within_ed_stay"))
    counts = metadata["counts"]
    assert {r["dicom_id"] for r in read_manifest(tmp_path / "within")} == {"d-at-intime", "d-mid", "d-stay-b"}
    assert counts["matched"] == 3 and counts["dropped_after_ed_departure"] == 1 and counts["after_ed_departure"] == 0
    assert counts["images_kept_view"] == counts["matched"] + counts["no_ed_stay"] + \
        counts["dropped_after_ed_departure"] + counts["rejected"]
    assert counts["labels"] == {"labeled": 1, "all_blank": 0, "no_label_row": 2}  # d-24h (all blank) is not written
    funnel = format_funnel(counts, {"views": ["AP", "PA"]})
    assert re.search(r"after ED departure, dropped +1  only with --within_ed_stay", funnel)
    assert re.search(r"of which after ED departure +0$", funnel, re.MULTILINE)


def test_funnel_lines_add_up_and_count_written_records(scenario_run):
    _, _, _, metadata = scenario_run
    counts = metadata["counts"]
    funnel = format_funnel(counts, {"views": ["AP", "PA"]})
    number = {m.group(1).strip(): int(m.group(2)) for m in re.finditer(r"^(.{36}) *(\d+)", funnel, re.MULTILINE)}
    assert number["kept views (AP,PA)"] == sum(number[k] for k in (
        "no ED stay in window", "after ED departure, dropped", "rejected", "matched and written"))
    assert number["of which without labels"] == 3 and number["of which after ED departure"] == 1
    assert "no CheXpert row 2 / all blank 1" in funnel


def test_ignore_policy_never_turns_uncertain_into_zero(mini_mimic, tmp_path):
    run(argv(mini_mimic(**scenario()), tmp_path / "out", "--uncertain_policy=ignore"))
    mid = read_tfrecords(tmp_path / "out")["d-mid"]
    edema, pneumonia = mimic.LABELS.index("Edema"), mimic.LABELS.index("Pneumonia")
    assert (mid["labels/binary"][pneumonia], mid["labels/mask"][pneumonia]) == (-1, 0)  # uncertain
    assert (mid["labels/binary"][edema], mid["labels/mask"][edema]) == (1, 1)
    assert sum(mid["labels/mask"]) == 13 and mid["labels/present"] == [1]


def test_outputs_summary_does_not_depend_on_the_order_writers_finish():
    """metadata.json's ``outputs`` once listed kinds and splits in the order their files were written, so reruns
    could differ in bytes (seen between two runs of the same sample)."""
    files = [{"path": f"/out/{kind}/{group}-{shard}", "group": group, "records": 2 + shard, "bytes": 100 * shard}
             for kind, groups in (("tfrecords", ("train", "val", "test")), ("manifest", ("manifest",)),
                                  ("rejects", ("rejects",))) for group in groups for shard in range(2)]
    summaries = {json.dumps(summarize_outputs(order, "/out")) for order in (files, files[::-1], files[3:] + files[:3])}
    assert len(summaries) == 1
    summary = summarize_outputs(files, "/out")
    assert list(summary) == ["manifest", "rejects", "tfrecords", "files"]
    assert list(summary["tfrecords"]) == ["test", "train", "val"]
    assert summary["tfrecords"]["val"] == {"shards": 2, "records": 5, "bytes": 100}
