import datetime as dt
import re

import pytest

from beam_pipeline import mimic
from beam_pipeline.transforms.join import Linked
from beam_pipeline.transforms.notes import abnormal_findings, format_number, render_note, retrieval_query
from beam_pipeline.transforms.snapshot import FEATURE_NAMES, feature_vector, parse_pain, take_snapshot

T0 = dt.datetime(2180, 5, 6, 19, 17)
H = dt.timedelta(hours=1)
FORBIDDEN = re.compile(r"\bNone\b|\bnan\b|\d\.0\b|\bnull\b", re.IGNORECASE)


def linked(study_time=T0 + 2 * H, triage=None, vitals=(), home=(), ed=(), patient=None, stay=None):
    stay = stay or {"subject_id": 10000032, "stay_id": 33258284, "intime": T0, "outtime": T0 + 4 * H,
                    "gender": "F", "arrival_transport": "AMBULANCE"}
    image = mimic.Image("d", 10000032, 50414267, "PA", 3056, 2544, study_time)
    return Linked(image, stay, triage, tuple(vitals), tuple(home), tuple(ed), patient, None, None)


FULL_TRIAGE = {"temperature": 98.0, "heartrate": 92.0, "resprate": 18.0, "o2sat": 96.0, "sbp": 128.0,
               "dbp": 71.0, "pain": "7", "acuity": 2.0, "chiefcomplaint": "Dyspnea,  Cough\nsent by PCP"}


def vitals_row(minutes, **values):
    return {"charttime": T0 + dt.timedelta(minutes=minutes), **{v: None for v in mimic.VITALS}, "rhythm": None,
            **values}


def test_full_note_is_readable_and_exact():
    """Every part of the note, values rounded sensibly, latest value of each vital, medications de-duplicated."""
    snap = take_snapshot(linked(
        triage=FULL_TRIAGE,
        vitals=[vitals_row(30, heartrate=101.0, sbp=118.0, dbp=65.0, o2sat=94.0),
                vitals_row(90, heartrate=97.0, temperature=99.14, rhythm="Sinus Tachycardia")],
        home=[{"name": "*furosemide"}, {"name": "Aspirin"}, {"name": "aspirin "}],
        ed=[{"name": "Ondansetron 4mg/2mL 2mL VIAL"}, {"name": "Albuterol 0.083% Neb Soln"}],
        patient={"anchor_age": 60, "anchor_year": 2178}))
    assert render_note(snap) == (
        "62-year-old female arriving by ambulance. Chief complaint: Dyspnea, Cough sent by PCP. "
        "Triage acuity: emergent (ESI 2). Pain: 7/10. Triage vitals: temperature 98 °F, heart rate 92 bpm, "
        "respiratory rate 18/min, SpO2 96%, blood pressure 128/71 mmHg. In the ED for 2 h. "
        "Latest vitals: temperature 99.1 °F, heart rate 97 bpm, SpO2 94%, blood pressure 118/65 mmHg. "
        "Rhythm: Sinus Tachycardia. Home medications: Aspirin, furosemide. "
        "Medications given in the ED so far: Ondansetron 4mg/2mL 2mL VIAL, Albuterol 0.083% Neb Soln.")


def test_a_rhythm_that_names_a_pacemaker_is_left_out_like_a_blank_one():
    """A pacemaker is a finding of the X-ray (Support Devices). "Rhythm: [REDACTED]." would tell it as plainly as
    "Rhythm: Paced Rhythm.", so the note shows the latest rhythm that names no device, or none."""
    def note(*rhythms):
        rows = [vitals_row(30 + 10 * i, rhythm=r) for i, r in enumerate(rhythms)]
        return render_note(take_snapshot(linked(triage=FULL_TRIAGE, vitals=rows)))

    assert "Rhythm: Sinus Rhythm." in note("Sinus Rhythm", "Paced Rhythm") and "aced" not in note("V Paced")
    assert note("Paced Rhythm") == note(None) and "Rhythm" not in note("AV Paced", None)


def test_missing_values_are_left_out_cleanly():
    snap = take_snapshot(linked(triage={"temperature": None, "heartrate": 88.0, "sbp": 140.0, "pain": "",
                                        "acuity": None, "chiefcomplaint": None},
                                stay={"subject_id": 1, "stay_id": 2, "intime": T0, "outtime": None, "gender": None,
                                      "arrival_transport": "UNKNOWN"}))
    note = render_note(snap)
    assert note == ("Patient. Triage vitals: heart rate 88 bpm, systolic blood pressure 140 mmHg. "
                    "In the ED for 2 h.")
    assert not FORBIDDEN.search(note)


def test_xray_before_arrival_has_only_static_facts():
    snap = take_snapshot(linked(study_time=T0 - H, stay={"subject_id": 1, "stay_id": 2, "intime": T0,
                                                         "outtime": None, "gender": "M",
                                                         "arrival_transport": None},
                                patient={"anchor_age": 91, "anchor_year": 2170}))
    assert render_note(snap) == "91-year-old male."
    values, missing = feature_vector(snap)
    assert values[FEATURE_NAMES.index("hours_from_arrival")] == -1.0


