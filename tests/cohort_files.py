"""Reading what a cohort's run and the sample tree hold, for the cohort tests: raw MIMIC tables as text rows (as the
release ships them, gzipped or not), a run's manifest and TFRecords keyed by the record key."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

from beam_pipeline import mimic
from beam_pipeline.fileio.tfrecord import parse_example, read_records


def read_csv(path: Path) -> list[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def write_table(path: Path, table: mimic.Table, rows: list[dict]) -> None:
    """A small hand-made table at ``path``: the release's header, the rows' values (missing columns blank)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(table.header)
        writer.writerows([row.get(column, "") for column in table.header] for row in rows)


def table_rows(root: str, table: mimic.Table) -> list[dict[str, str]]:
    """A sample table's rows as text, from ``<root>/<subdir>/<file>``."""
    return read_csv(Path(root, table.subdir, table.filename))


def manifest(folder: Path, key: str) -> dict[int, dict[str, str]]:
    """A run's manifest rows by their integer ``key`` column (hadm_id, stay_id)."""
    return {int(r[key]): r for path in sorted((folder / "manifest").glob("*.csv")) for r in read_csv(path)}


def examples(folder: Path, key: str) -> dict[int, dict]:
    """A run's TFRecord examples (parsed without TensorFlow) by their integer ``key`` feature."""
    found = {}
    for path in sorted((folder / "tfrecords").glob("*.tfrecord")):
        for data in read_records(str(path)):
            example = parse_example(data)
            found[example[key][0]] = example
    return found
