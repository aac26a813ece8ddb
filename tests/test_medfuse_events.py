"""MedFuse's item map and value cleaning (reference §B.1): every rule of upstream preprocessing.py on hand-picked
values, the map's MIMIC-IV reach computed by brute force, and the rules on the real MIMIC-IV demo dictionaries."""

import csv
import datetime as dt
import gzip
import hashlib
import io
import math
from importlib import resources
from pathlib import Path

import pytest

from beam_pipeline.cohorts import medfuse_events
from beam_pipeline.cohorts.medfuse_events import (EVENT_ITEMIDS, ITEM_LABELS, ITEM_VARIABLES, NEVER_IN_MIMIC_IV,
                                                  clean_value, event, hours_since)
from beam_pipeline.transforms import hourly

PACKAGE = resources.files("beam_pipeline.resources").joinpath("medfuse")
MAP = list(csv.DictReader(io.StringIO(PACKAGE.joinpath("itemid_to_variable.csv").read_text())))
IV_DEMO = Path(__file__).resolve().parents[2] / "shared" / "open-data" / "mimic-iv-demo-2.2"  # not in a clone
INTIME = dt.datetime(2150, 3, 1, 7, 30)

SBP, DBP, FIO2, SAT = ("Systolic blood pressure", "Diastolic blood pressure", "Fraction inspired oxygen",
                       "Oxygen saturation")
TEMP, EYE, MOTOR, VERBAL = ("Temperature", "Glascow coma scale eye opening", "Glascow coma scale motor response",
                            "Glascow coma scale verbal response")


# ----------------------------------------------------------------------------------------------------------------
# The packaged files and the map


def test_packaged_files_are_the_reference_copies():
    expected = {  # sha256 of shared/reference/medfuse/<name>, copied byte for byte
        "itemid_to_variable.csv": "a9f99a4035a691611091c5cc10703c11a0808e50cad77b252cdb39e61504170f",
        "discretizer_config.json": "4fe0a7f59dfadfac7d805971cfdde4ed0be3177dafe36fffd823c9210b4651df",
        "variable_ranges.csv": "f4a9d8193fdb20889d36f2e2c3ae19678511661344a53afbf503b2462369f052",
    }
    for name, digest in expected.items():
        assert hashlib.sha256(PACKAGE.joinpath(name).read_bytes()).hexdigest() == digest, name
    assert "3f8b54ec555ac9b8e84ebf98c4854aa6fbd0e4fa" in PACKAGE.joinpath("SOURCE.md").read_text()


def test_map_is_well_formed():
    assert len(MAP) == 114
    assert len({row["itemid"] for row in MAP}) == len(MAP)
    assert {row["variable"] for row in MAP} == set(hourly.CHANNELS)
    assert {row["table"] for row in MAP} == {"chartevents", "labevents"}


def test_mimic_iv_reach_by_brute_force():
    reachable = [row for row in MAP if row["table"] == "labevents" or int(row["itemid"]) >= 220000]
    assert ITEM_VARIABLES == {int(row["itemid"]): row["variable"] for row in reachable}
    assert ITEM_LABELS == {int(row["itemid"]): row["label"] for row in reachable}
    assert EVENT_ITEMIDS == {
        "chartevents": {row["itemid"] for row in reachable if row["table"] == "chartevents"},
        "labevents": {"50809", "50817", "50820", "50831", "50931", "51094", "51478", "51491"}}
    carevue_only = sorted({row["variable"] for row in MAP} - {row["variable"] for row in reachable})
    assert carevue_only == ["Capillary refill rate", "Glascow coma scale total"] == list(NEVER_IN_MIMIC_IV)
    for variable in NEVER_IN_MIMIC_IV:
        assert all(row["table"] == "chartevents" and int(row["itemid"]) < 220000 for row in MAP
                   if row["variable"] == variable)


# ----------------------------------------------------------------------------------------------------------------
# clean_value, rule by rule


def clean(variable, value, valuenum=None, uom=None, label=""):
    return clean_value(variable, value, valuenum, uom, label)


@pytest.mark.parametrize("variable,value,valuenum,expected", [
    (SBP, "120/80", None, 120.0), (DBP, "120/80", None, 80.0), (SBP, "120/80", 120.0, 120.0),
    (SBP, "118", 118.0, 118.0), (DBP, " 65 ", 65.0, 65.0),
    (SBP, "120/", None, None), (DBP, "120/80/60", None, None), (SBP, "12a/80", 12.0, None)])
