import datetime as dt

import pytest

from beam_pipeline import mimic


@pytest.mark.parametrize("date, time, expected", [
    ("21800506", "213014.531", dt.datetime(2180, 5, 6, 21, 30, 14, 531000)),
    ("21800723", "80556.875", dt.datetime(2180, 7, 23, 8, 5, 56, 875000)),  # leading zero lost
    ("21800723", "80556", dt.datetime(2180, 7, 23, 8, 5, 56)),  # integer time
    ("21800723", "4.0", dt.datetime(2180, 7, 23, 0, 0, 4)),  # 00:00:04
    ("21800723", "0", dt.datetime(2180, 7, 23, 0, 0, 0)),  # midnight
    ("21800723", "5956.5", dt.datetime(2180, 7, 23, 0, 59, 56, 500000)),
    ("21800723", "235959.9999999", dt.datetime(2180, 7, 23, 23, 59, 59, 999999)),  # fraction kept to the µs
    ("21800723", " 80556.875 ", dt.datetime(2180, 7, 23, 8, 5, 56, 875000)),
    ("21800723.0", "120000.", dt.datetime(2180, 7, 23, 12, 0, 0)),  # date written as a float
])
def test_parse_study_datetime(date, time, expected):
    assert mimic.parse_study_datetime(date, time) == expected


@pytest.mark.parametrize("date, time", [
    ("2180-05-06", "213014"), ("21801306", "213014"), ("21800506", ""), ("21800506", "246000"),
    ("21800506", "216014"), ("21800506", "1234567"), ("21800506", "8.05e4"), ("21800506", "-5"),
    ("", "120000"), ("21800230", "120000"),
])
def test_parse_study_datetime_rejects_garbage(date, time):
    with pytest.raises(ValueError):
        mimic.parse_study_datetime(date, time)


def test_format_study_time_round_trips_and_drops_leading_zeros():
    value = dt.datetime(2180, 7, 23, 8, 5, 56, 875000)
    assert mimic.format_study_time(value) == ("21800723", "80556.875")
    assert mimic.parse_study_datetime(*mimic.format_study_time(value)) == value
    assert mimic.format_study_time(dt.datetime(2180, 7, 23, 0, 0, 4)) == ("21800723", "4.0")


def test_parse_datetime_is_strict():
    assert mimic.parse_datetime("2142-08-03 21:06:00.090") == dt.datetime(2142, 8, 3, 21, 6, 0, 90000)
    assert mimic.parse_datetime("2142-08-03 21:06:00.5") == dt.datetime(2142, 8, 3, 21, 6, 0, 500000)
    assert mimic.parse_datetime("2142-08-03 21:06:00.12345") == dt.datetime(2142, 8, 3, 21, 6, 0, 123450)
    for bad in ("2142-08-03T21:06:00", "2142-08-03", "2142-08-03 21:06", "2142-13-03 21:06:00", "garbage"):
        with pytest.raises(ValueError):
            mimic.parse_datetime(bad)


def test_written_datetimes_keep_the_fraction_the_job_compared():
    """A film 0.5 s after ED departure is after it; written without the fraction it would read as taken at it."""
    assert mimic.format_datetime(dt.datetime(2180, 1, 1, 5, 54)) == "2180-01-01 05:54:00"
    film = mimic.parse_study_datetime("21800101", "55400.5")
    assert mimic.format_datetime(film) == "2180-01-01 05:54:00.500000"
    assert mimic.parse_datetime(mimic.format_datetime(film)) == film


def test_type_row_types_and_names_the_bad_column():
    row = mimic.type_row(mimic.VITALSIGN, {"subject_id": "10000032", "stay_id": "33258284",
                                           "charttime": "2180-05-06 20:00:00", "temperature": "98.6",
                                           "heartrate": "", "resprate": "18", "o2sat": "97", "sbp": "120",
                                           "dbp": "70", "rhythm": "", "pain": "UA"})
    assert row["charttime"] == dt.datetime(2180, 5, 6, 20) and row["temperature"] == 98.6
    assert row["heartrate"] is None and row["pain"] == "UA"
    bad = {"subject_id": "10000032", "stay_id": "33258284", "charttime": "2180-05-06 25:00:00"}
    with pytest.raises(mimic.RowError) as err:
        mimic.type_row(mimic.MEDRECON, {**bad, "name": "aspirin"})
    assert err.value.reason == "bad_timestamp" and "medrecon.charttime" in err.value.detail
    with pytest.raises(mimic.RowError) as err:
        mimic.type_row(mimic.EDSTAYS, {"subject_id": "1", "stay_id": "", "intime": "2180-05-06 20:00:00",
                                       "outtime": "", "gender": "F", "arrival_transport": "WALK IN"})
    assert err.value.reason == "missing_value" and "stay_id" in err.value.detail
    with pytest.raises(mimic.RowError) as err:
        mimic.type_row(mimic.TRIAGE, {"subject_id": "1", "stay_id": "2", "temperature": "nan", "heartrate": "",
                                      "resprate": "", "o2sat": "", "sbp": "", "dbp": "", "pain": "",
                                      "acuity": "", "chiefcomplaint": "x"})
    assert err.value.reason == "bad_float"


