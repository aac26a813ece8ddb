"""Assemble one output record per linked image: ids, times, pseudo-note, features and labels."""

from __future__ import annotations

import array
import dataclasses
import datetime as dt
from collections.abc import Iterable

import apache_beam as beam

from beam_pipeline import accounting
from beam_pipeline.transforms import labels as labels_lib
from beam_pipeline.transforms.join import Linked
from beam_pipeline.transforms.notes import render_note, retrieval_query
from beam_pipeline.transforms.pixels import ProcessedImage
from beam_pipeline.transforms.snapshot import feature_vector, take_snapshot


@dataclasses.dataclass(frozen=True)
class Record:
    subject_id: int
    study_id: int
    dicom_id: str
    stay_id: int
    view_position: str
    study_time: dt.datetime
    ed_intime: dt.datetime
    ed_outtime: dt.datetime | None
    image_path: str  # relative to --mimic_cxr_root
    image_rows: int | None
    image_columns: int | None
    note: str
    query: str  # what retrieval embeds (notes.retrieval_query); leakage-filtered like the note
    features: tuple[float, ...]
    features_missing: tuple[int, ...]
    labels_raw: tuple[float, ...]
    labels_binary: tuple[int, ...]
    labels_mask: tuple[int, ...]
    official_split: str | None = None
    split: str | None = None
    image: ProcessedImage | None = None
    input_ids: array.array | tuple = ()  # tokens of the (filtered) note, unpadded (token_ids)
    truncated: bool = False  # the note was longer than --max_tokens
    enhanced_note: str | None = None  # note + retrieved passages, when retrieval runs
    enhanced_input_ids: array.array | tuple = ()
    rag_ids: tuple[str, ...] = ()
    rag_scores: tuple[float, ...] = ()
    labels_status: str = labels_lib.LABELED  # labeled, all_blank or no_label_row (unlabelled: mask all 0)
    after_ed_departure: bool = False  # study time > ed_outtime (join.after_departure)
    redacted: bool = False  # the leakage filter replaced at least one span of the note

    def written_events(self) -> list[str]:
        """What the funnel reports of written records: label status, X-rays after ED departure, notes redacted and
        truncated."""
        flags = (("written/after_ed_departure", self.after_ed_departure), ("written/notes_redacted", self.redacted),
                 ("written/notes_truncated", self.truncated))
        return [f"labels/{self.labels_status}"] + [name for name, on in flags if on]

    @property
    def hours_from_arrival(self) -> float:
        return (self.study_time - self.ed_intime).total_seconds() / 3600.0


def token_ids(ids: Iterable[int]) -> array.array:
    """Token ids packed 2 bytes each (4 when the vocabulary needs it): a record's ~600 ids take 1.2 KB in memory and
    encoded, where a tuple of Python ints takes 21 KB in memory and 1.8 KB encoded."""
    ids = list(ids)
    return array.array("H" if max(ids, default=0) < 2 ** 16 else "I", ids)


class BuildRecord(beam.DoFn):
    """Linked -> Record; counts implausible vitals. (Label status and ED departure are counted on written records
    only, by accounting.CountWritten; bad label values were rejected at read and their images at the join.)"""

    def __init__(self, uncertain_policy: str):
        self._policy = uncertain_policy

    def process(self, linked: Linked):
        image = linked.image
        raw, binary, mask, status = labels_lib.label_vectors(linked.labels, self._policy)
        snap = take_snapshot(linked)
        if snap.implausible_values:
            yield accounting.event("vitals_implausible_dropped", snap.implausible_values)
        values, missing = feature_vector(snap)
        yield Record(
            subject_id=image.subject_id,
            study_id=image.study_id,
            dicom_id=image.dicom_id,
            stay_id=linked.stay["stay_id"],
            view_position=image.view_position,
            study_time=image.study_time,
            ed_intime=linked.stay["intime"],
            ed_outtime=linked.stay.get("outtime"),
            image_path=image.path,
            image_rows=image.rows,
            image_columns=image.columns,
            note=render_note(snap),
            query=retrieval_query(snap),
            features=tuple(values),
            features_missing=tuple(missing),
            labels_raw=tuple(raw),
            labels_binary=tuple(binary),
            labels_mask=tuple(mask),
            official_split=linked.official_split,
            labels_status=status,
            after_ed_departure=snap.after_ed_departure,
        )
