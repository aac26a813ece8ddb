"""Read MIMIC CSV tables (local or gs://, .csv or .csv.gz) into typed rows.

Files are parsed as whole RFC-4180 documents with the csv module, never split on lines, so quoted chief complaints
with commas, quotes and newlines survive. Which file to read, whether it has the needed columns and (for the tables
the job cannot do without) a data row is checked when the pipeline is built, so a wrong root fails before any worker
starts, with the file and column in the message. Bad rows go to rejects with the file's line number; the file's
sha256 is recorded for metadata.json.

A damaged quote cannot swallow rows unseen: physical lines are counted as well as records, a record may not run
past ``mimic.MAX_RECORD_LINES`` lines, nor a line or a field past ``mimic.MAX_RECORD_CHARS`` characters (reading
stops at the character limit), and the parser is strict about quotes, so a quote error that spans lines fails the job
naming the line where the quote opened. NUL bytes are removed and counted; undecodable bytes are counted and their
rows rejected. No error message holds a value from a row.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import gzip
import hashlib
import io
import re
import zlib
from typing import IO, Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import accounting, mimic
from beam_pipeline.fileio.sources import BeamSource

# A field longer than any MIMIC record could be stops the parser (csv.Error) instead of growing with the file; the
# limit is process-wide, as the csv module has no other.
csv.field_size_limit(mimic.MAX_RECORD_CHARS)
# Tables the job cannot do without: no images, no stays or no labels (or no official split when it is used) cannot
# make a dataset, so a header-only file is an error at launch. The others (triage, vitalsign, medrecon, pyxis,
# patients) may be empty in an extract: their fields are then blank in every record.
TABLES_WITH_ROWS = frozenset({"cxr_metadata", "cxr_chexpert", "edstays", "cxr_split"})
# Text handed to the line splitter at a time: no longer than a line may be, so only the line begun in the previous
# block can pass the limit.
_BLOCK_CHARS = min(1 << 16, mimic.MAX_RECORD_CHARS)
_LINE_END = re.compile("[\r\n]")
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # what the surrogateescape decoder makes of each undecodable byte
# What a file that cannot be read raises: gzip's truncation (EOFError) and damaged deflate data (zlib.error) are no
# OSError.
_UNREADABLE = (OSError, EOFError, zlib.error)
# What a column name looks like (every MIMIC one does); an id, a time or a free-text value does not.
_COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_ ]{0,63}")


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

    def close(self) -> None:
        """Close the source's handle too: no layer above knows of it (GzipFile leaves a file object it was given
        open), and garbage collection would close it late, or never while a traceback holds the frame."""
        if not self.closed:
            self._raw.close()
        super().close()


@contextlib.contextmanager
def _open_text(path: str, source: BeamSource) -> Iterator[tuple[IO[str], _HashingReader]]:
    """The file as text, and the hashing layer under it (for its size and sha256); every layer is closed on leaving."""
    with _HashingReader(source.open(path)) as raw, io.BufferedReader(raw, 1 << 20) as buffered:
        binary = gzip.GzipFile(fileobj=buffered, mode="rb") if path.endswith(".gz") else buffered
        # MIMIC is UTF-8. An undecodable byte becomes a lone surrogate (which valid UTF-8 never decodes to), so it can
        # be counted and its row rejected instead of aborting a 3M-row table or turning silently into U+FFFD.
        # "-sig" drops a leading byte-order mark before the csv parser sees it: before a quoted header it would make
        # the quotes part of an unquoted name.
        with io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="") as text:
            yield text, raw


@dataclasses.dataclass
class FileCounts:
    """What reading a file found beyond its records."""

    lines: int = 0  # physical lines, the header included
    nul_removed: int = 0
    undecodable: int = 0  # bytes, the header's included


def record_too_long(path: str, start: int, lines: int) -> str:
    """The error for a record that began on physical line ``start`` and has reached ``lines`` lines: more than
    MAX_RECORD_LINES, or more than MAX_RECORD_CHARS characters in one line or field. A record spans lines only while
    a quoted field is open, so a long one means a quote opened on its first line has not closed."""
    if lines == 1:
        return f"{path}:{start}: this line is longer than {mimic.MAX_RECORD_CHARS:,} characters; no MIMIC row is"
    limit = f"{mimic.MAX_RECORD_LINES} lines" if lines > mimic.MAX_RECORD_LINES else \
        f"{mimic.MAX_RECORD_CHARS:,} characters"
    return (f"{path}:{start}: a quoted field opened here spans more than {limit} (no MIMIC field does): is its "
            f"closing quote missing?")


def records(text: IO[str], path: str, counts: FileCounts) -> Iterator[tuple[int, list[str] | None, int]]:
    """Parse a CSV document into ``(first physical line, fields, undecodable bytes)`` per record, the header first.

    No record can grow with the file: a line or a field (the csv module's field size limit, set above) may not pass
    MAX_RECORD_CHARS characters, so reading stops there (wherever the line lies in the text blocks); a record may not
    span more than MAX_RECORD_LINES lines. The parser is strict about quotes: an error within one line yields
    ``fields=None`` (the caller rejects it); one in a record that spans lines means a quote swallowed the lines after
    it. Both raise InputError naming the line where the quote opened. NUL bytes are removed before parsing (the csv
    module of some Pythons refuses them) and counted, as are undecodable bytes.
    """
    start, bad, max_lines = 1, 0, mimic.MAX_RECORD_LINES

    def lines() -> Iterator[str]:
        """Blocks of whole lines pass at the speed of the text layer; one with a NUL or an undecodable byte is cleaned
        line by line."""
        pending = ""
        while True:
            chunk = text.read(_BLOCK_CHARS)
            block = pending + chunk
            # Cut after the last line end; a final "\r" waits for the "\n" that may follow it.
            cut = max(block.rfind("\n"), block.rfind("\r", 0, len(block) - 1)) + 1 if chunk else len(block)
            block, pending = block[:cut], block[cut:]
            head = block or pending  # starts with the line begun in the previous block: the only one that can be long
            if len(head) > mimic.MAX_RECORD_CHARS and not _LINE_END.search(head, 0, mimic.MAX_RECORD_CHARS + 1):
                raise InputError(record_too_long(path, start, reader.line_num + 2 - start))
            if "\0" in block or not block.isascii() and _UNDECODABLE.search(block):
                for line in io.StringIO(block, newline=""):
                    yield clean(line)
            else:
                yield from io.StringIO(block, newline="")
            if not chunk:
                return

    def clean(line: str) -> str:
        nonlocal bad
        if "\0" in line:
            counts.nul_removed += line.count("\0")
            line = line.replace("\0", "")
        found = len(_UNDECODABLE.findall(line))
        bad += found
        counts.undecodable += found
        return line

    reader = csv.reader(lines(), strict=True)
    while True:
        try:
            for fields in reader:
                end = reader.line_num
                if end - start >= max_lines:
                    raise InputError(record_too_long(path, start, end - start + 1))
                yield start, fields, bad
                start, bad = end + 1, 0
            break
        except csv.Error as err:
            lines_read = reader.line_num - start + 1
            if lines_read > max_lines or str(err).startswith("field larger than field limit"):
                raise InputError(record_too_long(path, start, lines_read)) from None
            if lines_read > 1:
                raise InputError(f"{path}:{start}: a quoted field opened here swallows the lines after it (the "
                                 f"parser stopped at line {reader.line_num}: {err})") from None
            yield start, None, bad
            start, bad = reader.line_num + 1, 0
    counts.lines = reader.line_num


def read_header(path: str, source: BeamSource, table: mimic.Table | None = None) -> list[str]:
    """The file's cleaned header; with ``table`` one of TABLES_WITH_ROWS, also require a data record after it."""
    with _open_text(path, source) as (text, _):
        parsed = records(text, path, FileCounts())
        try:
            first = next(parsed, None)
            if first is None:
                raise InputError(f"{path}: file is empty (no header row)")
            if table is not None and table.name in TABLES_WITH_ROWS and next(parsed, None) is None:
                raise InputError(f"{path}: {table.name} has a header but no data rows")
        except _UNREADABLE as err:
            raise InputError(f"{path}: cannot be read ({err})") from None
    return _clean_header(first[1] or [])


def _clean_header(header: list[str]) -> list[str]:
    """Names without a byte-order mark (the file's own is dropped when decoding, a repeated header's in a concatenated
    file is not) or padding; undecodable bytes shown as U+FFFD (they can be printed)."""
    return [name.lstrip("\ufeff").strip().encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            for name in header]


def check_columns(path: str, table: mimic.Table, header: list[str]) -> None:
    """Every column the pipeline reads must be in the header: name the first missing one and the file. No column of
    the published header may appear twice: the row filter would read the first copy and the typed row the last (names
    MIMIC does not have, e.g. blank ones from trailing commas, are never read, so they may repeat)."""
    for column in table.types:
        if column not in header:
            raise InputError(f"{path}: required column {column!r} of {table.name} is missing (expected header: "
                             f"{','.join(table.header)}; {_found(table, header)})")
    counts = collections.Counter(header)
    for column in table.header:
        if counts[column] > 1:
            raise InputError(f"{path}: column {column!r} appears {counts[column]} times in the header of "
                             f"{table.name}")


def _found(table: mimic.Table, header: list[str]) -> str:
    """The first line's names only when it looks like a header: every name like a column name and one of them the
    table's. A file without its header starts with a patient row (ids, times, free text), which must reach no log."""
    known = {name.lower() for name in table.header}
    if all(map(_COLUMN_NAME.fullmatch, header)) and any(name.lower() in known for name in header):
        return f"found: {','.join(header)}"
    return f"the first line ({len(header)} field(s)) does not look like a header"


def resolve_and_check(root: str, table: mimic.Table, source: BeamSource) -> str:
    path = resolve_table(root, table, source)
    check_columns(path, table, read_header(path, source, table))
    return path


class ReadCsvRows(beam.DoFn):
    """Stream one CSV file into typed row dicts; rows that cannot be typed go to rejects.

    ``rows_read`` counts the data records (repeated header lines are rejects but not rows), ``lines_read`` the
    physical lines, header included; a repeated header, a quote error on one line and undecodable bytes are rejects
    of their own reason. ``row_filter`` (column, allowed raw values) keeps only rows whose column holds one of
    the values, decided before typing and counted as ``rows_filtered`` (a 158 M-row labevents is cut to a cohort's
    itemids here, before any shuffle; a bad value in a row the cohort does not use is not a reject)."""

    def __init__(self, table: mimic.Table, source: BeamSource,
                 row_filter: tuple[str, frozenset[str]] | None = None):
        self._table = table
        self._source = source
        self._row_filter = row_filter

    def process(self, path: str):
        table = self._table
        counts = FileCounts()
        rows = rejected = filtered = 0
        with _open_text(path, self._source) as (text, raw):
            parsed = records(text, path, counts)
            try:
                _, raw_header, _ = next(parsed, (1, [], 0))
                header = _clean_header(raw_header or [])
                check_columns(path, table, header)
                width, last = len(header), (raw_header or [""])[-1]
                column, allowed = self._row_filter or (None, None)
                at = header.index(column) if column else None
                for start, fields, bad in parsed:
                    if fields is not None and len(fields) == width and not bad:  # the common case first
                        if fields[-1] == last and _clean_header(fields) == header:
                            yield from accounting.reject("read", "repeated_header",
                                                         detail=f"{path}:{start}: the header line again")
                            continue
                        rows += 1
                        if at is not None and fields[at].strip() not in allowed:
                            filtered += 1
                            continue
                        try:
                            yield mimic.type_row(table, dict(zip(header, fields)))
                            continue
                        except mimic.RowError as err:
                            problem = err.reason, err.detail
                    else:
                        rows += 1
                        problem = _read_problem(fields, bad, width)
                    rejected += 1
                    aligned = fields is not None and len(fields) == width  # else only subject_id is worth a guess
                    yield from accounting.reject(
                        "read", problem[0], subject_id=_maybe_int(fields or [], header, "subject_id"),
                        study_id=_maybe_int(fields, header, "study_id") if aligned else None,
                        detail=f"{path}:{start}: {problem[1]}")
                raw.drain()
            except _UNREADABLE as err:
                raise InputError(f"{path}: cannot be read after {rows} rows ({err})") from None
        yield accounting.event(f"rows_read/{table.name}", rows)
        yield accounting.event(f"lines_read/{table.name}", counts.lines)
        for name, n in ((f"rows_rejected/{table.name}", rejected), (f"rows_filtered/{table.name}", filtered),
                        (f"nul_bytes_removed/{table.name}", counts.nul_removed),
                        (f"undecodable_bytes/{table.name}", counts.undecodable)):
            if n:
                yield accounting.event(name, n)
        yield beam.pvalue.TaggedOutput(
            "files", {"table": table.name, "path": path, "bytes": raw.size, "sha256": raw.sha256.hexdigest(),
                      "rows": rows})


def _read_problem(fields: list[str] | None, undecodable: int, width: int) -> tuple[str, str]:
    """(reason, detail) for a record that is not a row even before typing: bad quoting, undecodable bytes (whatever
    else is in the row may be damaged too), or the wrong number of fields."""
    if fields is None:
        return "bad_quoting", "a quote in this line is not closed or is followed by more text"
    if undecodable:
        return "undecodable_bytes", f"{undecodable} byte(s) that are not UTF-8"
    return "wrong_field_count", f"expected {width} fields, got {len(fields)}"


def _maybe_int(fields: list[str], header: list[str], column: str) -> int | None:
    index = header.index(column) if column in header else len(fields)
    return mimic.int_or_none(fields[index]) if index < len(fields) else None


class ReadMimicTable(beam.PTransform):
    """``path`` -> typed rows, plus tagged ``rejects``, ``events`` and ``files`` (one checksum record)."""

    def __init__(self, table: mimic.Table, path: str, source: BeamSource = BeamSource(),
                 row_filter: tuple[str, frozenset[str]] | None = None):
        super().__init__()
        self._table = table
        self._path = path
        self._source = source
        self._row_filter = row_filter

    def expand(self, pbegin):
        return (pbegin
                | "Path" >> beam.Create([self._path])
                | "Parse" >> beam.ParDo(ReadCsvRows(self._table, self._source, self._row_filter)).with_outputs(
                    accounting.REJECTS, accounting.EVENTS, "files", main="rows"))
