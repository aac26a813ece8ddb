"""The tf.train.Example of a record: one fixed, documented feature spec (also written to metadata.json)."""

from __future__ import annotations

from beam_pipeline import mimic
from beam_pipeline.io.tfrecord import BYTES, FLOAT, INT64, serialize_example
from beam_pipeline.transforms.records import Record
from beam_pipeline.transforms.snapshot import FEATURE_NAMES

N_LABELS = len(mimic.LABELS)
N_FEATURES = len(FEATURE_NAMES)

FEATURE_SPEC: dict[str, tuple[str, int, str]] = {
    "subject_id": (INT64, 1, "MIMIC subject_id"),
    "study_id": (INT64, 1, "MIMIC-CXR study_id"),
    "stay_id": (INT64, 1, "MIMIC-IV-ED stay_id of the matched ED stay"),
    "dicom_id": (BYTES, 1, "MIMIC-CXR dicom_id (the record key)"),
    "split": (BYTES, 1, "train, val or test"),
    "view_position": (BYTES, 1, "DICOM ViewPosition, e.g. AP or PA"),
    "study_datetime": (BYTES, 1, "study date and time, YYYY-MM-DD HH:MM:SS (shifted, local)"),
    "hours_from_arrival": (FLOAT, 1, "hours from ED intime to the study (negative before arrival)"),
    "image/path": (BYTES, 1, "image path relative to the MIMIC-CXR-JPG root"),
    "note/text": (BYTES, 1, "pseudo-note from data known at the study time (UTF-8)"),
    "labels/chexpert": (FLOAT, N_LABELS, "raw CheXpert values in label_order: 1, 0, -1 or NaN (blank)"),
    "labels/binary": (INT64, N_LABELS, "binary targets under the uncertain policy"),
    "labels/mask": (INT64, N_LABELS, "1 where the binary target is valid"),
    "features/values": (FLOAT, N_FEATURES, "structured features in feature_names order, 0 where missing"),
    "features/missing": (INT64, N_FEATURES, "1 where the feature is missing"),
}


def to_example(record: Record) -> bytes:
    values = {
        "subject_id": [record.subject_id],
        "study_id": [record.study_id],
        "stay_id": [record.stay_id],
        "dicom_id": [record.dicom_id.encode()],
        "split": [record.split.encode()],
        "view_position": [record.view_position.encode()],
        "study_datetime": [mimic.format_datetime(record.study_time).encode()],
        "hours_from_arrival": [record.hours_from_arrival],
        "image/path": [record.image_path.encode()],
        "note/text": [record.note.encode("utf-8")],
        "labels/chexpert": record.labels_raw,
        "labels/binary": record.labels_binary,
        "labels/mask": record.labels_mask,
        "features/values": record.features,
        "features/missing": record.features_missing,
    }
    return serialize_example({name: (FEATURE_SPEC[name][0], v) for name, v in values.items()})


def feature_spec_json() -> dict:
    """The spec as written to metadata.json: dtype, fixed length and meaning of every feature."""
    dtype = {INT64: "int64", FLOAT: "float32", BYTES: "string"}
    return {name: {"dtype": dtype[kind], "shape": [length], "description": text}
            for name, (kind, length, text) in FEATURE_SPEC.items()}
