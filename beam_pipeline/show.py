"""Look at records: ``python -m beam_pipeline.show OUTPUT [--split val] [--n 5] [--dicom_id ID ...]
[--save_images DIR]``.

Prints each record readably (ids, times, labels by name, features with units, the filtered note, what retrieval
found, the image geometry) and can save its image (and edge map) as PNG. Reads shards of one split, stopping as soon
as it has what was asked for. Local or gs://; follows LATEST. Reads ed_cxr outputs (another cohort's is refused
before any record is read).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Iterator

from beam_pipeline import mimic
from beam_pipeline.fileio.tfrecord import parse_example, read_records
from beam_pipeline.readers.common import UnsupportedCohort, open_run, require_cohort, shard_files


def records(output: str, split: str, dicom_ids: set[str], n: int) -> Iterator[dict]:
    """Parsed records of a split: the given dicom_ids (any number), else the first n."""
    folder, metadata = open_run(output)
    require_cohort(metadata, output, "python -m beam_pipeline.show")
    found = 0
    for path in shard_files(folder, split, metadata):
        for raw in read_records(path):
            example = parse_example(raw)
            if dicom_ids and example["dicom_id"][0].decode() not in dicom_ids:
                continue
            yield metadata, example
            found += 1
            if found == (len(dicom_ids) or n):
                return


def _one(example: dict, key: str, default=None):
    values = example.get(key)
    return values[0] if values else default


def describe(metadata: dict, example: dict) -> str:
    """A readable multi-line description of one record."""
    raw = example["labels/chexpert"]
    by_state = {state: [label for label, v in zip(mimic.LABELS, raw) if v == value]
                for state, value in (("positive", 1.0), ("uncertain", -1.0), ("negative", 0.0))}
    blank = [label for label, v in zip(mimic.LABELS, raw) if math.isnan(v)]
    features = ", ".join(f"{name}={'-' if missing else f'{value:g}'}" for name, value, missing in zip(
        metadata["feature_names"], example["features/values"], example["features/missing"]))
    lines = [
        f"dicom_id {_one(example, 'dicom_id').decode()}  split {_one(example, 'split').decode()}",
        f"  subject {_one(example, 'subject_id')}  study {_one(example, 'study_id')}  ED stay "
        f"{_one(example, 'stay_id')}  view {_one(example, 'view_position').decode()}",
        f"  study {_one(example, 'study_datetime').decode()}, {_one(example, 'hours_from_arrival'):.2f} h after ED "
        f"arrival",
        f"  labels: {_one(example, 'labels/status', b'?').decode()}",  # all blank and no CheXpert row look alike
        *(f"  {state}: {', '.join(names) or '-'}" for state, names in by_state.items()),
        f"  blank: {', '.join(blank) or '-'}",
        f"  features: {features}",
        f"  note ({_one(example, 'note/length')} tokens): {_one(example, 'note/text').decode('utf-8')}",
    ]
    if "rag/ids" in example:
        pairs = ", ".join(f"{i.decode()} ({s:.2f})" for i, s in zip(example["rag/ids"], example["rag/scores"]))
        lines.append(f"  retrieval for '{_one(example, 'rag/query').decode('utf-8')}': {pairs}")
    if "image/encoded" in example:
        lines.append(f"  image {_one(example, 'image/height')}x{_one(example, 'image/width')} "
                     f"{_one(example, 'image/format').decode()} from {_one(example, 'image/original_height')}x"
                     f"{_one(example, 'image/original_width')} (scale {_one(example, 'image/scale_y'):.4f} x "
                     f"{_one(example, 'image/scale_x'):.4f}, offset {_one(example, 'image/offset_y')}, "
                     f"{_one(example, 'image/offset_x')})")
    return "\n".join(lines)


def save_images(example: dict, folder: str) -> list[str]:
    """Write the record's image (and edge map) as PNG files named by dicom_id; return their paths."""
    import cv2
    import numpy as np

    os.makedirs(folder, exist_ok=True)
    dicom_id = _one(example, "dicom_id").decode()
    written = []
    for key, suffix in (("image/encoded", ""), ("image/edge_map", "-edges")):
        if key in example:
            image = cv2.imdecode(np.frombuffer(example[key][0], np.uint8), cv2.IMREAD_UNCHANGED)
            path = os.path.join(folder, f"{dicom_id}{suffix}.png")
            cv2.imwrite(path, image)
            written.append(path)
    return written


def positive_int(text: str) -> int:
    """argparse type of --n, at least 1: records() stops at the n-th record, so 0 would read the whole split."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m beam_pipeline.show", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="the --output folder (follows its LATEST) or one run folder, local or gs://")
    parser.add_argument("--split", default="val", choices=mimic.SPLITS)
    parser.add_argument("--n", type=positive_int, default=5, help="records to show when no --dicom_id is given")
    parser.add_argument("--dicom_id", action="append", default=[], help="show this record (repeatable)")
    parser.add_argument("--save_images", metavar="DIR", help="also save each record's image as PNG here")
    args = parser.parse_args(argv)
    dicom_ids = set(args.dicom_id)
    shown = 0
    try:
        for metadata, example in records(args.output, args.split, dicom_ids, args.n):
            print(describe(metadata, example))
            if args.save_images:
                for path in save_images(example, args.save_images):
                    print(f"  saved {path}")
            print()
            shown += 1
    except (FileNotFoundError, UnsupportedCohort) as err:  # no complete run there, or not ed_cxr (readers.common)
        sys.exit(f"error: {err}")
    if shown < len(dicom_ids):
        parser.error(f"{len(dicom_ids) - shown} of the dicom_ids are not in the {args.split} split")
    if not shown:
        print(f"the {args.split} split holds no records")


if __name__ == "__main__":
    main()
