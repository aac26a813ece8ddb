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


def test_each_record_says_why_its_labels_are_what_they_are(clean_run, capsys):
    """An unlabelled record shows all 14 labels blank whether its study has no CheXpert row or an all-blank one: the
    status line tells them apart."""
    show.main([str(clean_run[0]), "--split=train", "--n=3"])
    statuses = re.findall(r"^  labels: (\S+)$", capsys.readouterr().out, re.MULTILINE)
    assert len(statuses) == 3 and set(statuses) <= {"labeled", "all_blank", "no_label_row"}


def test_an_empty_split_says_so(clean_run, tmp_path, capsys):
    """The writer writes one empty shard for a split without records; show said nothing at all there."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(published(clean_run[0]), run)
    shards = sorted((run / "tfrecords").glob("val-*"))
    assert shards
    for shard in shards:
        shard.write_bytes(b"")  # what the writer leaves for an empty split: zero records
    show.main([str(run), "--split=val"])
    assert capsys.readouterr().out == "the val split holds no records\n"
