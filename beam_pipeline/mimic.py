"""MIMIC facts: file names, headers, column types, label order, path rules and time formats.

Everything the pipeline assumes about MIMIC-CXR-JPG 2.x, MIMIC-IV-ED 2.2 and MIMIC-IV lives here, so a schema
change touches one file. Source: ``shared/reference/mimic-schemas.md`` (mimic-code DDL, PhysioNet pages, real demo
files). Pure Python: no Beam, no I/O.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import re
from typing import Any, Callable, Mapping

# --------------------------------------------------------------------------------------------------------------
# Tables

INT, FLOAT, STR, DATETIME, DATE = "int", "float", "str", "datetime", "date"
LABEL_VALUE = "label_value"  # a CheXpert cell: 1, 0, -1 or blank (any other value rejects the row: bad_label_value)
LABEL_VALUES = (1.0, 0.0, -1.0)


@dataclasses.dataclass(frozen=True)
class Table:
    """One MIMIC CSV: where it lives, its published header, and the typed columns the pipeline reads."""

    name: str
    module: str  # which --mimic_*_root it lives under: "cxr", "ed", "iv" or "ecg"
    subdir: str  # folder under that root ("" for the CXR root)
    basename: str  # file name without .csv / .csv.gz
    header: tuple[str, ...]  # the published column order (the sample generator writes exactly this)
    types: Mapping[str, str]  # columns the pipeline reads -> INT/FLOAT/STR/DATETIME/LABEL_VALUE; all in the header
    required: tuple[str, ...] = ()  # columns that may not be empty
    check: Callable[[Mapping[str, Any]], None] | None = None  # a rule across the typed row's columns (RowError)
    gzipped: bool = True  # how the release ships it (readers accept either)

    @property
    def filename(self) -> str:
        return self.basename + (".csv.gz" if self.gzipped else ".csv")


LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
"""CheXpert label order: the column order of mimic-cxr-2.0.0-chexpert.csv.gz (alphabetical). Every label vector in
the outputs uses exactly this order."""

VITALS: tuple[str, ...] = ("temperature", "heartrate", "resprate", "o2sat", "sbp", "dbp")
# vitalsign.rhythm values that name a pacemaker ("Paced Rhythm", "V Paced"): a device the X-ray shows (Support
# Devices), so the note leaves them out like a blank rhythm; a redaction marker in their place would tell the same.
DEVICE_RHYTHM = re.compile(r"(?<![a-z])(?:[av]{1,2}[-\s]?)?(?:paced|pacing|pacer|pacemaker)(?![a-z])", re.IGNORECASE)

CXR_METADATA = Table(
    name="cxr_metadata",
    module="cxr",
    subdir="",
    basename="mimic-cxr-2.0.0-metadata",
    header=(
        "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
        "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
        "PatientOrientationCodeSequence_CodeMeaning",
    ),
    # Read as text: the view filter runs first, then ids and times are typed per image (see parse_image_row),
    # so a bad value in an image we would not keep anyway is never counted as a reject.
    types={c: STR for c in ("dicom_id", "subject_id", "study_id", "ViewPosition", "Rows", "Columns",
                            "StudyDate", "StudyTime", "PatientOrientationCodeSequence_CodeMeaning")},
)
CXR_CHEXPERT = Table(
    name="cxr_chexpert",
    module="cxr",
    subdir="",
    basename="mimic-cxr-2.0.0-chexpert",
    header=("subject_id", "study_id") + LABELS,
    types={"subject_id": INT, "study_id": INT, **{label: LABEL_VALUE for label in LABELS}},
    required=("subject_id", "study_id"),
)
CXR_NEGBIO = dataclasses.replace(CXR_CHEXPERT, name="cxr_negbio", basename="mimic-cxr-2.0.0-negbio")
CXR_SPLIT = Table(
    name="cxr_split",
    module="cxr",
    subdir="",
    basename="mimic-cxr-2.0.0-split",
    header=("dicom_id", "study_id", "subject_id", "split"),
    types={"dicom_id": STR, "study_id": INT, "subject_id": INT, "split": STR},
    required=("dicom_id", "study_id", "subject_id", "split"),
)


def _check_stay_times(row: Mapping[str, Any]) -> None:
    """A stay that ends before it begins cannot place an X-ray in its window or say whether the patient had left."""
    if row["outtime"] is not None and row["outtime"] < row["intime"]:
        raise RowError("outtime_before_intime", f"edstays.outtime={row['outtime']} < intime={row['intime']}")


EDSTAYS = Table(
    name="edstays",
    module="ed",
    subdir="ed",
    basename="edstays",
    header=("subject_id", "hadm_id", "stay_id", "intime", "outtime", "gender", "race", "arrival_transport",
            "disposition"),
    # disposition, hadm_id and outtime describe the end of the stay: outtime is only copied to the manifest,
    # disposition and hadm_id are never read (they would leak the outcome into the note).
    types={"subject_id": INT, "stay_id": INT, "intime": DATETIME, "outtime": DATETIME, "gender": STR,
           "arrival_transport": STR},
    required=("subject_id", "stay_id", "intime"),
    check=_check_stay_times,
)
TRIAGE = Table(
    name="triage",
    module="ed",
    subdir="ed",
    basename="triage",
    header=("subject_id", "stay_id") + VITALS + ("pain", "acuity", "chiefcomplaint"),
    types={"subject_id": INT, "stay_id": INT, **{v: FLOAT for v in VITALS}, "pain": STR, "acuity": FLOAT,
           "chiefcomplaint": STR},
    required=("subject_id", "stay_id"),
)
VITALSIGN = Table(
    name="vitalsign",
    module="ed",
    subdir="ed",
    basename="vitalsign",
    header=("subject_id", "stay_id", "charttime") + VITALS + ("rhythm", "pain"),
    types={"subject_id": INT, "stay_id": INT, "charttime": DATETIME, **{v: FLOAT for v in VITALS},
           "rhythm": STR, "pain": STR},
    required=("subject_id", "stay_id", "charttime"),
)
MEDRECON = Table(
    name="medrecon",
    module="ed",
    subdir="ed",
    basename="medrecon",
    header=("subject_id", "stay_id", "charttime", "name", "gsn", "ndc", "etc_rn", "etccode", "etcdescription"),
    types={"subject_id": INT, "stay_id": INT, "charttime": DATETIME, "name": STR},
    required=("subject_id", "stay_id", "charttime"),
)
PYXIS = Table(
    name="pyxis",
    module="ed",
    subdir="ed",
    basename="pyxis",
    header=("subject_id", "stay_id", "charttime", "med_rn", "name", "gsn_rn", "gsn"),
    types={"subject_id": INT, "stay_id": INT, "charttime": DATETIME, "name": STR},
    required=("subject_id", "stay_id", "charttime"),
)
DIAGNOSIS = Table(  # written by the sample generator for realism; never read (ED discharge codes leak the outcome)
    name="diagnosis",
    module="ed",
    subdir="ed",
    basename="diagnosis",
    header=("subject_id", "stay_id", "seq_num", "icd_code", "icd_version", "icd_title"),
    types={},
)
PATIENTS = Table(
    name="patients",
    module="iv",
    subdir="hosp",
    basename="patients",
    header=("subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"),
    types={"subject_id": INT, "gender": STR, "anchor_age": INT, "anchor_year": INT, "dod": DATE},
    required=("subject_id", "anchor_age", "anchor_year"),
)

ADMISSIONS = Table(
    name="admissions",
    module="iv",
    subdir="hosp",
    basename="admissions",
    header=("subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "admission_type", "admit_provider_id",
            "admission_location", "discharge_location", "insurance", "language", "marital_status", "race",
            "edregtime", "edouttime", "hospital_expire_flag"),
    types={"subject_id": INT, "hadm_id": INT, "admittime": DATETIME, "dischtime": DATETIME, "deathtime": DATETIME,
           "hospital_expire_flag": INT},
    required=("subject_id", "hadm_id", "admittime"),
)
LABEVENTS = Table(  # ~158 M rows in the full release: cohorts read it with a row filter on itemid (csv_tables)
    name="labevents",
    module="iv",
    subdir="hosp",
    basename="labevents",
    header=("labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid", "order_provider_id", "charttime",
            "storetime", "value", "valuenum", "valueuom", "ref_range_lower", "ref_range_upper", "flag", "priority",
            "comments"),
    types={"labevent_id": INT, "subject_id": INT, "hadm_id": INT, "itemid": INT, "charttime": DATETIME,
           "value": STR, "valuenum": FLOAT, "valueuom": STR},
    required=("labevent_id", "subject_id", "itemid", "charttime"),
)
def _check_icu_stay_times(row: Mapping[str, Any]) -> None:
    """A stay that ends before it begins has no LOS, no time axis and no pairing window."""
    if row["outtime"] < row["intime"]:
        raise RowError("outtime_before_intime", f"icustays.outtime={row['outtime']} < intime={row['intime']}")


ICUSTAYS = Table(
    name="icustays",
    module="iv",
    subdir="icu",
    basename="icustays",
    header=("subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit", "intime", "outtime", "los"),
    # los (fractional days) is not read: LOS is recomputed from intime/outtime in hours.
    types={"subject_id": INT, "hadm_id": INT, "stay_id": INT, "first_careunit": STR, "last_careunit": STR,
           "intime": DATETIME, "outtime": DATETIME},
    # Never empty in MIMIC-IV; an empty care unit would make the transfer test meaningless, an empty time the LOS.
    required=("subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit", "intime", "outtime"),
    check=_check_icu_stay_times,
)
CHARTEVENTS = Table(  # ~433 M rows in the full release: read with a row filter on itemid (csv_tables)
    name="chartevents",
    module="iv",
    subdir="icu",
    basename="chartevents",
    header=("subject_id", "hadm_id", "stay_id", "caregiver_id", "charttime", "storetime", "itemid", "value",
            "valuenum", "valueuom", "warning"),
    types={"subject_id": INT, "hadm_id": INT, "stay_id": INT, "charttime": DATETIME, "itemid": INT, "value": STR,
           "valuenum": FLOAT, "valueuom": STR},
    required=("subject_id", "charttime", "itemid"),
)
DIAGNOSES_ICD = Table(
    name="diagnoses_icd",
    module="iv",
    subdir="hosp",
    basename="diagnoses_icd",
    header=("subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"),
    types={"subject_id": INT, "hadm_id": INT, "seq_num": INT, "icd_code": STR, "icd_version": INT},
    required=("subject_id", "hadm_id", "icd_code"),
)


def _check_record_path(row: Mapping[str, Any]) -> None:
    """A record_list path names a record under the ECG root (``files/p1000/p10000032/s40689238/40689238``): a
    leading ``/``, an empty, ``.`` or ``..`` segment would name another file, possibly outside the root."""
    path = row["path"]
    if path.startswith("/") or any(part in ("", ".", "..") for part in path.split("/")):
        raise RowError("bad_path", f"ecg_record_list.path={_short(path)} is not a record path under the ECG root")


ECG_RECORD_LIST = Table(  # MIMIC-IV-ECG 1.0: one row per 12-lead ECG; the WFDB record is <root>/<path>.{hea,dat}
    name="ecg_record_list",
    module="ecg",
    subdir="",
    basename="record_list",
    header=("subject_id", "study_id", "file_name", "ecg_time", "path"),
    types={"subject_id": INT, "study_id": INT, "ecg_time": DATETIME, "path": STR},
    required=("subject_id", "study_id", "ecg_time", "path"),
    gzipped=False,
    check=_check_record_path,
)

TABLES: dict[str, Table] = {t.name: t for t in (CXR_METADATA, CXR_CHEXPERT, CXR_NEGBIO, CXR_SPLIT, EDSTAYS,
                                                TRIAGE, VITALSIGN, MEDRECON, PYXIS, DIAGNOSIS, PATIENTS,
                                                ADMISSIONS, LABEVENTS, ECG_RECORD_LIST, ICUSTAYS, CHARTEVENTS,
                                                DIAGNOSES_ICD)}

# The longest record any of these tables can hold. Their free-text columns are VARCHAR(255) (triage.chiefcomplaint,
# medrecon/pyxis.name, medrecon.etcdescription) or short TEXT codes (pain, rhythm), so a real row is under 2 KiB and
# keeps its line breaks to a few (none in the demos). 64 physical lines and 64 Ki characters are 30x that, yet stop a
# quote that never closes within 64 lines instead of letting it swallow the rest of a multi-GB table into one record.
MAX_RECORD_LINES = 64
MAX_RECORD_CHARS = 64 * 1024

# --------------------------------------------------------------------------------------------------------------
# Values and paths

DEFAULT_VIEWS: tuple[str, ...] = ("AP", "PA")
ALL_VIEWS = "*"  # --views=* keeps every image, a blank ViewPosition included
OFFICIAL_SPLITS = {"train": "train", "validate": "val", "test": "test"}  # split file value -> our split name
SPLITS: tuple[str, ...] = ("train", "val", "test")
AGE_TOP_CODE = 91  # MIMIC sets anchor_age of patients older than 89 to 91

ESI_WORDS = {1: "resuscitation", 2: "emergent", 3: "urgent", 4: "less urgent", 5: "non-urgent"}
"""Emergency Severity Index levels as recorded in triage.acuity (1 = most urgent)."""

ARRIVAL_TRANSPORTS = ("AMBULANCE", "WALK IN", "HELICOPTER")  # UNKNOWN and OTHER carry no information


# MIMIC-IV-ECG 1.0 (mimic-schemas.md §4.1): 12 leads, 10 s at 500 Hz, in mV; the files' own lead order (aVF before
# aVL). Readers map leads by name, never by position.
ECG_LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")
ECG_SAMPLING_HZ = 500
ECG_SAMPLES = 5000

# Symile-MIMIC's 50 lab itemids (cohort-definitions.md §A.5), in ascending itemid order: the order of its feature
# vectors (the original's tensors iterate sorted keys, not its constants' listing order).
SYMILE_LAB_ITEMIDS: tuple[int, ...] = tuple(sorted((
    51221, 51265, 50912, 50971, 51222, 51301, 51249, 51279, 51250, 51248, 51277, 51006, 50983, 50902, 50882, 50868,
    50931, 50960, 50893, 50970, 51237, 51274, 51275, 51146, 51256, 51254, 51200, 51244, 52172, 50934, 51678, 50947,
    50861, 50878, 50813, 50863, 50885, 50820, 50862, 50802, 50821, 50804, 50818, 52075, 52073, 52074, 52069, 51133,
    50910, 52135)))
SYMILE_LABELS: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Edema", "Lung Opacity", "No Finding",
                                  "Pleural Effusion")  # the 6 CheXpert labels the original keeps (§A.7)


def report_path(subject_id: int, study_id: int) -> str:
    """Relative path of a MIMIC-CXR report (one per study, beside its image folder):
    ``files/p10/p10000032/s50414267.txt``."""
    sid = str(subject_id)
    return f"files/p{sid[:2]}/p{sid}/s{study_id}.txt"


def image_path(subject_id: int, study_id: int, dicom_id: str) -> str:
    """Relative path of a MIMIC-CXR-JPG image: ``files/p10/p10000032/s50414267/<dicom_id>.jpg``."""
    sid = str(subject_id)
    return f"files/p{sid[:2]}/p{sid}/s{study_id}/{dicom_id}.jpg"


# --------------------------------------------------------------------------------------------------------------
# Times

# ASCII digits only, in times and numbers: int() and float() also read other scripts' digits ("２１８０") and
# underscores ("1_0" is 10), which are not MIMIC values.
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_DATETIME_RE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,6})?", re.ASCII)
_STUDY_DATE_RE = re.compile(r"(\d{4})(\d{2})(\d{2})(?:\.0*)?", re.ASCII)
_STUDY_TIME_RE = re.compile(r"(\d{1,6})(?:\.(\d*))?", re.ASCII)
_INT_RE = re.compile(r"\s*[+-]?\d+\s*", re.ASCII)
_FLOAT_RE = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?\s*", re.ASCII | re.IGNORECASE)


INT64_MIN, INT64_MAX = -2 ** 63, 2 ** 63 - 1  # every id is written as an int64 feature


def _number(text: str, pattern: re.Pattern, kind: type):
    """``kind(text)`` for a plain ASCII number; ValueError otherwise."""
    if not pattern.fullmatch(text):
        raise ValueError(f"not an ASCII {kind.__name__}")
    return kind(text)


def _int64(value):
    """The value as an int when it is a whole number an int64 can hold; ValueError otherwise (it could not be
    written: the TFRecord writer would fail the job on it after all the image work)."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError("outside int64")
    if isinstance(value, int):
        return value
    if value != int(value):
        raise ValueError("not a whole number")
    return int(value)


