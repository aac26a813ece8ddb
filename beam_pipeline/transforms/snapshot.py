"""The clinical snapshot of a linked X-ray: typed, cleaned facts known at the study time, and its feature vector.

The join already removed everything charted after the X-ray; here values are cleaned (implausible vitals dropped,
free-text pain read, medication names de-duplicated) so the note and the features see the same facts.
"""

from __future__ import annotations

import dataclasses
import math
import re

from beam_pipeline import mimic
from beam_pipeline.transforms.join import Linked, after_departure

PLAUSIBLE = {  # outside these ranges a charted vital is treated as missing (typos, wrong units)
    "temperature": (86.0, 113.0),  # degF: 30-45 degC
    "heartrate": (20.0, 300.0),
    "resprate": (2.0, 80.0),
    "o2sat": (40.0, 100.0),
    "sbp": (40.0, 300.0),
    "dbp": (10.0, 200.0),
}
UNASSESSABLE_PAIN = {"ua", "uta", "u/a", "unable", "unable to assess", "unable to answer", "ett", "intubated",
                     "sedated", "asleep", "sleeping", "unresponsive"}

FEATURE_NAMES: tuple[str, ...] = (
    ("age", "female", "arrival_ambulance", "arrival_walk_in", "arrival_helicopter", "acuity", "pain")
    + tuple(f"triage_{v}" for v in mimic.VITALS)
    + tuple(f"last_{v}" for v in mimic.VITALS)
    + ("hours_from_arrival", "n_vitals", "n_home_meds", "n_ed_meds")
)
"""Order of ``features/values`` and ``features/missing`` (units: years, 0/1, ESI 1-5, pain 0-10, degF, bpm,
breaths/min, %, mmHg, hours, counts)."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    age: int | None
    sex: str | None  # "female" / "male"
    arrival: str | None  # one of mimic.ARRIVAL_TRANSPORTS
    chief_complaint: str | None
    acuity: int | None
    pain: float | None
    pain_unassessable: bool
    triage_vitals: dict[str, float | None]
    last_vitals: dict[str, float | None]
    rhythm: str | None
    hours_from_arrival: float  # negative when the X-ray precedes ED arrival
    n_vitals: int
    home_meds: tuple[str, ...]
    ed_meds: tuple[str, ...]
    implausible_values: int  # vitals dropped as implausible (counted, not shown)
    # Only when the X-ray was taken after ED departure (then the departure and the stay's length are known at the
    # X-ray's time); None otherwise, so an X-ray in the ED never learns when its stay will end.
    hours_since_departure: float | None = None
    ed_stay_hours: float | None = None

    @property
    def arrival_known(self) -> bool:
        return self.hours_from_arrival >= 0

    @property
    def after_ed_departure(self) -> bool:
        return self.hours_since_departure is not None


def clean_text(text: str | None) -> str | None:
    """Collapse whitespace (including embedded newlines); None for blank."""
    if text is None:
        return None
    cleaned = " ".join(text.split())
    return cleaned or None


def _plausible(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    low, high = PLAUSIBLE[name]
    return value if low <= value <= high else None


def parse_pain(text: str | None) -> tuple[float | None, bool]:
    """Triage pain is free text: a 0-10 number, an 'unable to assess' code, or noise (ignored)."""
    cleaned = clean_text(text)
    if cleaned is None:
        return None, False
    if cleaned.lower() in UNASSESSABLE_PAIN:
        return None, True
    try:
        value = float(cleaned)
    except ValueError:
        return None, False
    return (value, False) if 0 <= value <= 10 and math.isfinite(value) else (None, False)


_MED_PREFIX = re.compile(r"^[*\s]+")


def medication_names(rows, *, sort: bool) -> tuple[str, ...]:
    """Unique medication names (case-insensitive), leading '*' removed; alphabetical or in charting order."""
    names: dict[str, str] = {}
    for row in rows:
        name = clean_text(_MED_PREFIX.sub("", row.get("name") or ""))
        if name and name.lower() not in names:
            names[name.lower()] = name
    ordered = sorted(names.values(), key=str.lower) if sort else list(names.values())
    return tuple(ordered)


def _latest_vitals(rows) -> tuple[dict[str, float | None], str | None, int]:
    """Latest plausible value of each vital (rows are oldest first), the latest rhythm that names no pacemaker
    (mimic.DEVICE_RHYTHM), and how many values were implausible."""
    latest: dict[str, float | None] = {v: None for v in mimic.VITALS}
    rhythm = None
    implausible = 0
    for row in rows:
        for name in mimic.VITALS:
            value = _plausible(name, row.get(name))
            implausible += row.get(name) is not None and value is None
            if value is not None:
                latest[name] = value
        text = clean_text(row.get("rhythm"))
        rhythm = text if text and not mimic.DEVICE_RHYTHM.search(text) else rhythm
    return latest, rhythm, implausible


def take_snapshot(linked: Linked) -> Snapshot:
    image, stay, triage, patient = linked.image, linked.stay, linked.triage or {}, linked.patient
    age = None
    if patient is not None:
        age = mimic.age_at(patient["anchor_age"], patient["anchor_year"], image.study_time.year)
    triage_vitals = {v: _plausible(v, triage.get(v)) for v in mimic.VITALS}
    triage_implausible = sum(triage.get(v) is not None and triage_vitals[v] is None for v in mimic.VITALS)
    last_vitals, rhythm, vitals_implausible = _latest_vitals(linked.vitals)
    pain, unassessable = parse_pain(triage.get("pain"))
    acuity = triage.get("acuity")
    transport = (stay.get("arrival_transport") or "").strip().upper()
    departed = after_departure(image.study_time, stay.get("outtime"))
    return Snapshot(
        age=age,
        sex={"F": "female", "M": "male"}.get((stay.get("gender") or "").strip().upper()),
        arrival=transport if transport in mimic.ARRIVAL_TRANSPORTS else None,
        chief_complaint=clean_text(triage.get("chiefcomplaint")),
        acuity=int(acuity) if acuity is not None and acuity == int(acuity) and int(acuity) in mimic.ESI_WORDS
        else None,
        pain=pain,
        pain_unassessable=unassessable,
        triage_vitals=triage_vitals,
        last_vitals=last_vitals,
        rhythm=rhythm,
        hours_from_arrival=(image.study_time - stay["intime"]).total_seconds() / 3600.0,
        n_vitals=len(linked.vitals),
        home_meds=medication_names(linked.home_meds, sort=True),
        ed_meds=medication_names(linked.ed_meds, sort=False),
        implausible_values=triage_implausible + vitals_implausible,
        hours_since_departure=_hours(stay["outtime"], image.study_time) if departed else None,
        ed_stay_hours=_hours(stay["intime"], stay["outtime"]) if departed else None,
    )


def _hours(start, end) -> float:
    return (end - start).total_seconds() / 3600.0


def feature_vector(snap: Snapshot) -> tuple[list[float], list[int]]:
    """Values in FEATURE_NAMES order, 0.0 where missing, and the missing mask (1 = missing)."""
    arrival = None if snap.arrival is None else [float(snap.arrival == a) for a in mimic.ARRIVAL_TRANSPORTS]
    values: list[float | None] = [
        None if snap.age is None else float(snap.age),
        None if snap.sex is None else float(snap.sex == "female"),
        *(arrival or [None] * len(mimic.ARRIVAL_TRANSPORTS)),
        None if snap.acuity is None else float(snap.acuity),
        snap.pain,
        *(snap.triage_vitals[v] for v in mimic.VITALS),
        *(snap.last_vitals[v] for v in mimic.VITALS),
        snap.hours_from_arrival,
        float(snap.n_vitals),
        float(len(snap.home_meds)),
        float(len(snap.ed_meds)),
    ]
    assert len(values) == len(FEATURE_NAMES)
    return [0.0 if v is None else float(v) for v in values], [int(v is None) for v in values]
