"""Link each kept X-ray to one ED stay and collect what was known at the X-ray's time.

Keyed by subject_id with one CoGroupByKey over images, ED stays, triage, vitals, medrecon, pyxis, patients, CheXpert
labels and (optionally) the official split: linear in the data, no images x stays loop, and only metadata (ids,
times, small rows) passes through the shuffle. Image bytes are read after this stage.

Matching rule (README "Matching and as-of rules"): a study matches a stay when
``intime + window_start <= study_time <= intime + window_end``; among several, of the stays begun by the study time
one not yet left beats one left, then the latest intime wins; else (negative window start) the earliest intime;
remaining ties go to the smallest stay_id. A kept image's metadata rows: ``one_image_per_row``.
As-of rule: only rows with ``charttime <= study_time`` of the chosen stay are kept; triage and the arrival mode are
timestamped at intime, so they are dropped when the X-ray precedes arrival.
ED departure: an X-ray is *after ED departure* when ``study_time > outtime`` of its stay (at outtime the patient is
still counted as in the ED; a stay without an outtime is never after departure, since departure is not known).
``outtime`` does not limit the window; with ``within_ed_stay`` the X-rays after departure are dropped and counted
(``dropped_after_ed_departure``), otherwise they are kept and flagged.

Conflicts (README "Bad input"): in the tables with one row per key (``ONE_ROW_PER``) exact copies count as one row
(``duplicates/identical_rows/<table>``); a key whose rows differ is counted (``duplicates/conflicting_keys/<table>``)
and never used: every image that would use it is rejected (``conflicting_<table>``); a conflicting stay takes part in
stay selection with each of its versions, and an image for which any version would be chosen is rejected. Rows
rejected when read are known here per subject (``STAY_REJECTS``, ``REJECTED_LABELS``, ``ROW_REJECTS``): every
image of a subject with an edstays row rejected is ``stay_row_rejected`` (the rejected stay may be its own, whose
times are unknown: neither no_ed_stay nor linked to another stay); an image whose study had a CheXpert row rejected
(or that has no label row while a row of its subject with an unreadable study_id was rejected) is
``label_row_rejected``, never unlabelled; a linked image whose subject had a patients row rejected is
``patient_row_rejected``, and one taken after arrival whose subject had a triage, vitalsign, medrecon or pyxis row
rejected is ``<table>_row_rejected`` (a reject line holds ids, not times: the row may be one the record would hold),
never written without it. These rejects come before the ``within_ed_stay`` drop.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping, Sequence

import apache_beam as beam

from beam_pipeline import accounting, mimic

Row = Mapping[str, Any]
STAGE = "join"
ONE_ROW_PER = {  # CoGroupByKey tag -> (table, key) of the tables with one row per key (MIMIC-IV-ED's primary keys)
    "stays": (mimic.EDSTAYS.name, "stay_id"),
    "vitals": (mimic.VITALSIGN.name, ("stay_id", "charttime")),
    "triage": (mimic.TRIAGE.name, "stay_id"),
    "patients": (mimic.PATIENTS.name, "subject_id"),
    "labels": (mimic.CXR_CHEXPERT.name, "study_id"),
    "splits": (mimic.CXR_SPLIT.name, "dicom_id"),
}
REJECTED_LABELS = "rejected_labels"  # tag: read rejects of cxr_chexpert (keyed by study too: KeyLabelRejects)
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
    """The stay a study belongs to under the window rule, or None. Among stays begun by the study time, one the
    patient is still in beats one already left (overlapping stays: the X-ray is of the visit in progress), then the
    latest arrival wins."""
    start, end = dt.timedelta(hours=start_hours), dt.timedelta(hours=end_hours)
    qualifying = [s for s in stays if s["intime"] + start <= study_time <= s["intime"] + end]
    if not qualifying:
        return None
    arrived = [s for s in qualifying if s["intime"] <= study_time]
    if arrived:
        present = [s for s in arrived if not after_departure(study_time, s.get("outtime"))]
        return max(present or arrived, key=lambda s: (s["intime"], -s["stay_id"]))
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
    return row["charttime"], _fingerprint(row)


def _fingerprint(row: Row) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in row.items()))


@dataclasses.dataclass(frozen=True)
class Unique:
    """One table's rows of a subject by key: exact copies merged, keys whose rows differ set aside."""

    table: str
    key: str | tuple[str, ...]
    rows: dict[Any, Row]  # key -> its one row
    conflicts: dict[Any, tuple[Row, ...]]  # key -> its differing versions, in a fixed order
    copies: int  # rows dropped as exact copies of another row

    def candidates(self) -> list[Row]:
        """Every row, each version of a conflicting key included: a match chosen among them, then rejected if its
        key conflicts, is never silently replaced by the next-best match."""
        return [*self.rows.values(), *(v for versions in self.conflicts.values() for v in versions)]

    def conflict(self, value: Any) -> tuple[str, str] | None:
        """(reason, detail) of the reject of an image that needs ``value``'s row, if its rows differ."""
        versions = self.conflicts.get(value)
        if versions is None:
            return None
        columns = sorted(c for c in versions[0] if len({v.get(c) for v in versions}) > 1)
        named = (f"{self.key}={value}" if isinstance(self.key, str)
                 else ", ".join(f"{k}={v}" for k, v in zip(self.key, value)))
        return f"conflicting_{self.table}", f"{self.table} {named}: {len(versions)} rows differ in {','.join(columns)}"


