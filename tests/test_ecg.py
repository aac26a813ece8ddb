"""Tests of the ECG reader and writer (beam_pipeline.transforms.ecg): WFDB round trips, lead mapping by name, the
Symile-MIMIC quality filter, min-max scaling, errors, the real PTB record and reads from gs://."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import wfdb

from beam_pipeline import mimic
from beam_pipeline.fileio.sources import BeamSource
from beam_pipeline.transforms import ecg
from conftest import create_bucket, upload_tree

PTB = Path(__file__).resolve().parents[2] / "shared" / "open-data" / "ptbdb-sample"  # ../shared: not in a clone
HALF_STEP_MV = 0.5 / 200  # format 16 at 200 adu/mV rounds to the nearest 1/200 mV


def waveform(seed: int = 0, samples: int = mimic.ECG_SAMPLES, leads: int = 12) -> np.ndarray:
    """Distinct values per lead and sample, so a swapped lead or a shifted sample shows."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-4, 4, size=(samples, leads)) + np.arange(leads) * 0.1


def read(root: Path, name: str) -> ecg.Ecg:
    return ecg.read_ecg(BeamSource(), str(root), name)


def test_round_trip_in_mimic_ecg_shape(tmp_path: Path) -> None:
    signal = waveform()
    ecg.write_ecg(tmp_path / "s40000001", "40000001", signal)
    header = (tmp_path / "s40000001" / "40000001.hea").read_text().splitlines()
    assert header[0] == "40000001 12 500 5000"
    assert [line.split()[:5] for line in header[1:]] == [["40000001.dat", "16", "200.0(0)/mV", "16", "0"]] * 12
    assert [line.split()[-1] for line in header[1:]] == list(mimic.ECG_LEADS)
    assert (tmp_path / "s40000001" / "40000001.dat").stat().st_size == 12 * 5000 * 2

    record = read(tmp_path, "s40000001/40000001")
    assert record.signal.dtype == np.float32 and record.signal.shape == (5000, 12)
    assert record.lead_names == mimic.ECG_LEADS and record.sampling_hz == 500.0
    assert np.abs(record.signal - signal).max() <= HALF_STEP_MV + 1e-6
    assert ecg.quality_problem(record) is None


def test_same_input_gives_the_same_bytes(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        ecg.write_ecg(tmp_path / folder, "40000002", waveform(3))
    for name in ("40000002.hea", "40000002.dat"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_nan_is_written_as_the_invalid_sample_and_read_back_as_nan(tmp_path: Path) -> None:
    signal = waveform()
    signal[1000:1500, 8] = np.nan  # a gap in V3
    ecg.write_ecg(tmp_path, "40000003", signal)
    stored = np.fromfile(tmp_path / "40000003.dat", dtype="<i2").reshape(5000, 12)
    assert (stored[1000:1500, 8] == -32768).all() and (stored != -32768).sum() == 5000 * 12 - 500

    record = read(tmp_path, "40000003")
    assert (np.isnan(record.signal) == np.isnan(signal)).all()
    assert ecg.quality_problem(record) == "nan"


def test_all_zero_record_is_flagged(tmp_path: Path) -> None:
    ecg.write_ecg(tmp_path, "40000004", np.zeros((5000, 12)))
    record = read(tmp_path, "40000004")
    assert record.signal.shape == (5000, 12) and not record.signal.any()
    assert ecg.quality_problem(record) == "all_zero"


@pytest.mark.parametrize(("samples", "leads", "hz"), [(4999, 12, 500), (5000, 11, 500), (5000, 12, 250.0),
                                                      (10000, 12, 1000)])
def test_other_shapes_are_flagged(samples: int, leads: int, hz: float) -> None:
    record = ecg.Ecg(waveform(samples=samples, leads=leads).astype(np.float32), mimic.ECG_LEADS[:leads], hz)
    assert ecg.quality_problem(record) == "shape"


def test_nan_and_all_zero_are_reported_before_shape() -> None:
    """The original's two checks come first, so its reasons are counted as it would count them."""
    short = waveform(samples=100).astype(np.float32)
    short[5, 5] = np.nan
    assert ecg.quality_problem(ecg.Ecg(short, mimic.ECG_LEADS, 500.0)) == "nan"
    assert ecg.quality_problem(ecg.Ecg(np.zeros((100, 12), np.float32), mimic.ECG_LEADS, 500.0)) == "all_zero"


def test_leads_are_mapped_by_name_ignoring_case(tmp_path: Path) -> None:
    """PTB's spelling and order (lower case, aVL before aVF) plus an extra lead: each output column is the lead of
    that name, the extra one is dropped."""
    names = ("vx", "i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6")
    signal = waveform(leads=len(names))
    ecg.write_ecg(tmp_path, "ptb_like", signal, lead_names=names)
    record = read(tmp_path, "ptb_like")
    assert record.lead_names == mimic.ECG_LEADS and record.signal.shape == (5000, 12)
    for column, lead in enumerate(mimic.ECG_LEADS):
        source = signal[:, names.index(lead.lower())]
        assert np.abs(record.signal[:, column] - source).max() <= HALF_STEP_MV + 1e-6, lead


def test_a_missing_or_repeated_lead_is_a_format_error(tmp_path: Path) -> None:
    ecg.write_ecg(tmp_path, "eleven", waveform(leads=11), lead_names=mimic.ECG_LEADS[:11])
    with pytest.raises(ecg.EcgFormatError, match="lead V6 missing"):
        read(tmp_path, "eleven")
    ecg.write_ecg(tmp_path, "twice", waveform(leads=13), lead_names=mimic.ECG_LEADS + ("v1",))
    with pytest.raises(ecg.EcgFormatError, match="lead V1 appears more than once"):
        read(tmp_path, "twice")


def _rewrite_signal_lines(path: Path, edit) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0]] + [edit(line.split()) for line in lines[1:]]) + "\n")


