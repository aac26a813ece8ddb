"""Images: which enter the join (view filter on the metadata) and, inside the shard writer, their pixels.

Image bytes are read by ``ImageLoader`` only, inside the TFRecord shard writer (beam_pipeline.fileio.outputs), in
the shard's key order: no raw or processed pixels are ever shuffled. The writer may fetch the next ``read_ahead``
images' bytes on I/O threads while it decodes one (storage latency, e.g. gs://, then overlaps the decoding), so it
holds at most ``read_ahead`` + 1 raw JPEGs and one processed image at a time.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
import cv2
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import accounting, mimic
from beam_pipeline.fileio.sources import BeamSource
from beam_pipeline.transforms import pixels
from beam_pipeline.transforms.join import OneSubjectPerId
from beam_pipeline.transforms.records import Record


class SelectImages(beam.DoFn):
    """Raw metadata row -> mimic.Image for kept views. Other views are only counted: a bad time on a lateral image
    is not our concern."""

    def __init__(self, views: tuple[str, ...]):
        self._views = frozenset(views)
        self._all = mimic.ALL_VIEWS in self._views

    def process(self, row):
        if not self._all and (row["ViewPosition"] or "").strip() not in self._views:
            yield accounting.event("images_other_view")
            return
        yield accounting.event("images_kept_view")
        try:
            yield mimic.parse_image_row(row)
        except mimic.RowError as err:
            yield from accounting.reject("metadata", err.reason, subject_id=mimic.int_or_none(row["subject_id"]),
                                         study_id=mimic.int_or_none(row["study_id"]), dicom_id=row["dicom_id"],
                                         detail=err.detail, counter="rejected")


class SelectKeptImages(beam.PTransform):
    """Metadata rows -> kept-view images (SelectImages), each dicom_id of one subject (join.OneSubjectPerId); like a
    stage, its outputs are ``images`` plus the tagged rejects and events."""

    def __init__(self, views: tuple[str, ...]):
        super().__init__()
        self._views = views

    def expand(self, rows):
        tags = (accounting.REJECTS, accounting.EVENTS)
        selected = rows | "KeptViews" >> beam.ParDo(SelectImages(self._views)).with_outputs(*tags, main="images")
        unique = selected.images | "OneSubjectPerDicomId" >> OneSubjectPerId(
            "dicom_id", lambda im: (im.dicom_id, im.subject_id, im.study_id), "metadata", main="images")
        return {"images": unique.images,
                **{tag: (selected[tag], unique[tag]) | f"All{tag.title()}" >> beam.Flatten() for tag in tags}}


def metadata_row_rejects(read: dict, selected: dict):
    """Every cxr_metadata row rejected when read (``read``: ReadMimicTable's outputs) or typed (``selected``:
    SelectKeptImages'): images of unknown time, which a cohort choosing an image by time must count as possibly the
    one it would choose (join.RowRejects)."""
    return (read[accounting.REJECTS], selected[accounting.REJECTS]) | "MetadataRowRejects" >> beam.Flatten()


@dataclasses.dataclass(frozen=True)
class ImageSettings:
    size: int
    mode: str
    fmt: str
    jpeg_quality: int
    edge_map: bool


READ_AHEAD = 8  # --image_read_ahead's default: about 250 ms of GCS latency hidden, about 12 MB of JPEGs per writer


class ImageLoader:
    """Reads and preprocesses one record's image. ``load`` returns the record with its image, or None, and the
    events and rejects to emit: a missing, unreadable or broken image is a reject and the job goes on. Unreadable
    is any OSError of the source's read (a directory or no permission at the path, an I/O error, GCS refusing the
    object, with its reason). Anything else stops the bundle: a bug, a configuration error (RequesterPaysError), or
    storage still failing after its retries (StorageUnavailableError: not the image's fault, so the runner retries
    the bundle rather than the run being published without the image)."""

    def __init__(self, cxr_root: str, settings: ImageSettings, source: BeamSource = BeamSource(),
                 read_ahead: int = 0):
        self._root = cxr_root
        self._settings = settings
        self._source = source
        self.read_ahead = read_ahead  # images the shard writer fetches ahead of the one it decodes

    def setup(self):
        cv2.setNumThreads(1)  # Beam already runs one bundle per core; OpenCV threads would only oversubscribe

    def fetch(self, record: Record) -> bytes | OSError:
        """The image file's bytes, or the OSError its read raised (``load`` makes it a reject); any other error
        propagates (the shard writer re-raises it). Thread-safe: the shard writer calls it on its read-ahead
        threads."""
        try:
            return self._source.read(FileSystems.join(self._root, record.image_path))
        except OSError as err:
            return err

    def load(self, record: Record, fetched: bytes | OSError | None = None) -> tuple[Record | None, list]:
        """``fetched``: what ``fetch`` returned for this record (None: read it now)."""
        s = self._settings
        data = self.fetch(record) if fetched is None else fetched
        try:
            if isinstance(data, OSError):
                raise data
            image = pixels.preprocess(data, s.size, s.mode, s.fmt, s.jpeg_quality, s.edge_map)
        except FileNotFoundError:
            return None, self._reject(record, "missing_image", f"no file at {record.image_path}")
        except OSError as err:
            return None, self._reject(record, "unreadable_image",
                                      f"{record.image_path}: {type(err).__name__}: {err.strerror or err}")
        except pixels.ImageError as err:
            return None, self._reject(record, err.reason, f"{record.image_path}: {err.detail}")
        events = [accounting.event(f"images_decoded_at_1/{image.reduction}")]
        if (record.image_rows, record.image_columns) != (image.original_height, image.original_width):
            events.append(accounting.event("images_size_differs_from_metadata"))
        return dataclasses.replace(record, image=image), events

    @staticmethod
    def _reject(record: Record, reason: str, detail: str) -> list:
        return list(accounting.reject("images", reason, subject_id=record.subject_id, study_id=record.study_id,
                                      dicom_id=record.dicom_id, detail=detail, counter="rejected"))


def without_pixels(record: Record) -> Record:
    """The record as the later stages need it once written: image geometry kept, encoded bytes dropped."""
    if record.image is None:
        return record
    return dataclasses.replace(record, image=dataclasses.replace(record.image, encoded=b"", edge_map=None))