def test_blood_pressure_strings(variable, value, valuenum, expected):
    assert clean(variable, value, valuenum) == expected


@pytest.mark.parametrize("value,uom,expected", [
    ("50", "%", 0.5), ("100", None, 1.0), ("21", "", 0.21), ("0.5", None, 0.5), ("1", None, 1.0), ("1.0", None, 1.0),
    ("40", "torr", 40.0), ("40", "Torr", 40.0)])
def test_fio2_percent_becomes_a_fraction(value, uom, expected):
    assert clean(FIO2, value, float(value), uom) == pytest.approx(expected, abs=0, rel=1e-15)


@pytest.mark.parametrize("value,expected", [("0.95", 95.0), ("1", 100.0), ("97", 97.0), ("1.5", 1.5),
                                            ("ERROR", None)])
def test_oxygen_saturation_fraction_becomes_percent(value, expected):
    assert clean(SAT, value) == expected


@pytest.mark.parametrize("value,uom,label,expected", [
    ("98.6", "°F", "Temperature Fahrenheit", (98.6 - 32) * 5 / 9),
    ("79", "°F", "Temperature Fahrenheit", 26.0 + 1 / 9),
    ("101.3", "°C", "Temperature Celsius", (101.3 - 32) * 5 / 9),  # the threshold, whatever the item says
    ("37.2", "°C", "Temperature Celsius", 37.2), ("78.9", "°F", "Temperature Fahrenheit", 78.9),
    ("35", "°F", "Temperature Fahrenheit", 35.0)])  # upstream's "F" tests never match: only >= 79 converts
def test_temperature_fahrenheit_by_threshold(value, uom, label, expected):
    assert clean(TEMP, value, float(value), uom, label) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("value,uom,label,expected", [
    ("220", None, "Admission Weight (lbs.)", 220 * 0.453592),
    ("160", None, "Present Weight  (oz)", 160 / 16 * 0.453592),
    ("80", "kg", "Daily Weight", 80.0), ("80", "kg", "Admission Weight (Kg)", 80.0),
    ("176", "lb", "Daily Weight", 176 * 0.453592), ("32", "oz", "Daily Weight", 32 / 16 * 0.453592)])
def test_weight_pounds_and_ounces_to_kg(value, uom, label, expected):
    assert clean("Weight", value, float(value), uom, label) == expected


@pytest.mark.parametrize("value,uom,label,expected", [
    ("70", "Inch", "Height", 178.0), ("65", None, "Height Inches", 165.0), ("170", "cm", "Height (cm)", 170.0),
    ("66.5", "Inch", "Height", 169.0)])
def test_height_inches_to_whole_cm(value, uom, label, expected):
    assert clean("Height", value, float(value), uom, label) == expected


def test_an_absurd_height_in_inches_is_left_to_the_float32_check():
    """1e308 inches is inf cm: returned as is (the stage leaves it out as value_beyond_float32), not round(inf)."""
    assert clean("Height", "", 1e308, "Inch", "Height") == math.inf


@pytest.mark.parametrize("variable", ["Glucose", "pH", "Heart Rate", "Respiratory rate", "Mean blood pressure"])
def test_numbers_errors_and_the_valuenum_fallback(variable):
    assert clean(variable, "7.4", 7.4) == 7.4
    assert clean(variable, ".5") == 0.5 and clean(variable, "5.") == 5.0
    assert clean(variable, "ERROR") is None and clean(variable, "") is None and clean(variable, None) is None
    assert clean(variable, "___", 106.0) == 106.0  # MIMIC-IV labevents: the number only in valuenum
    assert clean(variable, "-3", -3.0) == -3.0  # not a plain number: valuenum, as upstream's float() would give
    assert clean(variable, "1e3") is None


@pytest.mark.parametrize("value,expected", [("Normal <3 secs", "0.0"), ("Brisk", "0.0"), ("Abnormal >3 secs", "1.0"),
                                            ("Delayed", "1.0"), ("Normal <3 Seconds", None), ("0", None)])
def test_capillary_refill_becomes_the_configs_category(value, expected):
    assert clean("Capillary refill rate", value) == expected
    if expected is not None:
        assert expected in hourly.CONFIG.possible_values[hourly.CHANNELS.index("Capillary refill rate")]


