"""The leakage probe: hashed features, the classifier, AUROC, the marker question, determinism and the Beam wiring."""

from __future__ import annotations

import dataclasses
import json
import random
import types
import zlib

import numpy as np
import objsize
import pytest
from scipy import sparse
import apache_beam as beam
from apache_beam.testing.util import assert_that

from beam_pipeline import mimic
from beam_pipeline.transforms import probe as P
from beam_pipeline.transforms.leakage import load_rules, redact
from conftest import test_pipeline

RULES = load_rules()
MARKER = "[REDACTED]"
PNEUMONIA = mimic.LABELS.index("Pneumonia")
COMPLAINTS = ("Dyspnea", "Fever, Cough", "Chest pain", "s/p Fall", "Weakness", "Abd pain, N/V", "Syncope", "Cough")


def test_terms_are_crc32_buckets_of_unigrams_and_bigrams_never_pythons_hash():
    terms = P.hashed_terms("Fever, COUGH.")
    expected = {zlib.crc32(t.encode()) % 2 ** 18 for t in ("fever", "cough", "fever cough")}
    assert np.frombuffer(terms, P.TERMS).tolist() == sorted(expected) and P.BUCKETS == 2 ** 18
    assert P.hashed_terms("") == b"" and P.hashed_terms(f"a {MARKER} b") != P.hashed_terms(
        P.without_marker(f"a {MARKER} b", MARKER))
    assert P.without_marker(f"a {MARKER} b", "") == f"a {MARKER} b"


@pytest.mark.parametrize("marker", ["***", "█", "[…]"])
def test_a_marker_without_letters_or_digits_is_a_term_of_the_filtered_note(marker):
    """Terms are words only, so such a marker used to vanish: the filtered note's terms equalled those without it."""
    record = types.SimpleNamespace(dicom_id="d1", split="train", note=f"cough {marker} fever", features=(1.0,),
                                   features_missing=(0.0,), labels_binary=(1,), labels_mask=(1,))
    row = P.probe_row(record, marker)
    assert row.without_marker == P.hashed_terms("cough fever")
    assert row.filtered == P.hashed_terms(f"cough {P.MARKER_WORD} fever") != row.without_marker
    assert P.marker_as_word(f"a {MARKER} b", MARKER) == f"a {MARKER} b"  # a marker with a word is hashed as it is
    # The note already held the marker (MIMIC's "___" is one): its unfiltered terms are its own, not the filtered
    # ones with the marker spelled as a word, which would tell the probe which notes the filter changed.
    assert row.unfiltered == P.hashed_terms(record.note) != row.filtered
    plain = P.probe_row(types.SimpleNamespace(**{**vars(record), "note": "cough fever"}), marker)
    assert plain.unfiltered is None and plain.filtered == P.hashed_terms("cough fever")


def test_a_row_is_packed_so_the_subsample_every_worker_holds_stays_small():
    """Each worker holds the whole subsample (up to 25,000 rows): a row of a typical note (70 words, 23 features)
    takes about 2 KB packed, where tuples of Python numbers took about 12 KB."""
    note = " ".join(f"word{i % 50} w{i}" for i in range(35))
    row = P.probe_row(FakeRecord("d1", "train", note, features=(0.5,) * 23, features_missing=(0,) * 23), MARKER)
    assert len(row.filtered) == 4 * len(set(np.frombuffer(row.filtered, P.TERMS))) == 4 * 139  # 70 words, 69 bigrams
    assert np.frombuffer(row.structured, P.FEATURES).tolist() == [0.5] * 23 + [0.0] * 23
    assert objsize.get_deep_size(row) < 2_500


def test_auroc_counts_ties_half():
    assert P.auroc(np.array([0, 1, 0, 1, 1, 0]), np.array([.1, .1, .5, .5, .9, .2])) == pytest.approx(2 / 3)
    assert P.auroc(np.array([0, 0, 1, 1]), np.array([1., 2., 3., 4.])) == 1.0
    assert P.auroc(np.array([0, 1]), np.array([3., 3.])) == 0.5


