import gzip
import hashlib
import io
import zlib

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline import mimic
from beam_pipeline.fileio.csv_tables import (FileCounts, InputError, ReadCsvRows, ReadMimicTable, check_columns,
                                             read_header, record_too_long, records, resolve_and_check, resolve_table)
from beam_pipeline.fileio.sources import BeamSource
from conftest import ED_DEMO, test_pipeline, write_table

SOURCE = BeamSource()
MAX = mimic.MAX_RECORD_CHARS
COMPLAINT = "PATIENT SAYS HUSBAND HIT HER WITH A BAT"
TRICKY = ['SOB, "can\'t breathe"', "Fever, Cough\nsent from clinic", 'He said "ow", twice', "PNA,\r\nhypoxia"]


def _triage_rows():
    return [{"subject_id": 10000000 + i, "stay_id": 30000000 + i, "chiefcomplaint": cc, "pain": "UA",
             "temperature": "98.6"} for i, cc in enumerate(TRICKY)]


@pytest.mark.parametrize("gz", [True, False])
def test_quoted_commas_quotes_and_newlines_survive(tmp_path, gz):
    path = write_table(tmp_path, mimic.TRIAGE, _triage_rows(), gz=gz)
    assert resolve_table(str(tmp_path), mimic.TRIAGE, SOURCE) == str(path)
    with test_pipeline() as p:
        out = p | ReadMimicTable(mimic.TRIAGE, str(path))
        assert_that(out.rows | beam.Map(lambda r: (r["stay_id"], r["chiefcomplaint"], r["temperature"])),
                    equal_to([(30000000 + i, cc, 98.6) for i, cc in enumerate(TRICKY)]))
        assert_that(out.rejects, equal_to([]), label="NoRejects")


def test_prefers_gz_and_falls_back_to_csv(tmp_path):
    plain = write_table(tmp_path, mimic.EDSTAYS, [], gz=False)
    assert resolve_table(str(tmp_path), mimic.EDSTAYS, SOURCE) == str(plain)
    gz = write_table(tmp_path, mimic.EDSTAYS, [])
    assert resolve_table(str(tmp_path), mimic.EDSTAYS, SOURCE) == str(gz)


def test_table_directly_under_the_root_is_found(tmp_path):
    path = write_table(tmp_path, mimic.PATIENTS, [])  # writes into hosp/
    assert resolve_table(str(tmp_path / "hosp"), mimic.PATIENTS, SOURCE) == str(path)


def test_missing_file_names_every_path_tried(tmp_path):
    with pytest.raises(InputError) as err:
        resolve_table(str(tmp_path), mimic.VITALSIGN, SOURCE)
    assert "vitalsign" in str(err.value) and str(tmp_path / "ed" / "vitalsign.csv.gz") in str(err.value)


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "ed" / "triage.csv.gz"
    path.parent.mkdir()
    with gzip.open(path, "wt") as f:
        f.write("subject_id,stay_id,temperature,heartrate,resprate,o2sat,sbp,dbp,pain,chiefcomplaint\n")
    with pytest.raises(InputError) as err:
        resolve_and_check(str(tmp_path), mimic.TRIAGE, SOURCE)
    assert str(path) in str(err.value) and "'acuity'" in str(err.value)
    assert str(err.value).endswith(f"(expected header: {','.join(mimic.TRIAGE.header)}; found: subject_id,stay_id,"
                                   f"temperature,heartrate,resprate,o2sat,sbp,dbp,pain,chiefcomplaint)")