def _ascii_int(text: str) -> int:
    """An INT column's value: ASCII digits, within int64."""
    return _int64(_number(text, _INT_RE, int))


def _whole_number(text: str) -> int:
    """An int64 written as any plain ASCII number ("53911762", "53911762.0", "5.3911762e7"), typed exactly: float()
    would turn an id above 2**53 into its neighbour (9007199254740993 -> 9007199254740992). Plain digits, the usual
    case, skip Decimal."""
    if _INT_RE.fullmatch(text):
        return _int64(int(text))
    if not _FLOAT_RE.fullmatch(text):
        raise ValueError("not an ASCII number")
    try:
        return _int64(decimal.Decimal(text))
    except decimal.InvalidOperation:  # an exponent beyond what Decimal holds (1e9999999999999999999)
        raise ValueError("not an int64") from None


def _bad_date(text: str):
    raise ValueError(f"not a date YYYY-MM-DD: {text!r}")


def parse_datetime(text: str) -> dt.datetime:
    """Parse MIMIC's ``YYYY-MM-DD HH:MM:SS`` with optional fractional seconds; raise ValueError otherwise."""
    if not _DATETIME_RE.fullmatch(text):
        raise ValueError(f"not YYYY-MM-DD HH:MM:SS[.ffffff]: {text!r}")
    # Padded to six fraction digits: Python 3.10's fromisoformat takes only three or six.
    return dt.datetime.fromisoformat(text if len(text) in (19, 26) else text.ljust(26, "0"))