def test_logistic_regression_reaches_the_penalised_optimum():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    y = (x[:, 0] - x[:, 2] + rng.normal(size=400) > 0).astype(float)
    design, _ = P.dense_designs(x, x[:5])
    w = P.fit_logistic(design, y)
    p = 1 / (1 + np.exp(-design.dot(w)))
    penalty = np.r_[np.full(6, P.L2), 0.0]
    assert np.abs(design.tdot(p - y) + penalty * w).max() < 1e-5  # gradient of the objective vanishes
    assert w[0] > 0.5 and w[2] < -0.5 and abs(w[4]) < 0.3


def test_term_columns_are_merged_and_centred_yet_the_fit_solves_the_documented_problem():
    """Merging the buckets of the same train notes and centring the columns are reparameterisations: the weights
    must give the optimum of the documented objective on the raw binary terms, and score the validation notes as a
    plain fit on the raw terms does."""
    rows = _rows(600, MARKER)
    train, val = ([r.filtered for r in rows if r.split == split] for split in ("train", "val"))
    design, val_design = P.term_designs(train, val)
    raw_train, raw_val = _binary_terms(train, train), _binary_terms(train, val)
    merge = P.merged_columns(raw_train)
    assert design.d - 1 == merge.shape[1] < raw_train.shape[1] / 2  # the template's words come together
    assert design.center[-1] == 0.0 and val_design.center is design.center  # val is centred on the train means
    y = np.array([r.labels[PNEUMONIA] for r in rows if r.split == "train"], np.float64)
    w = P.fit_logistic(design, y)
    weights = merge @ w[:-1]  # one per raw bucket
    intercept = w[-1] - design.center[:-1] @ w[:-1]
    p = 1 / (1 + np.exp(-(raw_train @ weights + intercept)))
    assert np.abs(raw_train.T @ (p - y) + P.L2 * weights).max() < 1e-5  # raw terms: the gradient vanishes
    assert abs((p - y).sum()) < 1e-5
    plain = P.fit_logistic(P.Design(sparse.hstack([raw_train, np.ones((len(train), 1))], format="csr")), y)
    assert np.allclose(val_design.dot(w), raw_val @ plain[:-1] + plain[-1], atol=1e-5)


def _binary_terms(train: list[bytes], notes: list[bytes]):
    """The documented design, built plainly: one binary column per bucket seen in train."""
    vocab = sorted(set().union(*(np.frombuffer(t, P.TERMS).tolist() for t in train)))
    column = {bucket: j for j, bucket in enumerate(vocab)}
    cells = [(i, column[b]) for i, t in enumerate(notes) for b in np.frombuffer(t, P.TERMS).tolist() if b in column]
    rows, cols = zip(*cells)
    return sparse.csr_matrix((np.ones(len(cells)), (rows, cols)), shape=(len(notes), len(vocab)))