@pytest.mark.parametrize("first, fields", [("", 11), ("WITH A BAT\n", 1)], ids=["row", "free-text-line"])
def test_a_file_without_its_header_is_refused_without_printing_its_first_line(tmp_path, first, fields):
    """Its first line was once printed as "the header": a patient's ids, vitals and chief complaint in the launch
    error or a worker's ERROR log. A line of words alone (the end of a quoted complaint, in a cut file) shares no
    name with the table, so it is not shown either."""
    row = {"subject_id": 10000032, "stay_id": 33258284, "pain": "0", "acuity": 2, "chiefcomplaint": COMPLAINT}
    path = write_table(tmp_path, mimic.TRIAGE, [row] * 3)
    path.write_bytes(gzip.compress(first.encode() + gzip.decompress(path.read_bytes()).split(b"\n", 1)[1]))
    expected = (f"{path}: required column 'subject_id' of triage is missing (expected header: "
                f"{','.join(mimic.TRIAGE.header)}; the first line ({fields} field(s)) does not look like a header)")
    with pytest.raises(InputError) as launch:
        resolve_and_check(str(tmp_path), mimic.TRIAGE, SOURCE)
    with pytest.raises(InputError) as worker:
        with test_pipeline() as p:
            p | ReadMimicTable(mimic.TRIAGE, str(path))
    for err in (launch, worker):
        assert str(err.value).startswith(expected)
        assert "WITH A BAT" not in str(err.value) and "10000032" not in str(err.value)


def test_a_column_of_the_table_named_twice_is_refused():
    """The row filter read the first copy and the typed row the last; names MIMIC does not have are never read."""
    header = list(mimic.EDSTAYS.header)
    with pytest.raises(InputError, match=r"^e\.csv: column 'stay_id' appears 2 times in the header of edstays$"):
        check_columns("e.csv", mimic.EDSTAYS, header + ["stay_id"])
    check_columns("e.csv", mimic.EDSTAYS, header + ["", "", "note", "note"])


def test_empty_file_is_an_input_error(tmp_path):
    path = tmp_path / "ed" / "pyxis.csv"
    path.parent.mkdir()
    path.write_text("")
    with pytest.raises(InputError, match="empty"):
        read_header(str(path), SOURCE)


def damaged_deflate(data: bytes, start: int = 20) -> bytes:
    """The gzip file ``data`` with one byte changed (the first from ``start`` on that does it) so that zlib itself
    fails, not gzip's CRC check: zlib.error is no OSError."""
    for at in range(start, len(data) - 8):
        damaged = data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1:]
        try:
            gzip.decompress(damaged)
        except zlib.error:
            return damaged
        except (OSError, EOFError):
            pass
    raise AssertionError("no one-byte change makes zlib fail")


