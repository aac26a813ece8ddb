"""The medfuse cohorts' per-subject stages (cohorts/medfuse.py: stay selection, series windows, KeepStayEvents,
BuildStays) called directly on typed rows, and one in-process run over a small hand-written tree of bad input:
conflicting admissions / patients rows are join rejects (never drops), a value beyond float32 is left out and
counted, and a hadm_id shared by two subjects gives each its own series window."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from types import SimpleNamespace

import apache_beam as beam
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