def _rows(n: int, token: str, seed: int = 0) -> list[P.ProbeRow]:
    """Notes where only a finding word tells positives apart: a positive's complaint has "PNA" added, which the
    filter replaces by ``token`` (deletes it when token is ""); the structured features are noise."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = rng.random() < 0.3
        complaint = rng.choice(COMPLAINTS) + (", PNA" if positive else "")
        note = f"Patient, {rng.randint(20, 90)}-year-old, walking in. Chief complaint: {complaint}."
        filtered, hits = redact(note, RULES, token)
        labels = [0] * len(mimic.LABELS)
        labels[PNEUMONIA] = int(positive)
        split = "train" if i % 4 else "val"
        rows.append(dataclasses.replace(
            P.ProbeRow(P.rank(f"d{i}"), f"d{i}", split, P.hashed_terms(P.marker_as_word(filtered, token)),
                       P.hashed_terms(P.without_marker(filtered, token)), None,
                       np.array([rng.gauss(0, 1) for _ in range(4)], P.FEATURES).tobytes(), tuple(labels),
                       (1,) * len(mimic.LABELS)),
            unfiltered=P.hashed_terms(note) if hits else None))
    return rows


@pytest.mark.parametrize("marker", [MARKER, "***", "█"])  # the last two hold no word: they were not seen at all
def test_a_marker_present_only_where_a_finding_was_is_itself_a_label_signal_and_the_probe_shows_it(marker):
    """The evidence for the redaction-marker decision: with a marker, the filtered note predicts the label as well
    as the unfiltered one; deleting the marker brings it to chance, like the structured noise. Whatever the marker's
    spelling."""
    result = P.probe(_rows(800, marker), marker)
    pneumonia = result["labels"]["Pneumonia"]
    assert pneumonia["unfiltered_note"] > 0.99 and pneumonia["filtered_note"] > 0.99
    assert 0.35 < pneumonia["filtered_note_without_marker"] < 0.65 and 0.35 < pneumonia["structured"] < 0.65
    deleted = P.probe(_rows(800, ""), "")["labels"]["Pneumonia"]  # no marker at all: spans simply removed
    assert "filtered_note_without_marker" not in deleted and 0.35 < deleted["filtered_note"] < 0.65
    assert result["labels"]["Atelectasis"]["skipped"].startswith("fewer than 5 of a class: 0 positives in train")


def test_the_probe_is_deterministic_whatever_the_row_order():
    rows = _rows(300, MARKER, seed=3)
    first = json.dumps(P.probe(rows, MARKER), sort_keys=True)
    assert json.dumps(P.probe(list(reversed(rows)), MARKER), sort_keys=True) == first
    assert json.dumps(P.probe(random.Random(1).sample(rows, len(rows)), MARKER), sort_keys=True) == first


def test_fits_dealt_round_robin_give_every_worker_a_like_share_of_each_input():
    """The local runner deals the fits to its workers in list order; a note's sparse fit costs over ten times a
    structured one, so each worker must get its share of every input, not whole inputs."""
    tasks = P.fit_tasks(MARKER)
    assert sorted(tasks) == sorted((i, name) for i in range(len(mimic.LABELS)) for name in P.INPUTS)
    for workers in (2, 3, 4):
        for k in range(workers):
            per_input = [sum(name == wanted for _, name in tasks[k::workers]) for wanted in P.INPUTS]
            assert all(abs(n - len(mimic.LABELS) / workers) < 1 for n in per_input), (workers, k, per_input)


@dataclasses.dataclass(frozen=True)
class FakeRecord:
    dicom_id: str
    split: str
    note: str
    features: tuple = (1.0, 2.0)
    features_missing: tuple = (0, 0)
    labels_binary: tuple = (0,) * len(mimic.LABELS)
    labels_mask: tuple = (1,) * len(mimic.LABELS)


def test_beam_transform_subsamples_by_hash_and_joins_the_unfiltered_terms():
    """Every note reads "[REDACTED], cough"; only the unfiltered terms (joined by dicom_id) say which was "PNA"."""
    labels = [tuple(int(i % 2 and n == PNEUMONIA) for n in range(len(mimic.LABELS))) for i in range(150)]
    records = [FakeRecord(f"d{i}", ("train", "val", "test")[i % 3], f"Chief complaint: {MARKER}, cough.",
                          labels_binary=labels[i]) for i in range(150)]
    unfiltered = [(r.dicom_id, P.hashed_terms("Chief complaint: " + ("PNA" if i % 2 else "SOB") + ", cough."))
                  for i, r in enumerate(records)]
    rows = [dataclasses.replace(P.probe_row(r, MARKER), unfiltered=dict(unfiltered)[r.dicom_id]) for r in records]
    picked = [r for split, n in (("train", 30), ("val", 20))
              for r in sorted((r for r in rows if r.split == split), key=lambda r: r.rank)[:n]]
    expected = P.probe(picked, MARKER)
    pneumonia = expected["labels"]["Pneumonia"]
    assert pneumonia["unfiltered_note"] == 1.0 and pneumonia["filtered_note"] == 0.5 == pneumonia["structured"]
    assert expected["n_train"] == 30 and expected["n_val"] == 20 and expected["redaction_token"] == MARKER

    def check(results):
        assert results == [expected]  # the smallest sha256 ranks of each split, with their unfiltered terms

    with test_pipeline() as p:
        out = ((p | "Records" >> beam.Create(records), p | "Unfiltered" >> beam.Create(unfiltered))
               | P.LeakageProbe(MARKER, max_train=30, max_val=20))
        assert_that(out, check)
