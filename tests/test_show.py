"""``python -m beam_pipeline.show`` on an ed_cxr output shows what it is asked for, no more and no less. (Another
cohort's output is refused: tests/test_medfuse.py.)"""

from __future__ import annotations

import csv
import re

import pytest

from beam_pipeline import show
from conftest import published


def _shown(out: str) -> list[str]:
    return re.findall(r"^dicom_id (\S+)  split train", out, re.MULTILINE)


@pytest.fixture(scope="module")
def train_dicom_ids(clean_run) -> list[str]:
    manifest = published(clean_run[0]) / "manifest"
    ids = [r["dicom_id"] for p in sorted(manifest.glob("*.csv")) for r in csv.DictReader(p.open(newline=""))
           if r["split"] == "train"]
    assert len(ids) > 2
    return ids


def test_a_dicom_id_given_twice_is_shown_once_and_is_no_error(clean_run, train_dicom_ids, capsys):
    """The ids are a set: the count of those not found was taken from the list, so a repeated id exited 2."""
    show.main([str(clean_run[0]), "--split=train", f"--dicom_id={train_dicom_ids[0]}",
               f"--dicom_id={train_dicom_ids[0]}"])
    assert _shown(capsys.readouterr().out) == [train_dicom_ids[0]]


@pytest.mark.parametrize("n", ["0", "-1"])
def test_n_below_one_is_refused(clean_run, n, capsys):
    """--n=0 printed the whole split (the reading loop stops only after n records)."""
    with pytest.raises(SystemExit) as exit_:
        show.main([str(clean_run[0]), "--split=train", f"--n={n}"])
    assert exit_.value.code == 2 and f"--n: must be at least 1, not {n}" in capsys.readouterr().err


def test_n_shows_the_first_n_records(clean_run, train_dicom_ids, capsys):
    show.main([str(clean_run[0]), "--split=train", "--n=2"])
    assert len(_shown(capsys.readouterr().out)) == 2