def test_a_signal_line_without_a_lead_name_is_no_lead(tmp_path: Path) -> None:
    """WFDB allows a signal line with no description; wfdb reads its name as None. Such a column is not a lead: a
    format error (a reject), not an exception the job does not catch."""
    ecg.write_ecg(tmp_path, "unnamed", waveform())
    _rewrite_signal_lines(tmp_path / "unnamed.hea", lambda fields: " ".join(fields[:-1]))
    with pytest.raises(ecg.EcgFormatError, match="lead I missing"):
        read(tmp_path, "unnamed")


def test_values_beyond_float32_at_the_headers_gain_are_a_format_error(tmp_path: Path) -> None:
    """A gain of 1e-40 adu/mV makes most samples larger than float32 holds: they would be written as inf (and min-max
    scaled to NaN), so the record is refused, never called usable."""
    ecg.write_ecg(tmp_path, "tiny_gain", waveform())
    _rewrite_signal_lines(tmp_path / "tiny_gain.hea",
                          lambda fields: " ".join([*fields[:2], "1e-40(0)/mV", *fields[3:]]))
    with pytest.raises(ecg.EcgFormatError, match="beyond float32"):
        read(tmp_path, "tiny_gain")


def test_units_other_than_mv_are_a_format_error(tmp_path: Path) -> None:
    wfdb.wrsamp("micro", fs=500, units=["uV"] * 12, sig_name=list(mimic.ECG_LEADS), p_signal=waveform() * 1000,
                fmt=["16"] * 12, adc_gain=[0.2] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
    with pytest.raises(ecg.EcgFormatError, match="expected mV"):
        read(tmp_path, "micro")


def test_missing_files_are_os_errors_naming_the_file(tmp_path: Path) -> None:
    ecg.write_ecg(tmp_path / "rec", "40000005", waveform())
    (tmp_path / "rec" / "40000005.dat").unlink()
    with pytest.raises(OSError, match=str(tmp_path / "rec" / "40000005.dat")):
        read(tmp_path, "rec/40000005")
    with pytest.raises(OSError, match=str(tmp_path / "rec" / "40000006.hea")):
        read(tmp_path, "rec/40000006")


def test_unparseable_bytes_are_format_errors(tmp_path: Path) -> None:
    (tmp_path / "garbage.hea").write_bytes(b"\x00\xffnot a header\n")
    with pytest.raises(ecg.EcgFormatError, match="unreadable header"):
        read(tmp_path, "garbage")
    (tmp_path / "empty.hea").write_bytes(b"")
    with pytest.raises(ecg.EcgFormatError, match="unreadable header"):
        read(tmp_path, "empty")

    ecg.write_ecg(tmp_path, "cut", waveform())
    data = (tmp_path / "cut.dat").read_bytes()
    (tmp_path / "cut.dat").write_bytes(data[:1001])  # not even a whole frame of 12 samples at the end
    with pytest.raises(ecg.EcgFormatError, match="unreadable signal"):
        read(tmp_path, "cut")


@pytest.mark.parametrize("name", [".", "~"])
def test_data_file_names_that_are_no_file_are_refused(tmp_path: Path, name: str) -> None:
    """wfdb parses these names; "." would read the record's folder itself."""
    ecg.write_ecg(tmp_path / "rec", "40000007", waveform())
    header = (tmp_path / "rec" / "40000007.hea").read_text()
    (tmp_path / "rec" / "40000007.hea").write_text(header.replace("40000007.dat", name))
    with pytest.raises(ecg.EcgFormatError, match="not a plain file name"):
        read(tmp_path, "rec/40000007")


def test_values_format_16_cannot_hold_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="do not fit format 16"):
        ecg.write_ecg(tmp_path, "loud", waveform() * 100)
    with pytest.raises(ValueError, match="does not match 12 leads"):
        ecg.write_ecg(tmp_path, "narrow", waveform(leads=3))