@pytest.mark.parametrize("damage, message", [(lambda data: data[:-100], "Compressed file ended"),
                                             (lambda data: damaged_deflate(data, len(data) // 2), "Error -3 while")],
                         ids=["truncated", "damaged-deflate"])
def test_truncated_or_damaged_gzip_fails_naming_the_file_and_rows_read(tmp_path, damage, message):
    rows = [{"subject_id": 10000000 + i, "stay_id": 30000000 + i, "intime": "2180-01-01 00:00:00"} for i in range(5000)]
    path = write_table(tmp_path, mimic.EDSTAYS, rows)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(InputError, match=rf"^{path}: cannot be read after \d+ rows \({message}"):
        with test_pipeline() as p:
            p | ReadMimicTable(mimic.EDSTAYS, str(path))


def test_bad_rows_are_rejected_with_line_numbers_and_counted(tmp_path):
    path = tmp_path / "vitalsign.csv"
    path.write_text(
        "subject_id,stay_id,charttime,temperature,heartrate,resprate,o2sat,sbp,dbp,rhythm,pain\n"
        "10000032,33258284,2180-05-06 20:00:00,98.6,80,16,97,120,70,,0\n"
        "10000032,33258284,2180-05-06 25:00:00,98.6,80,16,97,120,70,,0\n"  # bad timestamp, line 3
        '10000032,33258284,2180-05-06 21:00:00,98.6,80,16,97,120,70,"Sinus\nRhythm",0\n'  # lines 4-5, fine
        "10000032,33258284,2180-05-06 22:00:00,98.6,80\n"  # short row, line 6
        "10000032,33258284,2180-05-06 23:00:00,high,80,16,97,120,70,,0\n")  # bad float, line 7
    with test_pipeline() as p:
        out = p | ReadMimicTable(mimic.VITALSIGN, str(path))
        assert_that(out.rows | beam.Map(lambda r: (r["charttime"].hour, r["rhythm"])),
                    equal_to([(20, None), (21, "Sinus\nRhythm")]))
        assert_that(out.rejects | beam.Map(lambda r: (r["stage"], r["reason"], r["subject_id"],
                                                      r["detail"].split(": ")[0])),
                    equal_to([("read", "bad_timestamp", 10000032, f"{path}:3"),
                              ("read", "wrong_field_count", 10000032, f"{path}:6"),
                              ("read", "bad_float", 10000032, f"{path}:7")]), label="Rejects")
        assert_that(out.events | beam.CombinePerKey(sum),
                    equal_to([("rows_read/vitalsign", 5), ("lines_read/vitalsign", 7), ("rows_rejected/vitalsign", 3),
                              ("rejects/read/bad_timestamp", 1), ("rejects/read/wrong_field_count", 1),
                              ("rejects/read/bad_float", 1)]), label="Events")


def test_real_ed_demo_reads_whole_with_release_checksums():
    """The real MIMIC-IV-ED demo tables parse without a single reject, and the checksum recorded for
    metadata.json is the release's own SHA256SUMS entry."""
    sums = dict(reversed(line.split()) for line in (ED_DEMO / "SHA256SUMS.txt").read_text().splitlines() if line)
    expected_rows = {"edstays": 222, "triage": 222, "vitalsign": 1038, "medrecon": 2764, "pyxis": 1082}
    with test_pipeline() as p:
        for name, n in expected_rows.items():
            table = mimic.TABLES[name]
            out = p | f"Read {name}" >> ReadMimicTable(table, resolve_table(str(ED_DEMO), table, SOURCE))
            assert_that(out.rows | f"Count {name}" >> beam.combiners.Count.Globally(), equal_to([n]),
                        label=f"Rows {name}")
            assert_that(out.rejects, equal_to([]), label=f"NoRejects {name}")
            assert_that(out.files | f"Sum {name}" >> beam.Map(lambda f: (f["sha256"], f["rows"])),
                        equal_to([(sums[f"ed/{name}.csv.gz"], n)]), label=f"Checksum {name}")


class _Tracking(BeamSource):
    """Keeps every handle it opens."""

    def __init__(self):
        super().__init__()
        self.opened = []

    def open(self, path):
        self.opened.append(super().open(path))
        return self.opened[-1]


@pytest.mark.parametrize("gz", [True, False])
def test_every_handle_is_closed_when_read_and_when_reading_fails(tmp_path, gz):
    """Neither gzip nor the hashing layer closed the handle under it: garbage collection did, late, and never while
    a traceback held the frame."""
    source = _Tracking()
    path = str(write_table(tmp_path, mimic.EDSTAYS, [{"subject_id": 1, "stay_id": 2, "intime": "2180-01-01"}], gz=gz))
    read_header(path, source)
    list(ReadCsvRows(mimic.EDSTAYS, source).process(path))
    write_table(tmp_path, mimic.EDSTAYS, [{"subject_id": "x" * (MAX + 1)}], gz=gz)  # longer than a field may be
    for read in (lambda: read_header(path, source, mimic.EDSTAYS),
                 lambda: list(ReadCsvRows(mimic.EDSTAYS, source).process(path))):
        with pytest.raises(InputError, match="longer than"):
            read()
    assert len(source.opened) == 4 and all(handle.closed for handle in source.opened)


def test_checksum_is_of_the_file_bytes(tmp_path):
    path = write_table(tmp_path, mimic.EDSTAYS, [{"subject_id": 1, "stay_id": 2, "intime": "2180-01-01 00:00:00"}])
    with test_pipeline() as p:
        out = p | ReadMimicTable(mimic.EDSTAYS, str(path))
        assert_that(out.files | beam.Map(lambda f: (f["sha256"], f["bytes"])),
                    equal_to([(hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size)]))


def _records(text: str, counts: FileCounts | None = None) -> list[tuple]:
    return list(records(io.StringIO(text, newline=""), "t.csv", counts or FileCounts()))


def test_records_start_on_their_first_physical_line_and_lines_are_counted():
    counts = FileCounts()
    text = 'a,b\n1,"x\ny"\n2,"say ""hi"", twice"\r\n3,z'
    assert _records(text, counts) == [(1, ["a", "b"], 0), (2, ["1", "x\ny"], 0), (4, ["2", 'say "hi", twice'], 0),
                                      (5, ["3", "z"], 0)]
    assert counts == FileCounts(lines=5)


def test_a_quote_that_never_closes_stops_the_read_at_the_line_limit():
    lines = ["a,b\n", '1,"open\n'] + [f"{n},x\n" for n in range(mimic.MAX_RECORD_LINES + 10)]
    with pytest.raises(InputError, match=rf"^t\.csv:2: a quoted field opened here spans more than "
                                         rf"{mimic.MAX_RECORD_LINES} lines"):
        _records("".join(lines))


def test_a_quote_closed_by_a_later_field_or_the_end_of_file_fails_naming_where_it_opened():
    with pytest.raises(InputError, match=r"^t\.csv:2: a quoted field opened here swallows the lines after it "
                                         r"\(the parser stopped at line 4: ',' expected after '\"'\)"):
        _records('a,b\n1,"open\n2,x\n3,"next"\n')
    with pytest.raises(InputError, match=r"^t\.csv:2: .* swallows .* stopped at line 3: unexpected end of data"):
        _records('a,b\n1,"open\n2,x\n')


def test_a_quote_error_within_one_line_is_a_record_without_fields():
    assert _records('a,b\n1,"x"y\n2,z\n3,"w') == [(1, ["a", "b"], 0), (2, None, 0), (3, ["2", "z"], 0), (4, None, 0)]


def test_a_line_or_field_longer_than_the_character_limit_fails():
    for text in ("a,b\n1," + "x" * (mimic.MAX_RECORD_CHARS + 1) + "\n", "a,b\n" + "x" * 3 * mimic.MAX_RECORD_CHARS):
        with pytest.raises(InputError, match=r"^t\.csv:2: this line is longer than 65,536 characters; no MIMIC row is"):
            _records(text)
    with pytest.raises(InputError, match=r"^t\.csv:2: a quoted field opened here spans more than 65,536 characters"):
        _records('a,b\n1,"' + ("x" * 4096 + "\n") * 17 + '"\n')


def test_a_line_of_short_fields_stops_at_the_character_limit_wherever_it_lies():
    """Such a line was once stopped beyond about 128 Ki characters only, or earlier depending on where the 64 Ki text
    blocks fell, and read as a wrong_field_count reject below that."""
    def line(chars: int) -> str:
        return ("1," * chars)[:chars - 1] + "2\n"

    # In the second case line 3 starts 5 characters before the first text block ends.
    for prefix, number in (("a,b\n", 2), ("a,b\n" + "y" * (MAX - 10) + "\n", 3)):
        assert len(_records(prefix + line(MAX))) == number
        with pytest.raises(InputError, match=rf"^t\.csv:{number}: this line is longer than 65,536 characters"):
            _records(prefix + line(MAX + 1))


def test_record_too_long_names_the_limit_passed():
    assert "spans more than 64 lines" in record_too_long("t.csv", 5, mimic.MAX_RECORD_LINES + 1)
    assert "spans more than 65,536 characters" in record_too_long("t.csv", 5, 3)
    assert record_too_long("t.csv", 5, 1) == "t.csv:5: this line is longer than 65,536 characters; no MIMIC row is"


def test_line_ends_split_between_blocks_are_one_line_end():
    for end in ("\n", "\r\n", "\r"):
        text = "a,b" + end + "".join(f"{n},{'y' * (n % 97)}{end}" for n in range(3000))  # several blocks
        parsed = _records(text)
        assert [start for start, _, _ in parsed] == list(range(1, 3002))
        assert parsed[-1][1] == ["2999", "y" * (2999 % 97)]


def test_nul_bytes_are_removed_before_parsing_and_counted():
    counts = FileCounts()
    assert _records('a,b\n1,"x\0y"\0\n', counts) == [(1, ["a", "b"], 0), (2, ["1", "xy"], 0)]
    assert counts.nul_removed == 2


def test_undecodable_bytes_are_counted_per_record_and_in_the_file():
    counts = FileCounts()
    text = b"a,b\xff\n1,ok \xc3\xa9 \xef\xbf\xbd\n2,bad \xe9\xc3\n".decode("utf-8", "surrogateescape")
    parsed = _records(text, counts)
    assert [(start, bad) for start, _, bad in parsed] == [(1, 1), (2, 0), (3, 2)]  # a literal U+FFFD is no error
    assert counts.undecodable == 3


@pytest.mark.parametrize("quote", ["", '"'], ids=["bom", "bom-quoted-header"])
def test_repeated_header_nul_and_undecodable_rows_when_read(tmp_path, quote):
    """A byte-order mark before a quoted header once made the quotes part of the first name (a false "required
    column missing"): it is dropped before parsing, but its bytes are the file's, so they are hashed."""
    path = tmp_path / "edstays.csv"
    header = ",".join(quote + name + quote for name in mimic.EDSTAYS.header)
    path.write_bytes((f"\ufeff{header}\n"
                      "10000032,,33258284,2180-05-06 19:17:00,2180-05-06 23:30:00,F,WHITE,WALK\0 IN,HOME\n"
                      f"{header}\n"
                      "10000033,,33258285,2180-05-06 19:17:00,2180-05-06 23:30:00,F,WHITE,WALK IN,HOME\n").encode()
                     + b"10000034,,33258286,2180-05-06 19:17:00,2180-05-06 23:30:00,F,WH\xffTE,WALK IN,HOME\n")
    with test_pipeline() as p:
        out = p | ReadMimicTable(mimic.EDSTAYS, str(path))
        assert_that(out.rows | beam.Map(lambda r: (r["stay_id"], r["arrival_transport"])),
                    equal_to([(33258284, "WALK IN"), (33258285, "WALK IN")]))
        assert_that(out.rejects | beam.Map(lambda r: (r["reason"], r["subject_id"], r["detail"])),
                    equal_to([("repeated_header", None, f"{path}:3: the header line again"),
                              ("undecodable_bytes", 10000034, f"{path}:5: 1 byte(s) that are not UTF-8")]),
                    label="Rejects")
        assert_that(out.events | beam.CombinePerKey(sum),
                    equal_to([("lines_read/edstays", 5), ("nul_bytes_removed/edstays", 1),
                              ("rejects/read/repeated_header", 1), ("rejects/read/undecodable_bytes", 1),
                              ("rows_read/edstays", 3), ("rows_rejected/edstays", 1),
                              ("undecodable_bytes/edstays", 1)]), label="Events")
        assert_that(out.files | beam.Map(lambda f: (f["sha256"], f["bytes"])),
                    equal_to([(hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size)]), label="Files")


@pytest.mark.parametrize("table", [mimic.CXR_METADATA, mimic.CXR_CHEXPERT, mimic.EDSTAYS, mimic.CXR_SPLIT])
def test_header_only_required_table_is_an_input_error(tmp_path, table):
    path = write_table(tmp_path, table, [])
    with pytest.raises(InputError, match=f"^{path}: {table.name} has a header but no data rows$"):
        resolve_and_check(str(tmp_path), table, SOURCE)


@pytest.mark.parametrize("table", [mimic.TRIAGE, mimic.VITALSIGN, mimic.MEDRECON, mimic.PYXIS, mimic.PATIENTS])
def test_header_only_optional_table_is_accepted(tmp_path, table):
    path = write_table(tmp_path, table, [])
    assert resolve_and_check(str(tmp_path), table, SOURCE) == str(path)