def format_datetime(value: dt.datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS[.ffffff]``, MIMIC's own spelling, for every datetime we write: the fraction (StudyTime
    has one) is written when there is one, so a written time is the time the job compared (a film 0.5 s after
    departure must not read as taken at it)."""
    return value.isoformat(sep=" ")


def parse_study_datetime(study_date: str, study_time: str) -> dt.datetime:
    """Combine MIMIC-CXR StudyDate (``YYYYMMDD``) and StudyTime (``HHMMSS.ffffff`` written as a float).

    StudyTime lost its leading zeros when it was stored as a number, so the integer part is left-padded to six
    digits (``80556.875`` is 08:05:56.875); integer times (``80556``) and short ones (``4.0`` = 00:00:04) are
    accepted; the fraction is kept to the microsecond.
    """
    date_match = _STUDY_DATE_RE.fullmatch(study_date.strip())
    if not date_match:
        raise ValueError(f"StudyDate is not YYYYMMDD: {study_date!r}")
    time_match = _STUDY_TIME_RE.fullmatch(study_time.strip())
    if not time_match:
        raise ValueError(f"StudyTime is not HHMMSS[.ffffff]: {study_time!r}")
    hhmmss = time_match.group(1).zfill(6)
    fraction = (time_match.group(2) or "")[:6].ljust(6, "0")
    year, month, day = (int(g) for g in date_match.groups())
    return dt.datetime(year, month, day, int(hhmmss[:2]), int(hhmmss[2:4]), int(hhmmss[4:]), int(fraction))


def format_study_time(value: dt.datetime) -> tuple[str, str]:
    """Inverse of parse_study_datetime, in MIMIC's own spelling (leading zeros of the time dropped)."""
    hhmmss = str(int(value.strftime("%H%M%S")))
    fraction = f"{value.microsecond:06d}".rstrip("0")
    return value.strftime("%Y%m%d"), hhmmss + "." + (fraction or "0")