@pytest.mark.parametrize("value, decimals, text", [(92.0, 0, "92"), (92.5, 0, "93"), (98.6, 1, "98.6"),
                                                   (98.04999, 1, "98"), (98.05, 1, "98.1"), (0.0, 0, "0"),
                                                   (0.0, 1, "0"), (100.0, 1, "100"), (-1.25, 1, "-1.2")])
def test_format_number(value, decimals, text):
    assert format_number(value, decimals) == text


@pytest.mark.parametrize("text, expected", [("7", (7.0, False)), ("0", (0.0, False)), ("13", (None, False)),
                                            ("UA", (None, True)), ("unable", (None, True)),
                                            ("Critical", (None, False)), ("", (None, False)),
                                            ("7.5", (7.5, False)), (None, (None, False))])
def test_parse_pain(text, expected):
    assert parse_pain(text) == expected


def test_implausible_vitals_are_dropped_and_counted():
    snap = take_snapshot(linked(triage={"temperature": 37.2, "heartrate": 900.0, "o2sat": 97.0},
                                vitals=[vitals_row(10, o2sat=1000.0)]))
    assert snap.triage_vitals["temperature"] is None and snap.triage_vitals["heartrate"] is None
    assert snap.last_vitals["o2sat"] is None and snap.implausible_values == 3
    assert "37.2" not in render_note(snap) and "900" not in render_note(snap)


def test_feature_vector_values_and_mask():
    snap = take_snapshot(linked(triage=FULL_TRIAGE, patient={"anchor_age": 60, "anchor_year": 2180},
                                home=[{"name": "aspirin"}], vitals=[vitals_row(5, heartrate=80.0)]))
    values, missing = feature_vector(snap)
    assert len(values) == len(missing) == len(FEATURE_NAMES)
    named = dict(zip(FEATURE_NAMES, values))
    absent = {name for name, m in zip(FEATURE_NAMES, missing) if m}
    assert named["age"] == 60 and named["female"] == 1 and named["arrival_ambulance"] == 1
    assert named["arrival_walk_in"] == 0 and named["acuity"] == 2 and named["pain"] == 7
    assert named["triage_heartrate"] == 92 and named["last_heartrate"] == 80 and named["n_home_meds"] == 1
    assert absent == {f"last_{v}" for v in mimic.VITALS if v != "heartrate"}
    assert all(values[FEATURE_NAMES.index(name)] == 0.0 for name in absent)


def test_many_medications_are_capped_in_the_note_but_counted():
    home = [{"name": f"med{i:02d}"} for i in range(25)]
    snap = take_snapshot(linked(home=home))
    assert "med19 and 5 more." in render_note(snap) and "med20" not in render_note(snap)
    assert feature_vector(snap)[0][FEATURE_NAMES.index("n_home_meds")] == 25


def test_retrieval_query_keeps_the_clinical_content_not_the_template():
    snap = take_snapshot(linked(
        triage={**FULL_TRIAGE, "temperature": 101.5, "o2sat": 89.0, "heartrate": 118.0},
        vitals=[vitals_row(30, heartrate=96.0, sbp=84.0)], home=[{"name": "lisinopril"}],
        ed=[{"name": "CefTRIAXone"}]))
    assert retrieval_query(snap) == ("Dyspnea, Cough sent by PCP. fever, low oxygen saturation, hypotension, "
                                     "severe pain. medications: lisinopril, CefTRIAXone")
    assert "acuity" not in retrieval_query(snap) and "ESI" not in retrieval_query(snap)
    assert abnormal_findings(take_snapshot(linked(triage={"temperature": 98.6, "heartrate": 80.0}))) == []
    assert retrieval_query(take_snapshot(linked())) == ""


def test_xray_after_ed_departure_never_says_in_the_ed():
    """Stay T0..T0+4 h; an X-ray 6.5 h after arrival was taken 2.5 h after the patient left the ED."""
    after = take_snapshot(linked(study_time=T0 + 6.5 * H, ed=[{"name": "Aspirin"}]))
    note = render_note(after)
    assert after.after_ed_departure and after.hours_since_departure == 2.5 and after.ed_stay_hours == 4
    assert "Left the ED 2.5 h ago, after 4 h in the ED." in note
    assert "In the ED for" not in note and "so far" not in note and "Medications given in the ED: Aspirin." in note
    assert not FORBIDDEN.search(note)
    for study_time in (T0 + 2 * H, T0 + 4 * H):  # in the ED, and exactly at departure: the stay's end is unknown
        snap = take_snapshot(linked(study_time=study_time))
        assert not snap.after_ed_departure and snap.hours_since_departure is None and snap.ed_stay_hours is None
        assert "In the ED for" in render_note(snap) and "Left the ED" not in render_note(snap)
    no_outtime = take_snapshot(linked(study_time=T0 + 20 * H, stay={
        "subject_id": 1, "stay_id": 2, "intime": T0, "outtime": None, "gender": "F", "arrival_transport": None}))
    assert not no_outtime.after_ed_departure and "In the ED for 20 h" in render_note(no_outtime)


def test_departure_sentence_survives_the_leakage_filter():
    from beam_pipeline.transforms.leakage import load_rules, redact

    note = render_note(take_snapshot(linked(study_time=T0 + 6.5 * H, ed=[{"name": "Aspirin"}])))
    assert redact(note, load_rules(""), "[REDACTED]") == (note, {})
