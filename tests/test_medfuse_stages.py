"""The medfuse cohorts' per-subject stages (cohorts/medfuse.py: stay selection, series windows, KeepStayEvents,
BuildStays) called directly on typed rows, and in-process runs over small hand-written trees of bad input:
conflicting admissions / patients rows are join rejects (never drops), a value beyond float32 is left out and
counted, a hadm_id shared by two subjects gives each its own series window, a stay set aside still counts towards its
admission's one ICU stay (or its sibling is rejected), rows rejected at read reject the stays that may need them, and
a repeated dicom_id pairs the same image whatever the arrival order."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from types import SimpleNamespace

import apache_beam as beam
import numpy as np
import pytest

from beam_pipeline import accounting, mimic
from beam_pipeline.cohorts import medfuse_stays
from beam_pipeline.cohorts.medfuse import (BuildStays, FitNormalizer, KeepStayEvents, _matrix, series_windows_of,
                                           stay_events, timeseries_csv)
from beam_pipeline.run import run
from beam_pipeline.transforms import hourly
from cohort_files import manifest
from conftest import ONE_WORKER, metadata_row, published, write_table
from test_medfuse_stays import HOUR, SUBJECT, T0, admission, icustay, patient, stay_of, typed

HADM, STAY = 20000001, 30000001
HR_ITEM, GLUCOSE_ITEM = 220045, 50931  # chartevents Heart Rate, labevents Glucose


def chart(minutes: float, value: str, valuenum: float | None, subject_id=SUBJECT, hadm_id=HADM, stay_id=STAY,
          start=T0) -> dict:
    return typed(mimic.CHARTEVENTS, subject_id=subject_id, hadm_id=hadm_id, stay_id=stay_id, itemid=HR_ITEM,
                 charttime=start + dt.timedelta(minutes=minutes), value=value, valuenum=valuenum, valueuom="bpm")


def lab(minutes: float, subject_id=SUBJECT, hadm_id=HADM, start=T0) -> dict:
    return typed(mimic.LABEVENTS, labevent_id=int(minutes) + subject_id, subject_id=subject_id, hadm_id=hadm_id,
                 itemid=GLUCOSE_ITEM, charttime=start + dt.timedelta(minutes=minutes), value="110", valuenum=110.0,
                 valueuom="mg/dL")


def stay_groups(admissions=None, patients=None, events=None) -> dict:
    """One adult single-unit 50 h stay with its admission, patient and two heart rates, unless overridden."""
    return {"icustays": [icustay(STAY, HADM, T0, T0 + 50 * HOUR)],
            "admissions": admissions or [admission(HADM, T0 - HOUR, T0 + 60 * HOUR)],
            "patients": patients or [patient()],
            "events": [chart(30, "80", 80.0), chart(90, "85", 85.0)] if events is None else events}


def build(task: str, groups: dict) -> tuple[list[dict], Counter, list]:
    """BuildStays on one subject -> (rejects, events summed, records); asserts the per-stay funnel adds up."""
    rejects, events, records = [], Counter(), []
    for item in BuildStays(task, "medfuse-v1").process((SUBJECT, groups)):
        if not isinstance(item, beam.pvalue.TaggedOutput):
            records.append(item)
        elif item.tag == accounting.REJECTS:
            rejects.append(item.value)
        else:
            events[item.value[0]] += item.value[1]
    dropped = sum(n for name, n in events.items() if name.startswith("dropped/"))
    assert events["stays"] == dropped + sum(n for k, n in events.items() if k.startswith("rejects/join/")) + len(
        records)
    return rejects, events, records


@pytest.mark.parametrize("task", ("ihm", "phenotyping"))
@pytest.mark.parametrize("table,versions", [
    ("admissions", {"admissions": [admission(HADM, T0 - HOUR, T0 + 60 * HOUR),
                                   admission(HADM, T0 - HOUR, T0 + 61 * HOUR)]}),
    ("patients", {"patients": [patient(anchor_age=60), patient(anchor_age=61)]})])
def test_a_stay_whose_admission_or_patient_rows_conflict_is_a_join_reject_not_a_drop(task, table, versions):
    rejects, events, records = build(task, stay_groups(**versions))
    assert [(r["stage"], r["reason"]) for r in rejects] == [("join", f"conflicting_{table}")]
    assert f"stay_id={STAY}: {table}" in rejects[0]["detail"] and "differ in" in rejects[0]["detail"]
    assert not records and not any(name.startswith("dropped/") for name in events)
    assert events[f"duplicates/conflicting_keys/{table}"] == 1 and events["stays"] == 1
    assert list(series_windows_of((SUBJECT, stay_groups(**versions)), task)) == []  # no events shuffled for it


def test_a_stay_without_its_admission_or_patient_is_still_a_drop():
    for groups, reason in ((stay_groups(admissions=[admission(HADM + 1, T0, T0 + HOUR)]), "no_admission"),
                           (stay_groups(patients=[patient(subject_id=SUBJECT + 1)]), "no_patient")):
        rejects, events, records = build("ihm", groups)
        assert not rejects and not records and events[f"dropped/{reason}"] == 1


def test_identical_copies_are_one_row_and_the_stay_is_written():
    groups = stay_groups(admissions=[admission(HADM, T0 - HOUR, T0 + 60 * HOUR)] * 2, patients=[patient()] * 2)
    rejects, events, records = build("ihm", groups)
    assert not rejects and [r.stay_id for r in records] == [STAY]
    assert events["duplicates/identical_rows/admissions"] == events["duplicates/identical_rows/patients"] == 1


def test_a_heart_rate_beyond_float32_is_left_out_and_counted_and_the_normaliser_still_fits():
    """1e39 is a finite float64 (it passes the FLOAT check at read) but inf in the float32 series, where it used to
    make FitNormalizer raise for any train stay."""
    events = [chart(30, "80", 80.0), chart(60, "___", 1e39), chart(90, "1" + "0" * 400, None)]
    rejects, counted, [record] = build("ihm", stay_groups(events=events))
    assert counted["stay_events/value_beyond_float32"] == 2 and counted["stay_events/in_series"] == 1
    assert [e[2] for e in record.events] == [80.0]
    fit = FitNormalizer()
    moments = fit.add_input(fit.add_input(fit.create_accumulator(), _matrix(record)), _matrix(record))
    assert fit.extract_output(moments).count == 2 * 48


def test_event_rows_find_their_own_subjects_window_when_two_subjects_share_a_hadm_id():
    """Both windows are in the side input whatever order they arrive in; before, one subject's window replaced the
    other's (keyed by hadm_id alone) and that subject's rows were thrown away before the shuffle."""
    other, later = SUBJECT + 1, T0 + 200 * HOUR

    def groups(subject_id, stay_id, start):
        return {"icustays": [icustay(stay_id, HADM, start, start + 50 * HOUR, subject_id=subject_id)],
                "admissions": [admission(HADM, start - HOUR, start + 60 * HOUR, subject_id=subject_id)],
                "patients": [patient(subject_id=subject_id)]}

    windows = [*series_windows_of((SUBJECT, groups(SUBJECT, STAY, T0)), "ihm"),
               *series_windows_of((other, groups(other, STAY + 1, later)), "ihm")]
    rows = [chart(30, "80", 80.0), lab(60), chart(30, "90", 90.0, subject_id=other, stay_id=STAY + 1, start=later),
            lab(60, subject_id=other, start=later)]
    for arrival in (windows, windows[::-1]):
        side = dict(arrival)
        assert [out for row in rows for out in KeepStayEvents().process(row, side)] == rows


def _train_subject(start: int) -> int:
    """A subject in neither MedFuse list whose salted hash puts it in train (the normaliser's input)."""
    test_flags, val_flags = medfuse_stays.load_split_files()
    return next(s for s in range(start, start + 1000) if s not in test_flags and s not in val_flags
                and medfuse_stays.subject_split(s, test_flags, val_flags, "medfuse-v1") == ("train", "hash_fallback"))


def test_a_run_over_bad_input_rejects_and_counts_instead_of_crashing(tmp_path):
    """In-process run of medfuse_ihm: a stay with conflicting admissions rows, one with conflicting patients rows,
    a train stay with a 1e39 heart rate, two subjects' stays sharing a hadm_id, two subjects' stays sharing a stay_id
    (both rejected: the stay_id keys the records); metadata.json's identities hold."""
    subjects = [_train_subject(90000000 + 10000 * i) for i in range(7)]
    conflicting_adm, conflicting_pat, huge, shared_a, shared_b, same_stay_a, same_stay_b = subjects
    icu, adm, pat, chartevents = [], [], [], []
    for n, subject in enumerate(subjects):
        hadm = HADM if subject in (shared_a, shared_b) else HADM + 10 + n
        start = T0 + n * 100 * HOUR
        stay = STAY + 99 if subject in (same_stay_a, same_stay_b) else STAY + n
        icu.append(icustay(stay, hadm, start, start + 50 * HOUR, subject_id=subject))
        adm.append(admission(hadm, start - HOUR, start + 60 * HOUR, subject_id=subject))
        pat.append(patient(subject_id=subject))
        chartevents += [chart(m, str(v), float(v), subject_id=subject, hadm_id=hadm, stay_id=stay, start=start)
                        for m, v in ((30, 80 + n), (150, 90 + n))]
    adm.append(admission(HADM + 10, T0 - HOUR, T0 + 70 * HOUR, subject_id=conflicting_adm))
    pat.append(patient(anchor_age=70, subject_id=conflicting_pat))
    chartevents.append(chart(60, "___", 1e39, subject_id=huge, hadm_id=HADM + 12, stay_id=STAY + 2,
                             start=T0 + 200 * HOUR))
    diagnoses = [typed(mimic.DIAGNOSES_ICD, subject_id=subject, hadm_id=HADM, seq_num=1, icd_code="4280",
                       icd_version=9) for subject in (shared_a, shared_b)]
    iv = tmp_path / "iv"
    for table, rows in ((mimic.ICUSTAYS, icu), (mimic.ADMISSIONS, adm), (mimic.PATIENTS, pat),
                        (mimic.CHARTEVENTS, chartevents), (mimic.LABEVENTS, [lab(60, subject_id=shared_a)]),
                        (mimic.DIAGNOSES_ICD, diagnoses)):
        write_table(iv, table, [{c: mimic_text(v) for c, v in row.items()} for row in rows])
    write_table(tmp_path / "cxr", mimic.CXR_METADATA, [metadata_row("d1", huge, 50000000, "2150-03-01 09:00:00")])
    metadata = run(["--cohort=medfuse_ihm", f"--mimic_cxr_root={tmp_path / 'cxr'}", f"--mimic_iv_root={iv}",
                    f"--output={tmp_path / 'out'}", ONE_WORKER])
    c = metadata["counts"]
    assert c["rejected_by_reason"] == {"join/conflicting_admissions": 1, "join/conflicting_patients": 1,
                                       "join/stay_id_of_several_subjects": 2}
    assert c["stays"] == 7 and c["matched"] == 3 and not any(c["dropped"].values())
    assert c["stay_events"]["value_beyond_float32"] == 1 and metadata["normalizer"]["rows"] == 3 * 48
    assert set(manifest(published(tmp_path / "out"), "stay_id")) == {STAY + 2, STAY + 3, STAY + 4}


def mimic_text(value) -> str:
    if isinstance(value, dt.datetime):
        return mimic.format_datetime(value)
    return "" if value is None else str(value)


def test_the_benchmark_csv_keeps_the_value_the_series_keeps_at_one_time():
    """Heart rates 9 and 10 at one time: the series keeps the larger number, 10; the CSV did keep "9" (the larger
    text) while events were ordered by their text."""
    events, _ = stay_events(stay_of(T0, 50), [chart(300, "10", 10.0, hadm_id=20000001, stay_id=30000001),
                                              chart(300, "9", 9.0, hadm_id=20000001, stay_id=30000001)], 50)
    series = hourly.discretize(events, 50)
    [row] = timeseries_csv(SimpleNamespace(events=events)).decode().splitlines()[1:]
    assert row.split(",")[1 + hourly.CHANNELS.index("Heart Rate")] == "10.0"
    assert series.raw[4][hourly.CHANNELS.index("Heart Rate")] == 10.0


def test_a_zero_and_a_negative_zero_at_one_time_give_the_same_bytes_in_either_order_and_the_csv_agrees():
    """'-0' is not a plain number, so its valuenum -0.0 was used; equal to 0.0, the series kept the first to arrive
    and the CSV the last. Cleaned to +0.0, both orders store the same bytes and the CSV shows what the series holds."""
    rows = [chart(300, "-0", -0.0), chart(300, "0", 0.0)]
    outputs = []
    for order in (rows, rows[::-1]):
        events, _ = stay_events(stay_of(T0, 50), order, 50)
        stored = hourly.discretize(events, 50).raw_array()[4, hourly.CHANNELS.index("Heart Rate")]
        [line] = timeseries_csv(SimpleNamespace(events=events)).decode().splitlines()[1:]
        outputs.append((stored.tobytes(), line.split(",")[1 + hourly.CHANNELS.index("Heart Rate")]))
    assert outputs[0] == outputs[1] == (np.float32(0.0).tobytes(), "0.0")


# --------------------------------------------------------------------------------------------------------------
# A stay set aside (its rows differ, were rejected, or its stay_id is under several subjects) and its siblings

SIBLING = STAY + 1


def sibling_groups(set_aside: list[dict], **rejected) -> dict:
    """stay_groups plus SIBLING, the admission's second stay, and the set-aside STAY's rows (none: rejected)."""
    groups = stay_groups(events=[chart(30, "80", 80.0, stay_id=SIBLING, start=T0 + 60 * HOUR)])
    groups["icustays"] = [*set_aside, icustay(SIBLING, HADM, T0 + 60 * HOUR, T0 + 120 * HOUR)]
    groups["admissions"] = [admission(HADM, T0 - HOUR, T0 + 130 * HOUR)]
    return {**groups, **{f"rejected_{tag}": rows for tag, rows in rejected.items()}}


def read_reject(reason: str, stage: str = "read") -> dict:
    return dict(zip(accounting.REJECT_FIELDS, (stage, reason, SUBJECT, None, None, "table.csv.gz:3: bad value")))


@pytest.mark.parametrize("task", ("ihm", "phenotyping"))
def test_a_stay_whose_rows_differ_still_counts_towards_its_admissions_one_icu_stay(task):
    """Both versions are single-unit stays of the sibling's admission: upstream counts them, so the sibling is
    several_icu_stays; it was written as the admission's only ICU stay."""
    versions = [icustay(STAY, HADM, T0, T0 + 50 * HOUR), icustay(STAY, HADM, T0, T0 + 51 * HOUR)]
    rejects, events, records = build(task, sibling_groups(versions))
    assert [(r["reason"], r["detail"].split(":")[0]) for r in rejects] == [("conflicting_icustays", f"stay_id={STAY}")]
    assert not records and events["dropped/several_icu_stays"] == 1 and events["stays"] == 2


@pytest.mark.parametrize("versions", [
    [icustay(STAY, HADM, T0, T0 + 50 * HOUR), icustay(STAY, HADM, T0, T0 + 50 * HOUR, last="SICU")],
    [icustay(STAY, HADM, T0, T0 + 50 * HOUR), icustay(STAY, HADM + 5, T0, T0 + 50 * HOUR)]],
    ids=["one_version_a_transfer", "versions_in_two_admissions"])
def test_a_sibling_is_rejected_when_only_some_versions_of_the_set_aside_stay_count(versions):
    rejects, events, records = build("phenotyping", sibling_groups(versions))
    assert [r["reason"] for r in rejects] == ["conflicting_icustays", "sibling_stay_set_aside"]
    assert rejects[1]["detail"].startswith(f"stay_id={SIBLING}: stay_id(s) {STAY} of hadm_id={HADM} set aside")
    assert not records and not any(name.startswith("dropped/") for name in events)


def test_a_set_aside_stay_that_counts_in_no_version_leaves_its_sibling_written():
    versions = [icustay(STAY, HADM, T0, T0 + 50 * HOUR, last="SICU"), icustay(STAY, HADM, T0, T0 + 51 * HOUR,
                                                                              last="SICU")]
    rejects, _, records = build("phenotyping", sibling_groups(versions))
    assert [r["reason"] for r in rejects] == ["conflicting_icustays"] and [r.stay_id for r in records] == [SIBLING]


@pytest.mark.parametrize("reject", [read_reject("outtime_before_intime"),
                                    read_reject("stay_id_of_several_subjects", "join")])
def test_an_icustays_row_of_the_subject_rejected_keeps_every_stay_of_the_subject_from_being_written(reject):
    """The rejected row's admission is unknown (a read reject carries the subject_id only): it may be the sibling's
    second ICU stay, so the sibling is not written as its admission's only one."""
    rejects, events, records = build("ihm", sibling_groups([], icustays=[reject]))
    assert [(r["stage"], r["reason"]) for r in rejects] == [("join", "icustay_row_rejected")]
    assert rejects[0]["detail"] == (f"stay_id={SIBLING}: a rejected icustays row may be a second ICU stay of this "
                                    "stay's admission (several_icu_stays); icustays rows of this subject rejected: "
                                    f"{reject['reason']}")
    assert not records and events["stays"] == 1


@pytest.mark.parametrize("task", ("ihm", "phenotyping"))
@pytest.mark.parametrize("table,reason", [("admissions", "admission_row_rejected"),
                                          ("patients", "patient_row_rejected")])
def test_a_stay_whose_subject_had_an_admission_or_patient_row_rejected_is_a_join_reject(task, table, reason):
    """Not dropped/no_admission or no_patient, as if the row did not exist (here it is missing, being rejected)."""
    groups = {**stay_groups(), table: [], f"rejected_{table}": [read_reject("bad_timestamp")]}
    rejects, events, records = build(task, groups)
    assert [(r["stage"], r["reason"]) for r in rejects] == [("join", reason)]
    assert rejects[0]["detail"].endswith(f"{table} rows of this subject rejected: bad_timestamp")
    assert not records and not any(name.startswith("dropped/") for name in events) and events["stays"] == 1


def test_a_phenotyping_stay_whose_subject_had_a_diagnoses_row_rejected_is_not_written_with_that_phenotype_0():
    groups = {**stay_groups(), "diagnoses": [typed(mimic.DIAGNOSES_ICD, subject_id=SUBJECT, hadm_id=HADM, seq_num=1,
                                                   icd_code="4280", icd_version=9)],
              "rejected_diagnoses_icd": [read_reject("bad_int")]}
    rejects, events, records = build("phenotyping", groups)
    assert [(r["stage"], r["reason"]) for r in rejects] == [("join", "diagnoses_row_rejected")]
    assert not records and events["rejected"] == events["stays"] == 1
    _, _, [record] = build("ihm", groups)  # IHM does not read diagnoses
    assert record.stay_id == STAY


@pytest.mark.parametrize("task", ("ihm", "phenotyping"))
@pytest.mark.parametrize("table", ("chartevents", "labevents"))
@pytest.mark.parametrize("events", ([chart(30, "80", 80.0)], []), ids=["with_events", "no_events_left"])
def test_a_stay_whose_subject_had_an_event_row_rejected_is_a_join_reject_not_built_without_it(task, table, events):
    """The rejected row may be an event of the series (a heart rate whose valuenum is '1_0'), even its only one: the
    stay was written without it (or dropped as no_events); the reject line has no hadm_id or time, so it is per
    subject. An IHM stay under 48 h is still a drop, which no event could change."""
    groups = {**stay_groups(events=events), f"rejected_{table}": [read_reject("bad_float")]}
    rejects, counted, records = build(task, groups)
    assert [(r["stage"], r["reason"]) for r in rejects] == [("join", f"{table}_row_rejected")]
    assert rejects[0]["detail"] == (f"stay_id={STAY}: a rejected {table} row may be an event in this stay's series; "
                                    f"{table} rows of this subject rejected: bad_float")
    assert not records and counted["rejected"] == counted["stays"] == 1
    assert not any(name.startswith(("dropped/", "stay_events/")) for name in counted)
    short = {**groups, "icustays": [icustay(STAY, HADM, T0, T0 + 47 * HOUR)]}
    assert build("ihm", short)[:2] == ([], Counter({"stays": 1, "dropped/los_under_48h": 1}))


def test_a_dicom_id_whose_metadata_rows_differ_rejects_the_stay_that_pairs_it_whatever_the_arrival_order():
    """Same dicom_id and time, two study_ids: which row's study (and image path) is right is unknown, so the stay
    that would pair it is rejected, in either order; an exact copy is one row and pairs as before."""
    at = T0 + 2 * HOUR
    repeats = [mimic.Image("d1", SUBJECT, study_id, "AP", None, None, at) for study_id in (50000002, 50000001)]
    for images in (repeats, repeats[::-1]):
        rejects, events, records = build("ihm", {**stay_groups(), "images": images})
        assert [(r["reason"], r["dicom_id"]) for r in rejects] == [("conflicting_cxr_metadata", "d1")]
        assert not records and events["duplicates/conflicting_keys/cxr_metadata"] == 1
    _, events, [record] = build("ihm", {**stay_groups(), "images": [repeats[0], repeats[0]]})
    assert record.image_path == mimic.image_path(SUBJECT, 50000002, "d1")
    assert events["duplicates/identical_rows/cxr_metadata"] == 1


@pytest.mark.parametrize("task", ("ihm", "phenotyping"))
@pytest.mark.parametrize("reject", [read_reject("bad_study_time", "metadata"), read_reject("wrong_field_count")],
                         ids=["typed", "read"])
def test_a_stay_whose_subject_had_an_ap_metadata_row_rejected_is_a_join_reject_not_paired_with_the_next(task, reject):
    """The AP image of unknown time may be the stay's latest: it was paired with the next-latest (here the one at
    intime + 2 h) or written unpaired. A stay dropped before the pairing stays a drop."""
    image = mimic.Image("d1", SUBJECT, 50000001, "AP", None, None, T0 + 2 * HOUR)
    groups = {**stay_groups(), "images": [image], "rejected_cxr_metadata": [reject]}
    rejects, counted, records = build(task, groups)
    assert [(r["stage"], r["reason"]) for r in rejects] == [("join", "cxr_row_rejected")]
    assert rejects[0]["detail"] == (f"stay_id={STAY}: an AP image of unknown time may be the stay's X-ray; "
                                    f"cxr_metadata rows of this subject rejected: {reject['reason']}")
    assert not records and counted["rejected"] == counted["stays"] == 1
    _, _, [record] = build(task, {**groups, "rejected_cxr_metadata": []})
    assert record.dicom_id == "d1"
    short = {**groups, "icustays": [icustay(STAY, HADM, T0, T0 + 47 * HOUR)]}
    assert build("ihm", short)[:2] == ([], Counter({"stays": 1, "dropped/los_under_48h": 1}))


def test_a_run_rejects_the_stays_whose_needed_rows_were_rejected_or_set_aside(tmp_path):
    """In-process medfuse_phenotyping over rows the stays need that were rejected at read or set aside: each
    affected stay is a join reject (never written with a phenotype silently 0 or without a rejected event row,
    never dropped as no_admission / no_patient, never written as its admission's only ICU stay beside a set-aside
    one, never paired with the next AP image when one of the subject's has an unreadable time); a clean stay is
    written, its unmapped items' bad rows are filtered at read, not rejected, and the funnel adds up."""
    names = ("diagnoses", "conflict", "read_reject", "admission", "patient", "shared_a", "shared_b", "clean",
             "chartevents", "labevents", "cxr")
    subjects = dict(zip(names, (_train_subject(92000000 + 10000 * i) for i in range(len(names)))))
    icu, adm, pat, chartevents, labevents = [], [], [], [], []
    for n, (name, subject) in enumerate(subjects.items()):
        hadm, stay, start = HADM + n, STAY + 10 * n, T0 + n * 300 * HOUR
        adm.append(admission(hadm, start - HOUR, start + 200 * HOUR, subject_id=subject))
        pat.append(patient(subject_id=subject))
        sibling = stay + 1  # a second stay of the admission, after the first
        icu.append(icustay(sibling, hadm, start + 60 * HOUR, start + 120 * HOUR, subject_id=subject))
        chartevents.append(chart(30, "80", 80.0, subject_id=subject, hadm_id=hadm, stay_id=sibling,
                                 start=start + 60 * HOUR))
        if name == "conflict":
            icu += [icustay(stay, hadm, start, start + 50 * HOUR, subject_id=subject),
                    icustay(stay, hadm, start, start + 51 * HOUR, subject_id=subject)]
        elif name == "read_reject":
            icu.append({**icustay(stay, hadm, start, start + 50 * HOUR, subject_id=subject), "outtime": start - HOUR})
        elif name in ("shared_a", "shared_b"):
            icu.append(icustay(STAY + 999, hadm, start, start + 50 * HOUR, subject_id=subject))
        elif name == "chartevents":  # a heart rate of the stay whose valuenum fails typing ('1_0')
            chartevents.append({**chartevents[-1], "value": "79", "valuenum": "1_0"})
        elif name in ("labevents", "clean"):  # a glucose of the stay; the clean subject's of an unmapped item
            row = lab(70, subject_id=subject, hadm_id=hadm, start=start + 60 * HOUR)
            labevents.append({**row, "valuenum": "1_0"} if name == "labevents" else row)
            if name == "clean":
                labevents.append({**row, "labevent_id": row["labevent_id"] + 1, "itemid": 51300, "valuenum": "1_0"})
                chartevents.append({**chartevents[-1], "itemid": 220046, "valuenum": "1_0"})  # HR alarm, unmapped
    diagnoses = [{**typed(mimic.DIAGNOSES_ICD, subject_id=subjects["diagnoses"], hadm_id=HADM, seq_num=1,
                          icd_code="4280", icd_version=9), "seq_num": seq_num, "icd_code": code}
                 for seq_num, code in ((1, "4280"), ("2.0", "5849"))]  # 5849: acute renal failure, row rejected
    adm = [{**a, "deathtime": "2150-13-40 00:00:00"} if a["subject_id"] == subjects["admission"] else a for a in adm]
    pat = [{**p, "dod": "2150-02-30"} if p["subject_id"] == subjects["patient"] else p for p in pat]
    iv = tmp_path / "iv"
    for table, rows in ((mimic.ICUSTAYS, icu), (mimic.ADMISSIONS, adm), (mimic.PATIENTS, pat),
                        (mimic.CHARTEVENTS, chartevents), (mimic.LABEVENTS, labevents),
                        (mimic.DIAGNOSES_ICD, diagnoses)):
        write_table(iv, table, [{c: mimic_text(v) for c, v in row.items()} for row in rows])
    write_table(tmp_path / "cxr", mimic.CXR_METADATA, [
        metadata_row("d1", subjects["clean"], 50000000, "2150-03-01 09:00:00"),
        {**metadata_row("d2", subjects["cxr"], 50000001, "2150-03-01 09:00:00", view="AP"), "StudyTime": "996100"}])
    metadata = run(["--cohort=medfuse_phenotyping", f"--mimic_cxr_root={tmp_path / 'cxr'}", f"--mimic_iv_root={iv}",
                    f"--output={tmp_path / 'out'}", "--images=false", ONE_WORKER])
    c = metadata["counts"]
    assert c["rejected_by_reason"] == {
        "join/admission_row_rejected": 1, "join/chartevents_row_rejected": 1, "join/conflicting_icustays": 1,
        "join/diagnoses_row_rejected": 1, "join/icustay_row_rejected": 3, "join/labevents_row_rejected": 1,
        "join/patient_row_rejected": 1, "join/stay_id_of_several_subjects": 2, "join/cxr_row_rejected": 1}
    assert c["rows_rejected"] == {"admissions": 1, "chartevents": 1, "diagnoses_icd": 1, "icustays": 1,
                                  "labevents": 1, "patients": 1}
    assert c["rows_filtered"] == {"chartevents": 1, "labevents": 1}
    assert {k: v for k, v in c["dropped"].items() if v} == {"several_icu_stays": 1}
    assert c["stays"] == c["rejected"] + sum(c["dropped"].values()) + c["matched"] == 14 and c["matched"] == 1
    assert set(manifest(published(tmp_path / "out"), "stay_id")) == {STAY + 71}