def duplicate_events(tables: Iterable[Unique]):
    """Each table's counts of exact copies merged and of keys whose rows differ (README "Bad input")."""
    for table in tables:
        if table.copies:
            yield accounting.event(f"duplicates/identical_rows/{table.table}", table.copies)
        if table.conflicts:
            yield accounting.event(f"duplicates/conflicting_keys/{table.table}", len(table.conflicts))


def unique_images(images: Iterable[mimic.Image]) -> Unique:
    """A subject's metadata rows by dicom_id (Image fields as a row): exact copies merge, differing ones conflict."""
    return unique_rows(map(dataclasses.asdict, images), mimic.CXR_METADATA.name, "dicom_id")


def one_image_per_row(images: Iterable[mimic.Image]) -> tuple[list[mimic.Image], list[tuple[mimic.Image, tuple]]]:
    """For cohorts whose unit is a metadata row (ed_cxr, cxr_ehr): (the subject's images to use, in dicom_id order;
    (row, (reason, detail)) of each row rejected). Exact copies of a row are used once, the others rejected as
    ``duplicate_dicom_id``; a dicom_id whose rows differ rejects every row (``conflicting_cxr_metadata``): which is
    right cannot be known, and taking the first would follow input order."""
    images = sorted(images, key=lambda im: (im.dicom_id, _fingerprint(dataclasses.asdict(im))))
    conflicts = unique_images(images)
    used, rejected = [], []
    for image in images:
        problem = conflicts.conflict(image.dicom_id) or (
            ("duplicate_dicom_id", "an identical metadata row of this dicom_id is used")
            if used and used[-1].dicom_id == image.dicom_id else None)
        if problem:
            rejected.append((image, problem))
        else:
            used.append(image)
    return used, rejected


def unique_rows(rows: Iterable[Row], table: str, key: str | tuple[str, ...]) -> Unique:
    """Group rows by ``key`` (a column, or a tuple of columns); rows equal in every typed column are one row, a key
    with differing rows a conflict."""
    versions: dict[Any, list[Row]] = defaultdict(list)
    copies = 0
    for row in rows:
        same_key = versions[row[key] if isinstance(key, str) else tuple(row[k] for k in key)]
        if row in same_key:
            copies += 1
        else:
            same_key.append(row)
    return Unique(table, key, {k: v[0] for k, v in versions.items() if len(v) == 1},
                  {k: tuple(sorted(v, key=_fingerprint)) for k, v in versions.items() if len(v) > 1}, copies)


class _OneSubject(beam.DoFn):
    def __init__(self, name: str, ids: Callable, stage: str, unit: str | None):
        self._name, self._ids, self._stage, self._unit = name, ids, stage, unit

    def process(self, element):
        value, items = element
        found = sorted(((self._ids(item), item) for item in items), key=lambda pair: pair[0][1:])
        subjects = sorted({subject for (_, subject, _), _ in found})
        if len(subjects) == 1:
            yield from (item for _, item in found)
            return
        detail = f"{self._name}={value} under subject_ids {','.join(map(str, subjects))}"
        for (_, subject, study), _ in found:
            if self._unit:
                yield accounting.event(self._unit)
            yield from accounting.reject(self._stage, f"{self._name}_of_several_subjects", subject_id=subject,
                                         study_id=study, dicom_id=value if self._name == "dicom_id" else None,
                                         detail=detail, counter="rejected")


class OneSubjectPerId(beam.PTransform):
    """Items carrying an id MIMIC gives one subject (a dicom_id, hadm_id, stay_id) -> the items whose id is under
    one subject; a repeat within a subject is the cohort's to settle, beside the subject's other rows. An id under
    several subjects is rejected for each item (``<stage>/<name>_of_several_subjects``): which subject is right
    cannot be known, and the id keys the records (the key check would stop the job). ``ids``: item -> (id,
    subject_id, study_id or None); ``unit``: the event each rejected item also counts as, so the funnel adds up."""

    def __init__(self, name: str, ids: Callable[[Any], tuple[Any, int, int | None]], stage: str,
                 unit: str | None = None, main: str = "rows"):
        super().__init__()
        self._name, self._ids, self._stage, self._unit, self._main = name, ids, stage, unit, main

    def expand(self, items):
        ids = self._ids
        return (items
                | "KeyById" >> beam.Map(lambda item: (ids(item)[0], item))
                | "GroupById" >> beam.GroupByKey()
                | "OneSubject" >> beam.ParDo(_OneSubject(self._name, ids, self._stage, self._unit)).with_outputs(
                    accounting.REJECTS, accounting.EVENTS, main=self._main))


