"""Link each kept X-ray to one ED stay and collect what was known at the X-ray's time.

Keyed by subject_id with one CoGroupByKey over images, ED stays, triage, vitals, medrecon, pyxis, patients, CheXpert
labels and (optionally) the official split: linear in the data, no images x stays loop, and only metadata (ids,
times, small rows) passes through the shuffle. Image bytes are read after this stage.

Matching rule (README "Matching and as-of rules"): a study matches a stay when
``intime + window_start <= study_time <= intime + window_end``; among several, the latest intime at or before the
study wins, else (negative window start) the earliest intime; remaining ties go to the smallest stay_id.
As-of rule: only rows with ``charttime <= study_time`` of the chosen stay are kept; triage and the arrival mode are
timestamped at intime, so they are dropped when the X-ray precedes arrival.
ED departure: an X-ray is *after ED departure* when ``study_time > outtime`` of its stay (at outtime the patient is
still counted as in the ED; a stay without an outtime is never after departure, since departure is not known).
``outtime`` does not limit the window; with ``within_ed_stay`` the X-rays after departure are dropped and counted
(``dropped_after_ed_departure``), otherwise they are kept and flagged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

import apache_beam as beam

from beam_pipeline import accounting, mimic

Row = Mapping[str, Any]
STAGE = "join"


@dataclasses.dataclass(frozen=True)
class Linked:
    """One kept image with its stay and the rows of that stay known at the study time."""

    image: mimic.Image
    stay: Row  # edstays row; arrival_transport is None when the X-ray precedes arrival
    triage: Row | None  # None when absent or when the X-ray precedes arrival
    vitals: tuple[Row, ...]  # charttime <= study time, oldest first
    home_meds: tuple[Row, ...]  # medrecon, charttime <= study time
    ed_meds: tuple[Row, ...]  # pyxis, charttime <= study time
    patient: Row | None
    labels: Row | None  # CheXpert row of the study
    official_split: str | None  # raw split-file value for the image


def select_stay(study_time: dt.datetime, stays: Iterable[Row], start_hours: float, end_hours: float) -> Row | None:
    """The stay a study belongs to under the window rule, or None."""
    start, end = dt.timedelta(hours=start_hours), dt.timedelta(hours=end_hours)
    qualifying = [s for s in stays if s["intime"] + start <= study_time <= s["intime"] + end]
    if not qualifying:
        return None
    arrived = [s for s in qualifying if s["intime"] <= study_time]
    if arrived:
        return max(arrived, key=lambda s: (s["intime"], -s["stay_id"]))
    return min(qualifying, key=lambda s: (s["intime"], s["stay_id"]))


def after_departure(study_time: dt.datetime, outtime: dt.datetime | None) -> bool:
    """True when the X-ray was taken after the patient left the ED (strictly after outtime; unknown outtime: False)."""
    return outtime is not None and study_time > outtime


def in_time_order(rows: Iterable[Row]) -> list[Row]:
    """Oldest first, ties in a fixed order (sorted once per stay, not once per image)."""
    return sorted(rows, key=_row_order)


def as_of(rows: Sequence[Row], study_time: dt.datetime) -> tuple[Row, ...]:
    """The rows (already in time order) charted at or before the study time."""
    return tuple(r for r in rows if r["charttime"] <= study_time)


def _row_order(row: Row) -> tuple:
    return row["charttime"], tuple(sorted((k, str(v)) for k, v in row.items()))


def _first(rows: Iterable[Row]) -> Row | None:
    """A deterministic pick when a table that should have one row per key has several."""
    rows = list(rows)
    return min(rows, key=lambda r: sorted((k, str(v)) for k, v in r.items())) if rows else None


class LinkSubject(beam.DoFn):
    """(subject_id, co-grouped rows) -> Linked per matched image; counts no_ed_stay and duplicate images, and with
    ``within_ed_stay`` drops (and counts) images taken after the matched stay's ED departure."""

    def __init__(self, window_start_hours: float, window_end_hours: float, within_ed_stay: bool = False):
        self._start = window_start_hours
        self._end = window_end_hours
        self._within = within_ed_stay

    def process(self, element):
        _, groups = element
        images = sorted(groups["images"], key=lambda im: (im.dicom_id, im.study_id, im.study_time))
        if not images:
            return
        stays = list(groups["stays"])
        triage = {stay_id: _first(rows) for stay_id, rows in _group(groups["triage"], "stay_id").items()}
        vitals, medrecon, pyxis = ({stay: in_time_order(rows) for stay, rows in _group(groups[name], "stay_id").items()}
                                   for name in ("vitals", "medrecon", "pyxis"))
        patient = _first(groups.get("patients", ()))
        labels = {study_id: _first(rows) for study_id, rows in _group(groups["labels"], "study_id").items()}
        splits = {row["dicom_id"]: row["split"] for row in groups.get("splits", ())}
        seen = set()
        for image in images:
            if image.dicom_id in seen:
                yield from accounting.reject(STAGE, "duplicate_dicom_id", subject_id=image.subject_id,
                                             study_id=image.study_id, dicom_id=image.dicom_id,
                                             detail="dicom_id appears more than once in the metadata",
                                             counter="rejected")
                continue
            seen.add(image.dicom_id)
            stay = select_stay(image.study_time, stays, self._start, self._end)
            if stay is None:
                yield accounting.event("no_ed_stay")
                continue
            if self._within and after_departure(image.study_time, stay.get("outtime")):
                yield accounting.event("dropped_after_ed_departure")
                continue
            t = image.study_time
            arrived = stay["intime"] <= t
            yield accounting.event("images_linked")
            yield Linked(
                image=image,
                stay=stay if arrived else {**stay, "arrival_transport": None},
                triage=triage.get(stay["stay_id"]) if arrived else None,
                vitals=as_of(vitals.get(stay["stay_id"], ()), t),
                home_meds=as_of(medrecon.get(stay["stay_id"], ()), t),
                ed_meds=as_of(pyxis.get(stay["stay_id"], ()), t),
                patient=patient,
                labels=labels.get(image.study_id),
                official_split=splits.get(image.dicom_id),
            )


def _group(rows: Iterable[Row], key: str) -> dict[Any, list[Row]]:
    grouped: dict[Any, list[Row]] = defaultdict(list)
    for row in rows:
        grouped[row[key]].append(row)
    return grouped


class LinkImagesToStays(beam.PTransform):
    """{tag: PCollection of rows keyed by subject_id} -> Linked, with rejects and events tagged."""

    def __init__(self, window_start_hours: float, window_end_hours: float, within_ed_stay: bool = False):
        super().__init__()
        self._start = window_start_hours
        self._end = window_end_hours
        self._within = within_ed_stay

    def expand(self, keyed: dict[str, beam.PCollection]):
        return (keyed
                | "CoGroupBySubject" >> beam.CoGroupByKey()
                | "MatchStays" >> beam.ParDo(LinkSubject(self._start, self._end, self._within)).with_outputs(
                    accounting.REJECTS, accounting.EVENTS, main="linked"))
