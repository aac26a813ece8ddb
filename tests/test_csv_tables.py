import gzip
import hashlib

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline import mimic
from beam_pipeline.fileio.csv_tables import InputError, ReadMimicTable, read_header, resolve_and_check, resolve_table
from beam_pipeline.fileio.sources import BeamSource
from conftest import ED_DEMO, test_pipeline, write_table

SOURCE = BeamSource()
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


def test_empty_file_is_an_input_error(tmp_path):
    path = tmp_path / "ed" / "pyxis.csv"
    path.parent.mkdir()
    path.write_text("")
    with pytest.raises(InputError, match="empty"):
        read_header(str(path), SOURCE)


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
                    equal_to([("rows_read/vitalsign", 5), ("rows_rejected/vitalsign", 3),
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


def test_checksum_is_of_the_file_bytes(tmp_path):
    path = write_table(tmp_path, mimic.EDSTAYS, [{"subject_id": 1, "stay_id": 2, "intime": "2180-01-01 00:00:00"}])
    with test_pipeline() as p:
        out = p | ReadMimicTable(mimic.EDSTAYS, str(path))
        assert_that(out.files | beam.Map(lambda f: (f["sha256"], f["bytes"])),
                    equal_to([(hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size)]))
