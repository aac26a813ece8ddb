"""Images: which enter the join (view filter on the metadata) and, after it, their pixels.

Image bytes are read only here, after the CoGroupByKey, once per record; nothing heavier than metadata is shuffled
before the output shards.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
import cv2
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import accounting, mimic
from beam_pipeline.fileio.sources import BeamSource
from beam_pipeline.transforms import pixels
from beam_pipeline.transforms.records import Record


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
            yield from accounting.reject("metadata", err.reason, subject_id=mimic.int_or_none(row["subject_id"]),
                                         study_id=mimic.int_or_none(row["study_id"]), dicom_id=row["dicom_id"],
                                         detail=err.detail, counter="rejected")


@dataclasses.dataclass(frozen=True)
class ImageSettings:
    size: int
    mode: str
    fmt: str
    jpeg_quality: int
    edge_map: bool


class ProcessImages(beam.DoFn):
    """Record -> record with its preprocessed image; a missing or broken image becomes a reject and the job goes on."""

    def __init__(self, cxr_root: str, settings: ImageSettings, source: BeamSource = BeamSource()):
        self._root = cxr_root
        self._settings = settings
        self._source = source

    def setup(self):
        cv2.setNumThreads(1)  # Beam already runs one bundle per core; OpenCV threads would only oversubscribe

    def process(self, record: Record):
        s = self._settings
        try:
            data = self._source.read(FileSystems.join(self._root, record.image_path))
            image = pixels.preprocess(data, s.size, s.mode, s.fmt, s.jpeg_quality, s.edge_map)
        except FileNotFoundError:
            yield from self._reject(record, "missing_image", f"no file at {record.image_path}")
            return
        except pixels.ImageError as err:
            yield from self._reject(record, err.reason, f"{record.image_path}: {err.detail}")
            return
        yield accounting.event(f"images_decoded_at_1/{image.reduction}")
        if (record.image_rows, record.image_columns) != (image.original_height, image.original_width):
            yield accounting.event("images_size_differs_from_metadata")
        yield dataclasses.replace(record, image=image)

    @staticmethod
    def _reject(record: Record, reason: str, detail: str):
        yield from accounting.reject("images", reason, subject_id=record.subject_id, study_id=record.study_id,
                                     dicom_id=record.dicom_id, detail=detail, counter="rejected")