def test_minmax_scale_over_all_leads_is_invertible() -> None:
    signal = waveform(5).astype(np.float32)
    scaled, low, high = ecg.minmax_scale(signal)
    assert scaled.dtype == np.float32 and scaled.shape == signal.shape
    assert (low, high) == (float(signal.min()), float(signal.max()))
    assert scaled.min() == -1.0 and scaled.max() == 1.0
    assert scaled[:, 0].min() > -1.0 or scaled[:, 0].max() < 1.0  # per record, not per lead
    assert np.allclose((scaled + 1) / 2 * (high - low) + low, signal, atol=1e-5)

    constant, low, high = ecg.minmax_scale(np.full((5000, 12), 0.7))
    assert low == high == 0.7 and not constant.any() and constant.dtype == np.float32


@pytest.mark.skipif(not PTB.is_dir(), reason="the shared open-data folder (../shared) is not beside this clone")
def test_real_ptb_record_leads_match_wfdb_by_name() -> None:
    """s0010_re: 15 leads (12 standard in lower case, aVL before aVF, in .dat; Frank vx, vy, vz in .xyz), 1000 Hz,
    gain 2000. read_ecg fetches both data files and keeps the 12 standard leads in MIMIC order."""
    record = ecg.read_ecg(BeamSource(), str(PTB), "s0010_re")
    direct = wfdb.rdrecord(str(PTB / "s0010_re"), physical=True)
    assert len(direct.sig_name) == 15 and direct.sig_name.index("avl") < direct.sig_name.index("avf")
    assert record.signal.shape == (38400, 12) and record.sampling_hz == 1000.0
    for column, lead in enumerate(mimic.ECG_LEADS):
        expected = direct.p_signal[:, direct.sig_name.index(lead.lower())].astype(np.float32)
        assert np.array_equal(record.signal[:, column], expected), lead
    assert ecg.quality_problem(record) == "shape"


def test_reads_from_gcs(tmp_path: Path, gcs_server) -> None:
    client, proxy = gcs_server
    create_bucket(client, proxy, "ecg-open-data")
    signal = waveform(9)
    ecg.write_ecg(tmp_path / "tree" / "files/p1000/p10000032/s40689238", "40689238", signal)
    root = upload_tree(client, "ecg-open-data", tmp_path / "tree", "mimic-iv-ecg/1.0")

    record = ecg.read_ecg(BeamSource(), root, "files/p1000/p10000032/s40689238/40689238")
    assert np.array_equal(record.signal, read(tmp_path / "tree", "files/p1000/p10000032/s40689238/40689238").signal)
    assert np.abs(record.signal - signal).max() <= HALF_STEP_MV + 1e-6

    client.bucket("ecg-open-data").blob("mimic-iv-ecg/1.0/files/p1000/p10000032/s40689238/40689238.dat").delete()
    with pytest.raises(OSError, match=f"{root}/files/p1000/p10000032/s40689238/40689238.dat"):
        ecg.read_ecg(BeamSource(), root, "files/p1000/p10000032/s40689238/40689238")
