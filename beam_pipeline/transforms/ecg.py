"""12-lead ECGs in WFDB format: read one record through a byte source, judge it with Symile-MIMIC's quality filter,
scale it to [-1, 1] as the original's tensors do, and write MIMIC-IV-ECG-shaped records (for the sample generator).

A record is ``<root>/<path>.hea`` plus the data files its signal lines name, in the same folder. ``wfdb`` only reads
local files, so the bytes are fetched through the source (local or ``gs://``) into a private temporary folder
first. Leads are picked by name, case-insensitively, into ``mimic.ECG_LEADS`` order: MIMIC-IV-ECG files are already
in that order, other databases (PTB: lower case, aVL before aVF, extra Frank leads) are not. Errors never carry
signal values: an OSError names the file that could not be read, an EcgFormatError says in a few words what is wrong
with the record (the caller knows which record it asked for).
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
import tempfile
from pathlib import Path

import numpy as np
import wfdb

from beam_pipeline import mimic
from beam_pipeline.fileio.sources import BeamSource

ADC_GAIN = 200.0  # MIMIC-IV-ECG: 200 adu per mV, baseline 0, format 16
LARGEST_MV = 32767 / ADC_GAIN  # the largest magnitude a format 16 sample at this gain can hold


class EcgFormatError(ValueError):
    """The bytes were read but are not a usable 12-lead WFDB record."""


@dataclasses.dataclass(frozen=True)
class Ecg:
    signal: np.ndarray  # float32, (samples, leads), mV
    lead_names: tuple[str, ...]
    sampling_hz: float


def record_files(header: wfdb.Record) -> list[str]:
    """The distinct data files a header's signal lines name, in order, all in the header's folder. wfdb's header
    grammar admits no path separator, but it does admit "." (the folder itself) and "~" (WFDB's "not stored"):
    neither is a file to fetch, so they are refused."""
    names = list(dict.fromkeys(header.file_name or []))
    for name in names:
        if not re.fullmatch(r"~?[-\w]+\.?\w*", name):
            raise EcgFormatError(f"data file name {name!r} is not a plain file name")
    return names


def lead_columns(sig_names: list[str] | None) -> list[int]:
    """Column of each of ``mimic.ECG_LEADS`` in a record, matched by name ignoring case (files differ in both order
    and spelling). A missing or repeated lead is an EcgFormatError: choosing would be a guess. WFDB allows a signal
    line without a name (wfdb reads it as None): that column is no lead."""
    lowered = [(name or "").lower() for name in sig_names or []]
    columns = []
    for lead in mimic.ECG_LEADS:
        count = lowered.count(lead.lower())
        if count != 1:
            raise EcgFormatError(f"lead {lead} {'missing' if count == 0 else 'appears more than once'}")
        columns.append(lowered.index(lead.lower()))
    return columns


def _parse(action, what: str):
    """Run a wfdb parse; its errors for malformed input come in many types (ValueError, IndexError, its own
    HeaderSyntaxError, ...), so any of them becomes one EcgFormatError naming the exception type only."""
    try:
        return action()
    except Exception as err:
        raise EcgFormatError(f"{what}: {type(err).__name__}") from None


def read_ecg(source: BeamSource, root: str, path: str) -> Ecg:
    """The record ``<root>/<path>`` (``path`` without extension, as record_list.csv spells it) as a 12-lead ECG in
    ``mimic.ECG_LEADS`` order, in mV. Raises OSError when the header or a data file cannot be read (the message
    names it) and EcgFormatError when wfdb cannot parse them, a lead is missing or a value is beyond float32."""
    location = root.rstrip("/") + "/" + path.lstrip("/")
    folder, name = posixpath.split(location)
    header_path = location + ".hea"
    with tempfile.TemporaryDirectory(prefix="ecg-") as scratch:
        local = Path(scratch, name)
        Path(scratch, name + ".hea").write_bytes(source.read(header_path))
        header = _parse(lambda: wfdb.rdheader(str(local)), "unreadable header")
        if isinstance(header, wfdb.MultiRecord):
            raise EcgFormatError("multi-segment records are not supported")
        for data_file in record_files(header):
            Path(scratch, data_file).write_bytes(source.read(f"{folder}/{data_file}"))
        record = _parse(lambda: wfdb.rdrecord(str(local), physical=True), "unreadable signal")
    columns = lead_columns(record.sig_name)
    units = {record.units[c] for c in columns} if record.units else {"mV"}
    if units != {"mV"}:
        raise EcgFormatError(f"units {sorted(units)}, expected mV")
    with np.errstate(over="ignore"):
        signal = np.asarray(record.p_signal, dtype=np.float32)[:, columns]
    if np.isinf(signal).any():  # a header's absurd gain (1e-40 adu/mV): the values would be written as inf
        raise EcgFormatError("values beyond float32 at the header's gain")
    return Ecg(signal, mimic.ECG_LEADS, float(record.fs))


def quality_problem(ecg: Ecg) -> str | None:
    """Why Symile-MIMIC would not use this ECG, or None: "nan" when any value is NaN, "all_zero" when every value is
    exactly 0 (the original's only two checks, in that order), then "shape" when it is not ``mimic.ECG_SAMPLES`` x
    12 leads at ``mimic.ECG_SAMPLING_HZ``: ours, because the output schema holds a fixed 5000 x 12 tensor and the
    original silently assumed every MIMIC-IV-ECG record has that shape."""
    if np.isnan(ecg.signal).any():
        return "nan"
    if not ecg.signal.any():
        return "all_zero"
    if ecg.signal.shape != (mimic.ECG_SAMPLES, len(mimic.ECG_LEADS)) or ecg.sampling_hz != mimic.ECG_SAMPLING_HZ:
        return "shape"
    return None


def minmax_scale(signal: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Symile-MIMIC's scaling to [-1, 1] (its tensors always have it; an option for us) over the whole record, all
    leads jointly: 2 (x - min) / (max - min) - 1. Returns (scaled float32, min, max) so it can be undone, which the
    original cannot (it keeps neither). A constant signal maps to zeros: the original would divide by zero there (it
    only removed all-zero records). Meant for signals that passed quality_problem (no NaN)."""
    values = np.asarray(signal, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros(values.shape, dtype=np.float32), low, high
    return (2 * (values - low) / (high - low) - 1).astype(np.float32), low, high


def write_ecg(folder: Path, record_name: str, signal_mv: np.ndarray, lead_names: tuple[str, ...] = mimic.ECG_LEADS,
              sampling_hz: float = mimic.ECG_SAMPLING_HZ) -> None:
    """Write ``<folder>/<record_name>.{hea,dat}`` the way MIMIC-IV-ECG stores a record: format 16, 200 adu/mV,
    baseline 0, units mV, one .dat. NaN is stored as format 16's invalid sample and reads back as NaN; values are
    rounded to 1/200 mV. Same input, same bytes (no date or time in the header)."""
    signal = np.asarray(signal_mv, dtype=np.float64)
    if signal.ndim != 2 or signal.shape[1] != len(lead_names):
        raise ValueError(f"signal shape {signal.shape} does not match {len(lead_names)} leads")
    if (np.abs(signal[~np.isnan(signal)]) > LARGEST_MV).any():
        raise ValueError(f"values beyond +-{LARGEST_MV} mV do not fit format 16 at {ADC_GAIN} adu/mV")
    folder.mkdir(parents=True, exist_ok=True)
    count = len(lead_names)
    wfdb.wrsamp(record_name, fs=sampling_hz, units=["mV"] * count, sig_name=list(lead_names), p_signal=signal,
                fmt=["16"] * count, adc_gain=[ADC_GAIN] * count, baseline=[0] * count, write_dir=str(folder))