@pytest.mark.parametrize("variable,value", [
    (EYE, "To Speech"), (EYE, "Spontaneously"), (EYE, "To Pain"), (EYE, "None"), (EYE, "4 Spontaneously"),
    (MOTOR, "Obeys Commands"), (MOTOR, "Localizes Pain"), (MOTOR, "Flex-withdraws"), (MOTOR, "Abnormal Flexion"),
    (MOTOR, "Abnormal extension"), (MOTOR, "No response"),
    (VERBAL, "Oriented"), (VERBAL, "Confused"), (VERBAL, "Inappropriate Words"), (VERBAL, "Incomprehensible sounds"),
    (VERBAL, "No Response"), (VERBAL, "No Response-ETT"), ("Glascow coma scale total", "15")])
def test_gcs_text_is_kept_as_the_discretizer_expects(variable, value):
    assert clean(variable, value, 4.0) == value
    assert f"{variable}->{value}" in hourly.feature_names()


@pytest.mark.parametrize("variable,value", [(EYE, "to speech"), (MOTOR, "Localizes to Pain"), (VERBAL, "5"),
                                            (EYE, None), ("Glascow coma scale total", "15.0")])
def test_gcs_text_outside_the_possible_values_is_dropped(variable, value):
    assert clean(variable, value, 5.0) is None


@pytest.mark.parametrize("variable,value", [("Heart Rate", "٨٠"), (TEMP, "９８.６"), ("Glucose", "１２３"),
                                            (SBP, "١٢٠/٨٠"), (DBP, "১২০/৮০")])
def test_digits_of_other_scripts_are_not_numbers(variable, value):
    """As at read (mimic.type_value), only ASCII digits make a number: float() reads "٨٠" as 80. Such a value falls
    back to valuenum (ASCII-checked when read) like any other text."""
    assert clean(variable, value) is None
    assert clean(variable, value, 42.0) == (None if "/" in value else 42.0)


@pytest.mark.parametrize("variable,value,uom,label", [
    ("Heart Rate", "-0", None, ""), (SAT, "-0", None, ""), ("Weight", "-0", "lb", "Daily Weight"),
    (FIO2, "-0.0", None, ""), ("Height", "-0", "cm", "Height (cm)")])
def test_a_negative_zero_is_cleaned_to_zero(variable, value, uom, label):
    """-0.0 == 0.0: which sign a bin kept followed arrival order (both orders: test_medfuse_stages)."""
    cleaned = clean(variable, value, -0.0, uom, label)
    assert cleaned == 0.0 and math.copysign(1.0, cleaned) == 1.0


def test_ph_and_glucose_are_fed_by_urine_items_too_as_upstream():
    """Parity, stated: MedFuse's map (mimic3-benchmarks') sends urine pH (51491, 51094) and urine glucose (51478) to
    the pH and Glucose channels beside the blood ones, so a urinalysis value can be a bin's last value and is in the
    normaliser's statistics (README, MedFuse: kept as MedFuse). Fluids: MIMIC-IV d_labitems (the demo test below)."""
    feeds = {channel: sorted(i for i, v in ITEM_VARIABLES.items() if v == channel) for channel in ("pH", "Glucose")}
    assert feeds == {
        "pH": [50820, 50831, 51094, 51491, 220274, 223830],  # blood gas, other body fluid, urine x2; venous, arterial
        "Glucose": [50809, 50931, 51478, 220621, 225664, 226537]}  # blood gas, chemistry, urine; serum, finger, blood


def test_unknown_variable_is_refused():
    with pytest.raises(ValueError, match="unknown channel"):
        clean("Heart rate", "80")


# ----------------------------------------------------------------------------------------------------------------
# Rows to discretizer events


def _row(itemid, minutes, value, valuenum=None, uom=None):
    return {"itemid": itemid, "charttime": INTIME + dt.timedelta(minutes=minutes), "value": value,
            "valuenum": valuenum, "valueuom": uom}