def test_parse_image_row():
    raw = {"dicom_id": "68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714", "subject_id": "10000032",
           "study_id": "53911762", "ViewPosition": "AP", "Rows": "2705", "Columns": "2539",
           "StudyDate": "21800723", "StudyTime": "80556.875"}
    image = mimic.parse_image_row(raw)
    assert image.study_time == dt.datetime(2180, 7, 23, 8, 5, 56, 875000)
    assert image.path == "files/p10/p10000032/s53911762/68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714.jpg"
    for column, value, reason in (("subject_id", "", "missing_value"), ("study_id", "5x", "bad_int"),
                                  ("Rows", "12.5", "bad_int"), ("Columns", "inf", "bad_int"),
                                  ("study_id", "1e400", "bad_int"), ("Rows", "nan", "bad_int"),
                                  ("StudyTime", "", "bad_study_time")):
        with pytest.raises(mimic.RowError) as err:
            mimic.parse_image_row({**raw, column: value})
        assert err.value.reason == reason


def test_age_at():
    assert mimic.age_at(52, 2180, 2180) == 52
    assert mimic.age_at(52, 2180, 2183) == 55
    assert mimic.age_at(52, 2180, 2178) == 50
    assert mimic.age_at(91, 2150, 2155) == 91  # top-coded stays 91


def test_label_order_is_the_file_order():
    assert mimic.CXR_CHEXPERT.header[2:] == mimic.LABELS
    assert list(mimic.LABELS) == sorted(mimic.LABELS)


@pytest.mark.parametrize("date, time", [("２１８００１０１", "80556"), ("21800101", "٨٠٥٥٦"), ("21800101", "8_0556")])
def test_study_times_take_ascii_digits_only(date, time):
    """Python's int() reads any script's digits and underscores; a MIMIC StudyDate/StudyTime has neither."""
    with pytest.raises(ValueError):
        mimic.parse_study_datetime(date, time)


@pytest.mark.parametrize("kind, text", [(mimic.INT, "1_0"), (mimic.INT, "１２"), (mimic.FLOAT, "9_8.6"),
                                        (mimic.FLOAT, "٩٨.٦"), (mimic.LABEL_VALUE, "１.0"),
                                        (mimic.DATETIME, "２180-01-01 00:00:00"), (mimic.DATE, "2180-01-0١")])
def test_numbers_and_times_take_ascii_digits_only(kind, text):
    with pytest.raises(ValueError):
        mimic.type_value(kind, text)


def test_plain_ascii_numbers_still_parse():
    assert [mimic.type_value(mimic.INT, t) for t in ("12", "-3", " 7 ", "+4")] == [12, -3, 7, 4]
    assert [mimic.type_value(mimic.FLOAT, t) for t in ("98.6", "-.5", "1e-3", "2.", "1E2")] == [98.6, -0.5, 0.001,
                                                                                                2.0, 100.0]
    raw = {"dicom_id": "d", "subject_id": "1_0", "study_id": "5", "ViewPosition": "AP", "Rows": "", "Columns": "",
           "StudyDate": "21800723", "StudyTime": "80556"}
    with pytest.raises(mimic.RowError, match="bad_int"):
        mimic.parse_image_row(raw)


def test_reject_lines_take_the_same_ascii_ids():
    """A row whose subject_id is "1_0000032" is rejected as bad_int; its reject line must not name subject 10000032
    (the join would reject that real subject's units for it)."""
    assert [mimic.int_or_none(t) for t in ("10000032", " 7 ", "1_0000032", "１２", "", None)] == [
        10000032, 7, None, None, None, None]


