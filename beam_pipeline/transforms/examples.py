"""The tf.train.Example of a record: one fixed, documented feature spec (also written to metadata.json).

Which image features exist depends on ``--images`` and ``--edge_map``, which retrieval features on ``--kb_index``;
everything else is always there. Shapes are ``()`` for scalars, ``(n,)`` for vectors and ``(None,)`` for
variable-length token ids (stored unpadded). A cohort whose records hold some features only under a condition
(medfuse: the image, for a stay with a paired X-ray) marks them with ``present_when``, and metadata.json says so, for
readers to parse them as optional.
"""

from __future__ import annotations

from typing import Any

from beam_pipeline import mimic
from beam_pipeline.fileio.tfrecord import BYTES, FLOAT, INT64, serialize_example
from beam_pipeline.transforms.labels import LABELED
from beam_pipeline.transforms.records import Record
from beam_pipeline.transforms.snapshot import FEATURE_NAMES

N_LABELS = len(mimic.LABELS)
N_FEATURES = len(FEATURE_NAMES)
Spec = dict[str, tuple]  # name -> (kind, shape, description[, the condition under which a record has it])

RECORD_FEATURES: Spec = {
    "subject_id": (INT64, (), "MIMIC subject_id"),
    "study_id": (INT64, (), "MIMIC-CXR study_id"),
    "stay_id": (INT64, (), "MIMIC-IV-ED stay_id of the matched ED stay"),
    "dicom_id": (BYTES, (), "MIMIC-CXR dicom_id (the record key)"),
    "split": (BYTES, (), "train, val or test"),
    "view_position": (BYTES, (), "DICOM ViewPosition, e.g. AP or PA"),
    "study_datetime": (BYTES, (), "study date and time, YYYY-MM-DD HH:MM:SS[.ffffff] (shifted, local; the "
                                  "fraction as StudyTime had it)"),
    "hours_from_arrival": (FLOAT, (), "hours from ED intime to the study (negative before arrival)"),
    "ed_outtime": (BYTES, (), "ED departure of the matched stay, YYYY-MM-DD HH:MM:SS[.ffffff], only once it has "
                              "happened (after_ed_departure = 1); empty for an X-ray taken in the ED, whose departure "
                              "lies in the future (the manifest has it for every record, for filtering)"),
    "after_ed_departure": (INT64, (), "1 when the study was taken after ED departure (study time > ed_outtime)"),
    "image/path": (BYTES, (), "source JPEG path relative to the MIMIC-CXR-JPG root"),
    "note/text": (BYTES, (), "pseudo-note from data known at the study time, leakage-filtered (UTF-8)"),
    "note/input_ids": (INT64, (None,), "tokens of note/text, special tokens included, unpadded"),
    "note/length": (INT64, (), "number of note/input_ids"),
    "note/truncated": (INT64, (), "1 when note/text was cut at --max_tokens"),
    "labels/chexpert": (FLOAT, (N_LABELS,), "raw CheXpert values in label_order: 1, 0, -1 or NaN (blank)"),
    "labels/binary": (INT64, (N_LABELS,), "targets under the uncertain policy: 1 or 0 where labels/mask is 1, "
                                          "-1 (no target) where it is 0"),
    "labels/mask": (INT64, (N_LABELS,), "1 where the binary target is valid"),
    "labels/present": (INT64, (), "1 when the study has CheXpert labels; 0 when unlabelled (no row, or an "
                                  "all-blank row): then labels/mask is all 0"),
    "labels/status": (BYTES, (), "labeled, all_blank or no_label_row"),
    "features/values": (FLOAT, (N_FEATURES,), "structured features in feature_names order, 0 where missing"),
    "features/missing": (INT64, (N_FEATURES,), "1 where the feature is missing"),
}
IMAGE_FEATURES: Spec = {
    "image/encoded": (BYTES, (), "uint8 grayscale image, image_size x image_size, encoded as image/format"),
    "image/format": (BYTES, (), "png or jpeg"),
    "image/height": (INT64, (), "output height in pixels (= image_size)"),
    "image/width": (INT64, (), "output width in pixels (= image_size)"),
    "image/original_height": (INT64, (), "height of the source JPEG"),
    "image/original_width": (INT64, (), "width of the source JPEG"),
    "image/scale_y": (FLOAT, (), "output pixels per original pixel, vertically"),
    "image/scale_x": (FLOAT, (), "output pixels per original pixel, horizontally"),
    "image/offset_y": (INT64, (), "output row of original row 0 (negative when cropped): y = y_orig*scale_y+offset_y"),
    "image/offset_x": (INT64, (), "output column of original column 0: x = x_orig*scale_x+offset_x"),
}
RAG_FEATURES = {  # rag/* lengths are the effective top-k, filled in by feature_spec
    "note/enhanced": (BYTES, (), "note/text, a blank line, 'Retrieved context:', then '[i] title (source): text'"),
    "note/enhanced_input_ids": (INT64, (None,), "tokens of note/enhanced, unpadded"),
    "note/enhanced_length": (INT64, (), "number of note/enhanced_input_ids"),
    "rag/query": (BYTES, (), "what was embedded for retrieval: complaint, abnormal vitals in words, medications"),
    "rag/ids": (BYTES, ("k",), "ids of the retrieved passages, best first"),
    "rag/scores": (FLOAT, ("k",), "cosine similarity of each retrieved passage to rag/query"),
}
EDGE_MAP_FEATURE: Spec = {
    "image/edge_map": (BYTES, (), "CLAHE + Canny edges at the output size, same geometry, uint8 PNG (0 or 255)"),
}