def test_rows_become_events_and_bins():
    rows = [
        _row(223761, 48 * 60, "98.6", 98.6, "°F"),  # Fahrenheit exactly at 48 h: inside, last bin
        _row(220179, 30, "120/80", None, "mmHg"),  # "120/80" in the systolic item
        _row(223835, 90, "50", 50.0, None),  # FiO2 in %
        _row(50931, -30, "___", 106.0, "mg/dL"),  # before intime: outside the series
        _row(50931, 150, "___", 130.0, "mg/dL"),
        _row(220739, 200, "To Speech", 3.0, None),
        _row(678, 60, "99", 99.0, "?F"),  # CareVue: not a MIMIC-IV item
        _row(220045, 61, "ERROR", None, "bpm"),
        _row(223761, 48 * 60 + 1, "99.5", 99.5, "°F"),  # after 48 h
    ]
    events = [e for e in (event(row, INTIME) for row in rows) if e is not None]
    assert events == [(48.0, TEMP, pytest.approx(37.0)), (0.5, SBP, 120.0), (1.5, FIO2, 0.5),
                      (-0.5, "Glucose", 106.0), (2.5, "Glucose", 130.0), (200 / 60, EYE, "To Speech"),
                      (48 + 1 / 60, TEMP, pytest.approx((99.5 - 32) * 5 / 9))]
    raw = hourly.discretize(events, hours=48).raw
    channel = hourly.CHANNELS.index
    assert raw[47][channel(TEMP)] == pytest.approx(37.0)
    assert raw[0][channel(SBP)] == 120.0 and raw[1][channel(FIO2)] == 0.5 and raw[2][channel("Glucose")] == 130.0
    assert raw[3][channel(EYE)] == "To Speech"
    assert sum(v is not None for row in raw for v in row) == 5


def test_hours_since_intime():
    assert hours_since(INTIME, INTIME + dt.timedelta(hours=48)) == 48.0
    assert hours_since(INTIME, INTIME - dt.timedelta(minutes=90)) == -1.5
    assert hours_since(INTIME, INTIME + dt.timedelta(seconds=1)) == 1 / 3600


# ----------------------------------------------------------------------------------------------------------------
# The real MIMIC-IV demo dictionaries and lab values


def _demo_rows(relative: str):
    with gzip.open(IV_DEMO / relative, "rt", newline="") as f:
        yield from csv.DictReader(f)


@pytest.mark.skipif(not IV_DEMO.is_dir(), reason="the shared open-data folder (../shared) is not beside this clone")
def test_map_against_the_mimic_iv_demo_dictionaries():
    d_items = {int(r["itemid"]): r for r in _demo_rows("icu/d_items.csv.gz")}
    d_labitems = {int(r["itemid"]): r for r in _demo_rows("hosp/d_labitems.csv.gz")}
    assert min(d_items) > medfuse_events.METAVISION_FIRST_ITEMID
    for itemid in ITEM_VARIABLES:
        if str(itemid) in EVENT_ITEMIDS["chartevents"]:
            assert d_items[itemid]["linksto"] == "chartevents", itemid
        else:
            assert itemid in d_labitems, itemid
    assert not {int(row["itemid"]) for row in MAP if int(row["itemid"]) < 220000
                and row["table"] == "chartevents"} & set(d_items)
    # Why units come from valueuom: MIMIC-IV's plain "Height" item is in inches.
    assert (d_items[226707]["label"], d_items[226707]["unitname"]) == ("Height", "Inch")
    # test_ph_and_glucose_are_fed_by_urine_items_too_as_upstream: which lab items are urine
    assert {i: (d_labitems[i]["label"], d_labitems[i]["fluid"]) for i in (50820, 50831, 51094, 51491, 50809, 50931,
                                                                          51478)} == {
        50820: ("pH", "Blood"), 50831: ("pH", "Other Body Fluid"), 51094: ("pH", "Urine"), 51491: ("pH", "Urine"),
        50809: ("Glucose", "Blood"), 50931: ("Glucose", "Blood"), 51478: ("Glucose", "Urine")}
    assert clean("Height", "70", 70.0, "Inch", ITEM_LABELS[226707]) == 178.0


@pytest.mark.skipif(not IV_DEMO.is_dir(), reason="the shared open-data folder (../shared) is not beside this clone")
def test_demo_lab_values_clean_to_their_valuenum():
    kept = dropped = 0
    for row in _demo_rows("hosp/labevents.csv.gz"):
        if row["itemid"] not in EVENT_ITEMIDS["labevents"]:
            continue
        valuenum = float(row["valuenum"]) if row["valuenum"] else None
        variable = ITEM_VARIABLES[int(row["itemid"])]
        cleaned = clean_value(variable, row["value"] or None, valuenum, row["valueuom"] or None,
                              ITEM_LABELS[int(row["itemid"])])
        expected = valuenum * 100 if variable == SAT and valuenum is not None and valuenum <= 1 else valuenum
        assert cleaned == expected, row
        kept += cleaned is not None
        dropped += cleaned is None
        if row["itemid"] == "50931":
            assert row["value"] == "___" and cleaned == valuenum  # every blood glucose: "___" with a valuenum
    assert kept > 4000 and dropped > 0