def test_ints_beyond_int64_are_bad_int():
    """Every id is written as an int64 feature: a 20-digit stay_id once passed reading and failed the whole job in
    the TFRecord writer, after all the image work."""
    assert [mimic.type_value(mimic.INT, str(v)) for v in (2 ** 63 - 1, -2 ** 63)] == [2 ** 63 - 1, -2 ** 63]
    for text in (str(2 ** 63), str(-2 ** 63 - 1), "99999999999999999999", "9" * 5000):
        with pytest.raises(ValueError):
            mimic.type_value(mimic.INT, text)
    with pytest.raises(mimic.RowError) as err:
        mimic.type_row(mimic.EDSTAYS, {"subject_id": "11163993", "stay_id": "99999999999999999999",
                                       "intime": "2180-05-06 20:00:00", "outtime": "", "gender": "F",
                                       "arrival_transport": "WALK IN"})
    assert (err.value.reason, err.value.detail) == ("bad_int", "edstays.stay_id='99999999999999999999'")
    # Not an id in a reject line either: a CheXpert row whose subject_id is none is tied to its study's images.
    assert mimic.int_or_none("99999999999999999999") is None and mimic.int_or_none(str(2 ** 63 - 1)) == 2 ** 63 - 1


IMAGE_ROW = {"dicom_id": "d", "subject_id": "10000032", "study_id": "53911762", "ViewPosition": "AP", "Rows": "2705",
             "Columns": "2539", "StudyDate": "21800723", "StudyTime": "80556.875"}


@pytest.mark.parametrize("column, text, expected", [
    ("study_id", "9007199254740993", 9007199254740993),  # float() made it 9007199254740992
    ("subject_id", "9223372036854775807", 2 ** 63 - 1),
    ("study_id", "53911762.0", 53911762), ("study_id", "5.3911762e7", 53911762), ("study_id", " 53911762 ", 53911762),
    ("Rows", "2705.0", 2705), ("Columns", "2.539E3", 2539), ("Rows", "", None),
])
def test_image_row_ids_are_typed_exactly(column, text, expected):
    """Ids and sizes may be written as floats (as today), but are typed exactly: no id is turned into its
    neighbour."""
    image = mimic.parse_image_row({**IMAGE_ROW, column: text})
    assert {"subject_id": image.subject_id, "study_id": image.study_id, "Rows": image.rows,
            "Columns": image.columns}[column] == expected


@pytest.mark.parametrize("column, text", [
    ("study_id", "9223372036854775808"), ("study_id", "1e20"), ("subject_id", "99999999999999999999"),
    ("study_id", "9007199254740993.5"), ("study_id", "53911762.0000000000000001"), ("Rows", "1e-5"),
    ("study_id", "1e9999999999999999999"), ("Columns", "-9223372036854775809"),
])
def test_image_row_values_that_are_no_int64_are_bad_int(column, text):
    """float() rounded each of these to a whole number (or an int beyond int64) that was then accepted."""
    with pytest.raises(mimic.RowError) as err:
        mimic.parse_image_row({**IMAGE_ROW, column: text})
    assert (err.value.reason, err.value.detail) == ("bad_int", f"cxr_metadata.{column}={text!r}")


@pytest.mark.parametrize("path", ["../outside/40689238", "files/p1000/../../../etc/40689238", "/files/p1000/40689238",
                                  "files//p1000/40689238", "files/./40689238", "files/p1000/40689238/", ".."])
def test_a_record_path_that_leaves_the_ecg_root_is_a_bad_path(path):
    """record_list's path is joined to --mimic_ecg_root: a row whose path could name a file elsewhere is a reject,
    like any row that cannot be typed (symile_mimic then rejects the subject's admissions: ecg_row_rejected)."""
    raw = {"subject_id": "10000032", "study_id": "40689238", "ecg_time": "2180-07-23 08:44:00", "path": path}
    with pytest.raises(mimic.RowError) as err:
        mimic.type_row(mimic.ECG_RECORD_LIST, raw)
    assert err.value.reason == "bad_path" and "ecg_record_list.path" in err.value.detail
    ok = {**raw, "path": "files/p1000/p10000032/s40689238/40689238"}  # the form MIMIC-IV-ECG uses
    assert mimic.type_row(mimic.ECG_RECORD_LIST, ok)["path"] == ok["path"]