ALL_FEATURES: Spec = {**RECORD_FEATURES, **IMAGE_FEATURES, **EDGE_MAP_FEATURE, **RAG_FEATURES}


def feature_spec(images: bool, edge_map: bool, top_k: int = 0) -> Spec:
    """The features a run writes; top_k is the effective number of retrieved passages (0 = no retrieval)."""
    rag = {name: (kind, tuple(top_k if d == "k" else d for d in shape), text)
           for name, (kind, shape, text) in RAG_FEATURES.items()} if top_k else {}
    return {**RECORD_FEATURES, **rag, **(IMAGE_FEATURES if images else {}),
            **(EDGE_MAP_FEATURE if images and edge_map else {})}


def _values(record: Record) -> dict[str, Any]:
    values = {
        "subject_id": [record.subject_id],
        "study_id": [record.study_id],
        "stay_id": [record.stay_id],
        "dicom_id": [record.dicom_id.encode()],
        "split": [record.split.encode()],
        "view_position": [record.view_position.encode()],
        "study_datetime": [mimic.format_datetime(record.study_time).encode()],
        "hours_from_arrival": [record.hours_from_arrival],
        "ed_outtime": [mimic.format_datetime(record.ed_outtime).encode() if record.after_ed_departure else b""],
        "after_ed_departure": [int(record.after_ed_departure)],
        "image/path": [record.image_path.encode()],
        "note/text": [record.note.encode("utf-8")],
        "note/input_ids": record.input_ids,
        "note/length": [len(record.input_ids)],
        "note/truncated": [int(record.truncated)],
        "labels/chexpert": record.labels_raw,
        "labels/binary": record.labels_binary,
        "labels/mask": record.labels_mask,
        "labels/present": [int(record.labels_status == LABELED)],
        "labels/status": [record.labels_status.encode()],
        "features/values": record.features,
        "features/missing": record.features_missing,
    }
    if record.enhanced_note is not None:
        values.update({
            "note/enhanced": [record.enhanced_note.encode("utf-8")],
            "note/enhanced_input_ids": record.enhanced_input_ids,
            "note/enhanced_length": [len(record.enhanced_input_ids)],
            "rag/query": [record.query.encode("utf-8")],
            "rag/ids": [i.encode() for i in record.rag_ids],
            "rag/scores": record.rag_scores,
        })
    values.update(image_values(record.image))
    return values


def image_values(image) -> dict[str, Any]:
    """The IMAGE_FEATURES (and edge map) of a processed image; none without one. Shared by every cohort."""
    if image is None:
        return {}
    geo = image.geometry
    values = {
        "image/encoded": [image.encoded],
        "image/format": [image.format.encode()],
        "image/height": [geo.size],
        "image/width": [geo.size],
        "image/original_height": [image.original_height],
        "image/original_width": [image.original_width],
        "image/scale_y": [geo.scale_y],
        "image/scale_x": [geo.scale_x],
        "image/offset_y": [geo.offset_y],
        "image/offset_x": [geo.offset_x],
    }
    if image.edge_map is not None:
        values["image/edge_map"] = [image.edge_map]
    return values


def to_example(record: Record) -> bytes:
    return serialize_example({name: (ALL_FEATURES[name][0], v) for name, v in _values(record).items()})


def present_when(condition: str, spec: Spec) -> Spec:
    """``spec``'s features, marked as written only in the records where ``condition`` holds."""
    return {name: (kind, shape, text, condition) for name, (kind, shape, text) in spec.items()}


def feature_spec_json(spec: Spec) -> dict:
    """The spec as written to metadata.json: dtype, shape and meaning of every feature. A feature that some records
    lack gets ``"optional": true`` and ``present_when`` (the condition, e.g. ``has_cxr == 1``), so a reader parses it
    with a default instead of requiring it."""
    dtype = {INT64: "int64", FLOAT: "float32", BYTES: "string"}
    return {name: {"dtype": dtype[kind], "shape": list(shape), "description": text,
                   **({"optional": True, "present_when": when[0]} if when else {})}
            for name, (kind, shape, text, *when) in spec.items()}
