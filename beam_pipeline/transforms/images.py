"""Which images enter the join: keep the configured views, type ids and study times, reject the rest with a reason."""

from __future__ import annotations

import apache_beam as beam

from beam_pipeline import accounting, mimic

STAGE = "images"


class SelectImages(beam.DoFn):
    """Raw metadata row -> mimic.Image for kept views. Other views are only counted: a bad time on a lateral image
    is not our concern."""

    def __init__(self, views: tuple[str, ...]):
        self._views = frozenset(views)

    def process(self, row):
        if (row["ViewPosition"] or "").strip() not in self._views:
            yield accounting.event("images_other_view")
            return
        yield accounting.event("images_kept_view")
        try:
            yield mimic.parse_image_row(row)
        except mimic.RowError as err:
            yield from accounting.reject(STAGE, err.reason, subject_id=mimic.int_or_none(row["subject_id"]),
                                         study_id=mimic.int_or_none(row["study_id"]), dicom_id=row["dicom_id"],
                                         detail=err.detail, counter="rejected")