# --------------------------------------------------------------------------------------------------------------
# Typing rows


class RowError(ValueError):
    """A row that cannot be typed; ``reason`` is a short stable code, ``detail`` names the column (never values
    of free-text columns)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def int_or_none(text: str | None) -> int | None:
    """An id for a reject row, when the text is one (ASCII, as type_value reads it: "1_0000032" is no id, or the
    reject would be tied to subject 10000032)."""
    try:
        return _ascii_int(text)
    except (TypeError, ValueError):
        return None


def _short(value: str) -> str:
    return repr(value if len(value) <= 32 else value[:32] + "...")


def type_value(kind: str, text: str) -> Any:
    """Type one CSV field; empty means NULL (None)."""
    if text == "":
        return None
    if kind == STR:
        return text
    if kind == INT:
        return _ascii_int(text)
    if kind == FLOAT:
        value = _number(text, _FLOAT_RE, float)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("not a finite number")
        return value
    if kind == DATETIME:
        return parse_datetime(text)
    if kind == DATE:
        return dt.date.fromisoformat(text) if _DATE_RE.fullmatch(text) else _bad_date(text)
    if kind == LABEL_VALUE:
        value = _number(text, _FLOAT_RE, float)
        if value not in LABEL_VALUES:
            raise ValueError("not a CheXpert label value")
        return value
    raise AssertionError(kind)


def type_row(table: Table, raw: Mapping[str, str]) -> dict[str, Any]:
    """Type the columns a table declares; raise RowError naming the first bad column."""
    row = {}
    for column, kind in table.types.items():
        text = raw[column]
        if text == "" and column in table.required:
            raise RowError("missing_value", f"{table.name}.{column} is empty")
        try:
            row[column] = type_value(kind, text)
        except ValueError:
            reason = "bad_timestamp" if kind == DATETIME else f"bad_{kind}"
            raise RowError(reason, f"{table.name}.{column}={_short(text)}") from None
    if table.check:
        table.check(row)
    return row


@dataclasses.dataclass(frozen=True)
class Image:
    """One MIMIC-CXR-JPG image, typed (metadata only: bytes are read after the join)."""

    dicom_id: str
    subject_id: int
    study_id: int
    view_position: str
    rows: int | None
    columns: int | None
    study_time: dt.datetime
    orientation: str = ""  # PatientOrientationCodeSequence_CodeMeaning (Erect, Recumbent or blank)

    @property
    def path(self) -> str:
        return image_path(self.subject_id, self.study_id, self.dicom_id)


def parse_image_row(raw: Mapping[str, str | None]) -> Image:
    """Type one metadata row of a kept view (blank fields may be None); raise RowError for bad ids, sizes or
    study times."""
    raw = {k: (v or "").strip() for k, v in raw.items()}
    dicom_id = raw["dicom_id"]
    if not dicom_id:
        raise RowError("missing_value", "cxr_metadata.dicom_id is empty")
    typed = {}
    for column in ("subject_id", "study_id", "Rows", "Columns"):
        text = raw[column]
        if text == "" and column in ("subject_id", "study_id"):
            raise RowError("missing_value", f"cxr_metadata.{column} is empty")
        try:
            typed[column] = _whole_number(text) if text else None
        except ValueError:
            raise RowError("bad_int", f"cxr_metadata.{column}={_short(text)}") from None
    try:
        study_time = parse_study_datetime(raw["StudyDate"], raw["StudyTime"])
    except ValueError as err:
        raise RowError("bad_study_time", f"cxr_metadata: {err}") from None
    return Image(
        dicom_id=dicom_id,
        subject_id=typed["subject_id"],
        study_id=typed["study_id"],
        view_position=raw["ViewPosition"],
        rows=typed["Rows"],
        columns=typed["Columns"],
        study_time=study_time,
        orientation=raw.get("PatientOrientationCodeSequence_CodeMeaning", ""),
    )


def age_at(anchor_age: int, anchor_year: int, year: int) -> int:
    """Age in a given (shifted) year: anchor_age + (year - anchor_year); top-coded patients stay 91."""
    if anchor_age >= AGE_TOP_CODE:
        return AGE_TOP_CODE
    return anchor_age + (year - anchor_year)
