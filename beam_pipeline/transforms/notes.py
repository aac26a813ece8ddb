"""Render a snapshot as a short, readable, deterministic pseudo-note.

Every sentence is optional: a missing value leaves its phrase out, so a note never says "None", "nan" or "92.0".
Vitals print as integers, temperature and hours with at most one decimal, and never with a ".0". An X-ray taken
after the patient left the ED says so ("Left the ED 3 h ago, after 5 h in the ED") instead of "In the ED for N h".
The note has no imaging vocabulary of its own (the leakage filter of the text stage must never have to redact our
template).
"""

from __future__ import annotations

import math

from beam_pipeline import mimic
from beam_pipeline.transforms.snapshot import Snapshot

MAX_LISTED_MEDS = 20
TRANSPORT_PHRASES = {"AMBULANCE": "arriving by ambulance", "WALK IN": "walking in",
                     "HELICOPTER": "arriving by helicopter"}
VITAL_PHRASES = {"temperature": ("temperature", " °F"), "heartrate": ("heart rate", " bpm"),
                 "resprate": ("respiratory rate", "/min"), "o2sat": ("SpO2", "%")}


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def format_number(value: float, decimals: int = 0) -> str:
    """Round half up to ``decimals`` and drop a trailing zero fraction: 98.64 -> '98.6', 98.0 -> '98', 92.5 -> '93'
    (decimals=0). Never prints '92.0' or float artefacts."""
    scaled = _round_half_up(value * 10 ** decimals)
    text = f"{scaled / 10 ** decimals:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def vitals_phrase(vitals: dict[str, float | None]) -> str | None:
    parts = []
    for name, (label, unit) in VITAL_PHRASES.items():
        value = vitals.get(name)
        if value is not None:
            parts.append(f"{label} {format_number(value, 1 if name == 'temperature' else 0)}{unit}")
    sbp, dbp = vitals.get("sbp"), vitals.get("dbp")
    if sbp is not None and dbp is not None:
        parts.append(f"blood pressure {format_number(sbp)}/{format_number(dbp)} mmHg")
    elif sbp is not None:
        parts.append(f"systolic blood pressure {format_number(sbp)} mmHg")
    elif dbp is not None:
        parts.append(f"diastolic blood pressure {format_number(dbp)} mmHg")
    return ", ".join(parts) or None


def _list(names: tuple[str, ...]) -> str:
    shown = ", ".join(names[:MAX_LISTED_MEDS])
    extra = len(names) - MAX_LISTED_MEDS
    return f"{shown} and {extra} more" if extra > 0 else shown


def _sentence(text: str) -> str:
    text = text.rstrip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _who(snap: Snapshot) -> str:
    age = f"{snap.age}-year-old" if snap.age is not None else None
    if age and snap.sex:
        who = f"{age} {snap.sex}"
    elif age:
        who = f"{age} patient"
    elif snap.sex:
        who = f"{snap.sex.capitalize()} patient"
    else:
        who = "Patient"
    if snap.arrival:
        who += " " + TRANSPORT_PHRASES[snap.arrival]
    return who[0].upper() + who[1:]


ABNORMAL = (  # (vital, test, words) for the retrieval query
    ("temperature", lambda v: v >= 100.4, "fever"), ("temperature", lambda v: v < 95.0, "hypothermia"),
    ("heartrate", lambda v: v > 100, "tachycardia"), ("heartrate", lambda v: v < 50, "bradycardia"),
    ("resprate", lambda v: v > 20, "tachypnea"), ("o2sat", lambda v: v < 92, "low oxygen saturation"),
    ("sbp", lambda v: v < 90, "hypotension"), ("sbp", lambda v: v >= 180, "severe hypertension"),
)


def abnormal_findings(snap: Snapshot) -> list[str]:
    """Words for the abnormal vitals (latest value, else triage) known at the X-ray."""
    vitals = {name: snap.last_vitals.get(name) if snap.last_vitals.get(name) is not None else
              snap.triage_vitals.get(name) for name, _, _ in ABNORMAL}
    return [words for name, test, words in ABNORMAL if vitals[name] is not None and test(vitals[name])]


def retrieval_query(snap: Snapshot) -> str:
    """What retrieval embeds: the complaint, abnormal vitals in words and the medications. The note's template
    (acuity, vitals labels) is the same in every note and would otherwise pull the same triage passages for all."""
    parts = [snap.chief_complaint or ""]
    findings = abnormal_findings(snap)
    if snap.pain is not None and snap.pain >= 7:
        findings.append("severe pain")
    if findings:
        parts.append(", ".join(findings))
    meds = snap.home_meds[:MAX_LISTED_MEDS] + snap.ed_meds[:MAX_LISTED_MEDS]
    if meds:
        parts.append("medications: " + ", ".join(meds))
    return ". ".join(p for p in parts if p)


def render_note(snap: Snapshot) -> str:
    sentences = [_who(snap)]
    if snap.chief_complaint:
        sentences.append(f"Chief complaint: {snap.chief_complaint}")
    if snap.acuity is not None:
        sentences.append(f"Triage acuity: {mimic.ESI_WORDS[snap.acuity]} (ESI {snap.acuity})")
    if snap.pain is not None:
        sentences.append(f"Pain: {format_number(snap.pain, 1)}/10")
    elif snap.pain_unassessable:
        sentences.append("Pain: unable to assess")
    triage = vitals_phrase(snap.triage_vitals)
    if triage:
        sentences.append(f"Triage vitals: {triage}")
    if snap.after_ed_departure:  # never "in the ED" once the patient has left it
        sentences.append(f"Left the ED {format_number(snap.hours_since_departure, 1)} h ago, after "
                         f"{format_number(snap.ed_stay_hours, 1)} h in the ED")
    elif snap.arrival_known:
        sentences.append(f"In the ED for {format_number(snap.hours_from_arrival, 1)} h")
    latest = vitals_phrase(snap.last_vitals)
    if latest:
        sentences.append(f"Latest vitals: {latest}")
    if snap.rhythm:
        sentences.append(f"Rhythm: {snap.rhythm}")
    if snap.home_meds:
        sentences.append(f"Home medications: {_list(snap.home_meds)}")
    if snap.ed_meds:
        sentences.append(f"Medications given in the ED{'' if snap.after_ed_departure else ' so far'}: "
                         f"{_list(snap.ed_meds)}")
    return " ".join(_sentence(s) for s in sentences)