def rejected_reasons(rejects: Iterable[Row]) -> str:
    """The reasons of read-stage rejects, sorted and comma-separated ("" for none)."""
    return ",".join(sorted({reject["reason"] for reject in rejects}))


@dataclasses.dataclass(frozen=True)
class RowRejects:
    """The rows of ``table`` rejected at read, as a join sees them: a reject line holds ids, not the row's times or
    hadm_id, so they are known per subject, and a unit that could have used one (``why``) is rejected as
    ``<name>_row_rejected`` rather than built from the next-best row. Keyed under ``tag`` (``keyed``)."""

    name: str
    table: str
    why: str

    @property
    def tag(self) -> str:
        return f"rejected_{self.table}"

    def keyed(self, rejects):
        """The table's reject lines, keyed by subject for the CoGroupByKey under ``tag``."""
        return rejects | f"Key {self.tag}" >> KeyRejectsBySubject()

    def problem(self, groups: Mapping[str, Iterable[Row]]) -> tuple[str, str] | None:
        """(reason, detail) when the subject's ``groups`` hold reject lines of the table, else None."""
        return self.problem_of(groups.get(self.tag, ()))

    def problem_of(self, rejects: Iterable[Row]) -> tuple[str, str] | None:
        """(reason, detail) when ``rejects`` (reject lines of the table's rows) is not empty, else None."""
        reasons = rejected_reasons(rejects)
        return (f"{self.name}_row_rejected", f"{self.why}; {self.table} rows of this subject rejected: {reasons}"
                ) if reasons else None


FROM_ARRIVAL = "the stay's rows up to the X-ray (used from arrival on) may include it"
STAY_REJECTS = RowRejects("stay", mimic.EDSTAYS.name, "one may be the X-ray's stay, whose times are unknown")
PATIENT_REJECTS = RowRejects("patient", mimic.PATIENTS.name, "age and sex come from the patients row")
ARRIVAL_REJECTS = tuple(RowRejects(name, table.name, FROM_ARRIVAL) for name, table in (
    ("triage", mimic.TRIAGE), ("vitalsign", mimic.VITALSIGN), ("medrecon", mimic.MEDRECON), ("pyxis", mimic.PYXIS)))
ROW_REJECTS = (STAY_REJECTS, PATIENT_REJECTS, *ARRIVAL_REJECTS)  # the read rejects a kept image may need


class KeyRejectsBySubject(beam.PTransform):
    """Reject lines -> (subject_id, reject) for a join (see ``row_rejected``); one whose subject_id could not be
    read ties to no unit."""

    def expand(self, rejects):
        return (rejects | "Attributable" >> beam.Filter(lambda r: r["subject_id"] is not None)
                | "KeyBySubject" >> beam.Map(lambda r: (r["subject_id"], r)))


def rejected_labels(groups: Mapping[str, Iterable[Row]]) -> dict[Any, str]:
    """study_id -> the reasons its CheXpert rows were rejected at read (``REJECTED_LABELS``; for label_problem)."""
    return {study: rejected_reasons(rows) for study, rows in group_by(groups.get(REJECTED_LABELS, ()),
                                                                      "study_id").items()}


def label_problem(study_id: int, labels: Unique, rejected: Mapping[Any, str]) -> tuple[str, str] | None:
    """Why an image of this study cannot take its labels: a CheXpert row of the study was rejected when read, or the
    study has no row while a row of the subject whose study_id could not be read was rejected, or its rows differ."""
    if study_id in rejected:
        return "label_row_rejected", f"cxr_chexpert row of study_id={study_id} rejected at read: {rejected[study_id]}"
    if None in rejected and study_id not in labels.rows and study_id not in labels.conflicts:
        return "label_row_rejected", f"no cxr_chexpert row of study_id={study_id}; a row of this subject with an " \
                                     f"unreadable study_id rejected at read: {rejected[None]}"
    return labels.conflict(study_id)


def _tie_to_subjects(image, orphans):
    for row in orphans[image.study_id]:  # a MultiMap: [] for a study with no orphan reject
        yield image.subject_id, {**row, "subject_id": image.subject_id}


