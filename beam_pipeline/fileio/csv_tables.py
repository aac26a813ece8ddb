"""Read MIMIC CSV tables (local or gs://, .csv or .csv.gz) into typed rows.

Files are parsed as whole RFC-4180 documents with the csv module, never split on lines, so quoted chief complaints
with commas, quotes and newlines survive. Which file to read and whether it has the needed columns is checked when
the pipeline is built, so a wrong root fails before any worker starts, with the file and column in the message.
Bad rows go to rejects with the file's line number; the file's sha256 is recorded for metadata.json.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import sys
from typing import IO, Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import accounting, mimic
from beam_pipeline.fileio.sources import BeamSource

csv.field_size_limit(sys.maxsize)


class InputError(ValueError):
    """A missing input file or column: the job cannot start."""


def resolve_table(root: str, table: mimic.Table, source: BeamSource) -> str:
    """Find ``<root>/<subdir>/<name>.csv.gz`` or ``.csv`` (also directly under root); fail naming every path tried."""
    folders = [FileSystems.join(root, table.subdir), root] if table.subdir else [root]
    tried = [FileSystems.join(folder, table.basename + ext) for folder in folders for ext in (".csv.gz", ".csv")]
    for path in tried:
        if source.exists(path):
            return path
    raise InputError(f"{table.name}: no input file found; tried {', '.join(tried)}")


class _HashingReader(io.RawIOBase):
    """Pass bytes through while hashing them, so the checksum costs no second read."""

    def __init__(self, raw: IO[bytes]):
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _open_text(path: str, source: BeamSource) -> tuple[IO[str], _HashingReader]:
    raw = _HashingReader(source.open(path))
    buffered = io.BufferedReader(raw, 1 << 20)
    binary = gzip.GzipFile(fileobj=buffered, mode="rb") if path.endswith(".gz") else buffered
    # MIMIC is UTF-8; an undecodable byte becomes U+FFFD rather than aborting a 3M-row table.
    return io.TextIOWrapper(binary, encoding="utf-8", errors="replace", newline=""), raw


def read_header(path: str, source: BeamSource) -> list[str]:
    text, _ = _open_text(path, source)
    with text:
        try:
            header = next(csv.reader(text))
        except StopIteration:
            raise InputError(f"{path}: file is empty (no header row)") from None
        except (OSError, EOFError) as err:
            raise InputError(f"{path}: cannot be read ({err})") from None
    return _clean_header(header)


def _clean_header(header: list[str]) -> list[str]:
    return [name.lstrip("\ufeff").strip() for name in header]


def check_columns(path: str, table: mimic.Table, header: list[str]) -> None:
    """Every column the pipeline reads must be in the header; name the first missing one and the file."""
    for column in table.types:
        if column not in header:
            raise InputError(f"{path}: required column {column!r} of {table.name} is missing "
                             f"(header: {','.join(header)})")


def resolve_and_check(root: str, table: mimic.Table, source: BeamSource) -> str:
    path = resolve_table(root, table, source)
    check_columns(path, table, read_header(path, source))
    return path


class ReadCsvRows(beam.DoFn):
    """Stream one CSV file into typed row dicts; rows that cannot be typed go to rejects."""

    def __init__(self, table: mimic.Table, source: BeamSource):
        self._table = table
        self._source = source

    def process(self, path: str):
        table = self._table
        text, raw = _open_text(path, self._source)
        rows = rejected = 0
        with text:
            reader = csv.reader(text)
            try:
                header = _clean_header(next(reader, []))
                check_columns(path, table, header)
                width = len(header)
                line = reader.line_num + 1
                for fields in reader:
                    start, line = line, reader.line_num + 1
                    rows += 1
                    if len(fields) != width:
                        rejected += 1
                        yield from accounting.reject(
                            "read", "wrong_field_count", subject_id=_maybe_int(fields, header, "subject_id"),
                            detail=f"{path}:{start}: expected {width} fields, got {len(fields)}")
                        continue
                    record = dict(zip(header, fields))
                    try:
                        yield mimic.type_row(table, record)
                    except mimic.RowError as err:
                        rejected += 1
                        yield from accounting.reject(
                            "read", err.reason, subject_id=_maybe_int(fields, header, "subject_id"),
                            study_id=_maybe_int(fields, header, "study_id"), detail=f"{path}:{start}: {err.detail}")
                raw.drain()
            except (OSError, EOFError, csv.Error) as err:
                raise InputError(f"{path}: cannot be read after {rows} rows ({err})") from None
        yield accounting.event(f"rows_read/{table.name}", rows)
        if rejected:
            yield accounting.event(f"rows_rejected/{table.name}", rejected)
        yield beam.pvalue.TaggedOutput(
            "files", {"table": table.name, "path": path, "bytes": raw.size, "sha256": raw.sha256.hexdigest(),
                      "rows": rows})


def _maybe_int(fields: list[str], header: list[str], column: str) -> int | None:
    index = header.index(column) if column in header else len(fields)
    return mimic.int_or_none(fields[index]) if index < len(fields) else None


class ReadMimicTable(beam.PTransform):
    """``path`` -> typed rows, plus tagged ``rejects``, ``events`` and ``files`` (one checksum record)."""

    def __init__(self, table: mimic.Table, path: str, source: BeamSource = BeamSource()):
        super().__init__()
        self._table = table
        self._path = path
        self._source = source

    def expand(self, pbegin):
        return (pbegin
                | "Path" >> beam.Create([self._path])
                | "Parse" >> beam.ParDo(ReadCsvRows(self._table, self._source)).with_outputs(
                    accounting.REJECTS, accounting.EVENTS, "files", main="rows"))