class KeyLabelRejects(beam.PTransform):
    """CheXpert read rejects -> (subject_id, reject) for the join. A row whose subject_id cannot be read but whose
    study_id can is tied to its study's subject through the kept images (once per image: the join reads reasons as a
    set; the side input is empty on clean data), so that study's images are rejected rather than written unlabelled;
    a row with neither cannot be tied to any image."""

    def __init__(self, images):
        super().__init__()
        self._images = images

    def expand(self, rejects):
        attributed = rejects | "Attributable" >> beam.Filter(lambda r: r["subject_id"] is not None)
        orphans = (rejects | "StudyOnly" >> beam.Filter(lambda r: r["subject_id"] is None and r["study_id"] is not None)
                   | "KeyByStudy" >> beam.Map(lambda r: (r["study_id"], r)))
        tied = self._images | "TieByStudy" >> beam.FlatMap(_tie_to_subjects, beam.pvalue.AsMultiMap(orphans))
        keyed = attributed | "KeyBySubject" >> beam.Map(lambda r: (r["subject_id"], r))
        return (keyed, tied) | "Flatten" >> beam.Flatten()


class LinkSubject(beam.DoFn):
    """(subject_id, co-grouped rows) -> Linked per matched image; counts no_ed_stay, duplicate rows and images;
    rejects images whose stay, triage, patient, label or split rows conflict or were rejected when read; with
    ``within_ed_stay`` drops (and counts) images taken after the matched stay's ED departure."""

    def __init__(self, window_start_hours: float, window_end_hours: float, within_ed_stay: bool = False):
        self._start = window_start_hours
        self._end = window_end_hours
        self._within = within_ed_stay

    def process(self, element):
        _, groups = element
        unique = {tag: unique_rows(groups.get(tag, ()), table, key) for tag, (table, key) in ONE_ROW_PER.items()}
        yield from duplicate_events(unique.values())
        images, duplicates = one_image_per_row(groups["images"])
        for image, (reason, detail) in duplicates:
            yield from accounting.reject(STAGE, reason, subject_id=image.subject_id, study_id=image.study_id,
                                         dicom_id=image.dicom_id, detail=detail, counter="rejected")
        if not images:
            return
        stays, triage, patients, labels, splits, vital_rows = (
            unique[t] for t in ("stays", "triage", "patients", "labels", "splits", "vitals"))
        candidates = stays.candidates()
        stay_rejected = STAY_REJECTS.problem(groups)
        patient_rejected = PATIENT_REJECTS.problem(groups)
        arrival_rejected = next(filter(None, (rejects.problem(groups) for rejects in ARRIVAL_REJECTS)), None)
        labels_rejected = rejected_labels(groups)
        vitals, medrecon, pyxis = ({stay: in_time_order(rows) for stay, rows in group_by(rows, "stay_id").items()}
                                   for rows in (vital_rows.rows.values(), groups["medrecon"], groups["pyxis"]))
        for image in images:
            t = image.study_time
            stay = select_stay(t, candidates, self._start, self._end)
            if stay is None and not stay_rejected:
                yield accounting.event("no_ed_stay")
                continue
            if stay_rejected:
                problem = stay_rejected
            else:
                arrived = stay["intime"] <= t
                problem = (stays.conflict(stay["stay_id"])
                           or label_problem(image.study_id, labels, labels_rejected)
                           or (triage.conflict(stay["stay_id"]) if arrived else None)
                           or next((vital_rows.conflict(key) for key in sorted(vital_rows.conflicts)
                                    if key[0] == stay["stay_id"] and key[1] <= t), None)
                           or patients.conflict(image.subject_id)
                           or splits.conflict(image.dicom_id)
                           or patient_rejected
                           or (arrival_rejected if arrived else None))
            if problem:
                yield from accounting.reject(STAGE, problem[0], subject_id=image.subject_id, study_id=image.study_id,
                                             dicom_id=image.dicom_id, detail=problem[1], counter="rejected")
                continue
            if self._within and after_departure(t, stay.get("outtime")):
                yield accounting.event("dropped_after_ed_departure")
                continue
            yield accounting.event("images_linked")
            split = splits.rows.get(image.dicom_id)
            yield Linked(
                image=image,
                stay=stay if arrived else {**stay, "arrival_transport": None},
                triage=triage.rows.get(stay["stay_id"]) if arrived else None,
                vitals=as_of(vitals.get(stay["stay_id"], ()), t),
                home_meds=as_of(medrecon.get(stay["stay_id"], ()), t),
                ed_meds=as_of(pyxis.get(stay["stay_id"], ()), t),
                patient=patients.rows.get(image.subject_id),
                labels=labels.rows.get(image.study_id),
                official_split=split and split["split"],
            )


def group_by(rows: Iterable[Row], key: str) -> dict[Any, list[Row]]:
    """Rows by the value of ``key``, in input order."""
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
