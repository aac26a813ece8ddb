"""Leakage probe: how much a simple text classifier learns about each CheXpert label from the notes we write.

For every label, an L2-regularised logistic regression is fitted on the train split and scored (AUROC) on the val
split, on four inputs of the same records:

* ``filtered_note``: the note as written (leakage-filtered, with the redaction marker where a span was removed);
* ``filtered_note_without_marker``: the same note with every redaction marker deleted (only when the marker is not
  empty): if it scores lower than ``filtered_note``, the marker itself tells the classifier a finding word was there;
* ``unfiltered_note``: the note before the filter. It is never written anywhere: ``FilterLeakage`` hands the probe
  only the hashed bag-of-words of a note it redacted (``UNFILTERED_TERMS``), keyed by dicom_id, and the probe keeps
  nothing but the AUROC;
* ``structured``: the structured features only (``features/values`` and ``features/missing``, standardised).

A filter that works brings ``filtered_note`` down from ``unfiltered_note`` toward ``structured`` (what the ED data
says about the label without any note wording); what remains above ``structured`` is signal carried by words the
filter keeps (chief complaints such as "fever, cough" legitimately predict pneumonia).

Method (fixed, so the same records give the same numbers byte for byte): notes are lower-cased and split into runs
of letters and digits; every unigram and bigram (two words joined by one space) is hashed with CRC-32 of its UTF-8
bytes modulo 2^18, and a note is the binary set of its buckets. The model is logistic regression with an intercept
and an L2 penalty of 1 on the weights (C = 1), fitted by Newton's method with conjugate-gradient steps and a
backtracking line search (numpy, scipy's sparse products; buckets present in exactly the same train notes merged
into one column, the columns centred on their train means: both change the path, not the optimum, ``term_designs``);
AUROCs are rounded to 4 decimals. Targets are ``labels/binary`` where ``labels/mask`` is 1; a label is skipped, with
the reason, when train or val has fewer than ``MIN_CLASS`` positives or negatives. AUROC is the Mann-Whitney
statistic with ties counted half.

Scale: the probe uses a deterministic subsample, the ``MAX_TRAIN`` train and ``MAX_VAL`` val records with the
smallest sha256("probe:" + dicom_id) (``Top.PerKey``, so no worker holds more than that); the label x input
classifiers (up to 56) are fitted in parallel, each worker reading the subsample as a side input.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import zlib

import apache_beam as beam
import numpy as np
from scipy import sparse

from beam_pipeline import mimic

UNFILTERED_TERMS = "probe_unfiltered"  # FilterLeakage output: (dicom_id, hashed terms) of notes it changed
BUCKETS = 2 ** 18
MAX_TRAIN = 20_000
MAX_VAL = 5_000
MIN_CLASS = 5
L2 = 1.0
NEWTON_STEPS = 30
CG_STEPS = 60
INPUTS = ("filtered_note", "filtered_note_without_marker", "unfiltered_note", "structured")
# A row's terms and features are packed little-endian arrays: 4 bytes a term and 8 a feature where a tuple of
# Python numbers takes about 36 and 32, and every worker holds the whole subsample (up to 25,000 rows).
TERMS = np.dtype("<u4")
FEATURES = np.dtype("<f8")
_WORD = re.compile(r"[a-z0-9]+")
MARKER_WORD = "redactionmarker"  # how a marker without letters or digits is hashed (marker_as_word)


def hashed_terms(text: str) -> bytes:
    """Sorted distinct buckets of the text's unigrams and bigrams (CRC-32 of the UTF-8 term mod 2^18), packed as
    ``TERMS``."""
    words = _WORD.findall(text.lower())
    terms = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
    return np.array(sorted({zlib.crc32(term.encode("utf-8")) % BUCKETS for term in terms}), TERMS).tobytes()


def without_marker(text: str, token: str) -> str:
    return text.replace(token, " ") if token else text


def marker_as_word(text: str, token: str) -> str:
    """The text with a marker that holds no ASCII letter or digit (``***``, ``█``) spelled as one word: the terms
    are words only, and the marker must stay a feature whatever its spelling (README "The redaction marker")."""
    return text.replace(token, f" {MARKER_WORD} ") if token and not _WORD.search(token.lower()) else text


def rank(dicom_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"probe:{dicom_id}".encode("utf-8")).digest()[:8], "big")


@dataclasses.dataclass(frozen=True)
class ProbeRow:
    """What the probe keeps of one record: no text, only hashed terms, features and labels."""
    rank: int
    dicom_id: str
    split: str
    filtered: bytes  # hashed_terms of marker_as_word(note)
    without_marker: bytes
    unfiltered: bytes | None  # None: the note's own terms are ``filtered`` (the filter did not change it)
    structured: bytes  # FEATURES: features/values then features/missing
    labels: tuple[int, ...]
    mask: tuple[int, ...]


def probe_row(record, token: str) -> ProbeRow:
    """The record's probe row. Its unfiltered terms are attached later for notes the filter changed; a note that
    already held a wordless marker gets its own here, as its filtered terms spell that marker as a word."""
    marked = marker_as_word(record.note, token)
    return ProbeRow(rank(record.dicom_id), record.dicom_id, record.split, hashed_terms(marked),
                    hashed_terms(without_marker(record.note, token)),
                    None if marked == record.note else hashed_terms(record.note),
                    np.array([*record.features, *record.features_missing], FEATURES).tobytes(),
                    tuple(record.labels_binary), tuple(record.labels_mask))


# --- model ---------------------------------------------------------------------------------------------------

class Design:
    """A design matrix (scipy CSR for hashed terms, a dense array for the structured features) with its
    transpose kept ready: the Newton-CG fit is a few hundred products with each.

    ``center`` (the train column means, 0 for the intercept) makes the products those of the centred matrix
    X - 1 center^T without storing it (X stays sparse). As the intercept is not penalised, centring only moves it:
    the term weights and predictions are those of the uncentred problem; but it no longer competes with the terms
    every note has, which left the Hessian so ill-conditioned that conjugate gradients hit their cap at every Newton
    step (8,591 records: 13-17 Newton steps against 7-9 centred, the fits 1.6x faster)."""

    def __init__(self, matrix, center: np.ndarray | None = None):
        self.matrix, self.center = matrix, center
        self.transposed = matrix.T.tocsr() if sparse.issparse(matrix) else matrix.T
        self.n, self.d = matrix.shape

    def dot(self, w: np.ndarray) -> np.ndarray:
        z = self.matrix @ w
        return z if self.center is None else z - self.center @ w

    def tdot(self, z: np.ndarray) -> np.ndarray:
        g = self.transposed @ z
        return g if self.center is None else g - self.center * z.sum()


def term_designs(train: list[bytes], val: list[bytes]) -> tuple[Design, Design]:
    """Term matrices over the buckets seen in train (a bucket only in val has weight 0 anyway), buckets present in
    the same train notes merged (``merged_columns``), the intercept as the last column, both centred on the train
    column means."""
    vocab = np.unique(_flat(train)[1])

    def matrix(notes):
        rows, buckets = _flat(notes)
        at = np.minimum(np.searchsorted(vocab, buckets), max(len(vocab) - 1, 0))
        known = vocab[at] == buckets if len(vocab) else np.zeros(len(buckets), bool)
        return sparse.csr_matrix((np.ones(int(known.sum())), (rows[known], at[known])), shape=(len(notes), len(vocab)))

    train_terms = matrix(train)
    merge = merged_columns(train_terms)

    def design(terms):
        return sparse.hstack([terms @ merge, np.ones((terms.shape[0], 1))], format="csr")

    train_matrix = design(train_terms)
    center = np.asarray(train_matrix.sum(axis=0)).ravel() / max(len(train), 1)
    center[-1] = 0.0
    return Design(train_matrix, center), Design(design(matrix(val)), center)


def merged_columns(train_terms) -> sparse.csr_matrix:
    """A (buckets x groups) matrix that sums the buckets present in exactly the same train notes, over sqrt(group
    size), into one column. An exact reparameterisation: under the L2 penalty the k identical columns of a group
    get equal weights w, and the merged column sqrt(k) x with weight sqrt(k) w has the same predictions and penalty;
    a val note is scored by w times how many of the group's buckets it has, as before. Template words always come
    together, so on the sample's notes 5,375 buckets make 4,891 groups but the non-zeros fall by 39 %, and the note
    fits are 1.46x faster (8,591 records). Groups are ordered by their first bucket."""
    by_note = train_terms.tocsc()
    by_note.sort_indices()
    group_of: dict[bytes, int] = {}
    groups = np.array([group_of.setdefault(by_note.indices[a:b].tobytes(), len(group_of))
                       for a, b in zip(by_note.indptr[:-1], by_note.indptr[1:])], np.int64)
    sizes = np.bincount(groups, minlength=len(group_of))
    return sparse.csr_matrix((1.0 / np.sqrt(sizes[groups]), (np.arange(len(groups)), groups)),
                             shape=(len(groups), len(group_of)))


def _flat(notes: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(row index, bucket) of every term of every note."""
    lengths = np.fromiter((len(note) // TERMS.itemsize for note in notes), np.int64, count=len(notes))
    return np.repeat(np.arange(len(notes)), lengths), np.frombuffer(b"".join(notes), TERMS).astype(np.int64)


def dense_designs(train: np.ndarray, val: np.ndarray) -> tuple[Design, Design]:
    """Standardised (train mean and standard deviation) dense features, the intercept as the last column."""
    mean = train.mean(axis=0) if len(train) else 0.0
    std = train.std(axis=0) if len(train) else 1.0
    std = np.where(std > 0, std, 1.0)

    def design(x):
        return Design(np.hstack([(x - mean) / std, np.ones((len(x), 1))]))

    return design(train), design(val)


def _loss(design: Design, y: np.ndarray, w: np.ndarray, penalty: np.ndarray) -> float:
    z = design.dot(w)
    return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(penalty * w * w))


def fit_logistic(design: Design, y: np.ndarray, l2: float = L2) -> np.ndarray:
    """Weights (intercept last) minimising the logistic loss + l2/2 ||w||^2 (intercept not penalised)."""
    penalty = np.full(design.d, l2)
    penalty[-1] = 0.0
    w = np.zeros(design.d)
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-design.dot(w)))
        grad = design.tdot(p - y) + penalty * w
        if np.sqrt(grad @ grad) <= 1e-8 * max(1.0, len(y)):
            break
        s = p * (1.0 - p) + 1e-12

        def hess(v):
            return design.tdot(s * design.dot(v)) + penalty * v + 1e-10 * v

        step, r = np.zeros(design.d), -grad  # conjugate gradient for H step = -grad
        direction, rr = r.copy(), r @ r
        for _ in range(CG_STEPS):
            hd = hess(direction)
            alpha = rr / (direction @ hd)
            step += alpha * direction
            r = r - alpha * hd
            rr_next = r @ r
            if np.sqrt(rr_next) <= 1e-3 * np.sqrt(grad @ grad):
                break
            direction = r + (rr_next / rr) * direction
            rr = rr_next
        loss, t, slope = _loss(design, y, w, penalty), 1.0, grad @ step
        while t > 1e-8 and _loss(design, y, w + t * step, penalty) > loss + 1e-4 * t * slope:
            t *= 0.5
        w = w + t * step
    return w


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (ties count half)."""
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    start = 0
    while start < len(score):  # average ranks over ties
        end = start
        while end + 1 < len(score) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    positives = int(y.sum())
    negatives = len(y) - positives
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


# --- the probe -----------------------------------------------------------------------------------------------

METHOD = {
    "classifier": f"logistic regression, intercept + L2 penalty {L2} on the weights, Newton-CG (numpy, scipy "
                  "sparse), fitted on train, AUROC on val (labels/binary where labels/mask == 1)",
    "text_features": f"binary hashed unigrams and bigrams: runs of [a-z0-9] in the lower-cased note, CRC-32 of the "
                     f"UTF-8 term mod {BUCKETS}",
    "structured_features": "features/values and features/missing, standardised with train mean and std",
    "inputs": {
        "filtered_note": "the note as written (leakage-filtered, with the redaction marker)",
        "filtered_note_without_marker": "the written note with every redaction marker deleted",
        "unfiltered_note": "the note before the leakage filter (never written; only its AUROC is kept)",
        "structured": "the structured features only",
    },
    "subsample": f"at most {MAX_TRAIN} train and {MAX_VAL} val records: those with the smallest "
                 "sha256('probe:' + dicom_id)",
    "min_class": f"a label needs at least {MIN_CLASS} positives and {MIN_CLASS} negatives in train and in val",
    "how_to_read": "filtered_note near structured: the notes say little beyond the structured data; near "
                   "unfiltered_note: the filter removed little of what predicts the label; filtered_note above "
                   "filtered_note_without_marker: the redaction marker itself reveals a finding",
}


def prepared(rows: list[ProbeRow]) -> list[ProbeRow]:
    """Rows in their fixed order (so the order they arrive in never matters)."""
    return sorted(rows, key=lambda r: (r.rank, r.dicom_id))


def inputs_for(token: str) -> list[str]:
    return [name for name in INPUTS if token or name != "filtered_note_without_marker"]


def _label_rows(rows: list[ProbeRow], index: int):
    """(train rows, val rows, y_train, y_val) of the records whose label ``index`` is valid."""
    tr = [r for r in rows if r.split == "train" and r.mask[index] == 1]
    va = [r for r in rows if r.split == "val" and r.mask[index] == 1]
    return (tr, va, np.array([r.labels[index] for r in tr], np.float64),
            np.array([r.labels[index] for r in va], np.int64))


def _entry(y_train: np.ndarray, y_val: np.ndarray) -> dict:
    """Counts of one label, and why it is skipped when a class is too rare."""
    entry = {"n_train": len(y_train), "n_val": len(y_val), "positives_train": int(y_train.sum()),
             "positives_val": int(y_val.sum())}
    short = [f"{n} {kind} in {split}" for split, y in (("train", y_train), ("val", y_val))
             for kind, n in (("positives", int(y.sum())), ("negatives", int(len(y) - y.sum()))) if n < MIN_CLASS]
    if short:
        entry["skipped"] = f"fewer than {MIN_CLASS} of a class: " + ", ".join(short)
    return entry


def label_entry(rows: list[ProbeRow], index: int) -> dict:
    return _entry(*_label_rows(rows, index)[2:])


def fit_one(rows: list[ProbeRow], index: int, name: str) -> tuple[int, str, float | None]:
    """(label index, input, val AUROC) of one classifier; None when the label is skipped."""
    tr, va, y_train, y_val = _label_rows(rows, index)
    if "skipped" in _entry(y_train, y_val):
        return index, name, None
    train_x, val_x = _designs(name, tr, va)
    return index, name, round(auroc(y_val, val_x.dot(fit_logistic(train_x, y_train))), 4)


def fit_tasks(token: str) -> list[tuple[int, str]]:
    """Every (label index, input) classifier, input by input: the local runner deals them to its workers
    round-robin, so each gets a like share of every input (a note's sparse fit costs over ten times a structured
    one; listed label by label, one of two workers drew two note inputs' fits, the other one and the cheap ones)."""
    return [(i, name) for name in inputs_for(token) for i in range(len(mimic.LABELS))]


def assemble(rows: list[ProbeRow], fits: list[tuple[int, str, float | None]], token: str) -> dict:
    """The ``leakage_probe`` block of metadata.json from the rows and every (label, input) fit."""
    scores = {(index, name): value for index, name, value in fits}
    labels = {}
    for index, label in enumerate(mimic.LABELS):
        entry = label_entry(rows, index)
        if "skipped" not in entry:
            entry.update({name: scores[index, name] for name in inputs_for(token)})
        labels[label] = entry
    return {"method": METHOD, "redaction_token": token, "min_class": MIN_CLASS,
            "n_train": sum(r.split == "train" for r in rows), "n_val": sum(r.split == "val" for r in rows),
            "inputs": inputs_for(token), "labels": labels}


def probe(rows: list[ProbeRow], token: str) -> dict:
    """The whole probe in one process (the pipeline runs the same fits in parallel); order of ``rows`` is
    irrelevant."""
    rows = prepared(rows)
    return assemble(rows, [fit_one(rows, *task) for task in fit_tasks(token)], token)


def _designs(name: str, train: list[ProbeRow], val: list[ProbeRow]) -> tuple[Design, Design]:
    if name == "structured":
        return dense_designs(_features(train), _features(val))
    pick = {"filtered_note": lambda r: r.filtered, "filtered_note_without_marker": lambda r: r.without_marker,
            "unfiltered_note": lambda r: r.filtered if r.unfiltered is None else r.unfiltered}[name]
    return term_designs([pick(r) for r in train], [pick(r) for r in val])


def _features(rows: list[ProbeRow]) -> np.ndarray:
    width = len(rows[0].structured) // FEATURES.itemsize if rows else 0
    return np.frombuffer(b"".join(r.structured for r in rows), FEATURES).reshape(len(rows), width).astype(np.float64)


class LeakageProbe(beam.PTransform):
    """(written records, UNFILTERED_TERMS of FilterLeakage) -> one dict, metadata.json's ``leakage_probe``."""

    def __init__(self, token: str, max_train: int = MAX_TRAIN, max_val: int = MAX_VAL):
        super().__init__()
        self._token = token
        self._limits = {"train": max_train, "val": max_val}

    def expand(self, inputs):
        records, unfiltered = inputs
        token, limits = self._token, self._limits
        rows = records | "ProbeRows" >> beam.FlatMap(
            lambda r: [(r.split, probe_row(r, token))] if r.split in limits else [])
        picked = [rows | f"Pick {split}" >> beam.Filter(lambda kv, s=split: kv[0] == s)
                  | f"Smallest {split}" >> beam.combiners.Top.PerKey(n, key=lambda row: (row.rank, row.dicom_id),
                                                                     reverse=True)
                  for split, n in limits.items()]
        keyed = (picked | "Picked" >> beam.Flatten()
                 | "Rows" >> beam.FlatMap(lambda kv: [(row.dicom_id, row) for row in kv[1]]))

        def attach(item):
            _, grouped = item
            for row in grouped["rows"]:
                terms = list(grouped["unfiltered"])
                yield dataclasses.replace(row, unfiltered=terms[0] if terms else row.unfiltered)

        joined = ({"rows": keyed, "unfiltered": unfiltered} | "JoinUnfiltered" >> beam.CoGroupByKey()
                  | "Attach" >> beam.FlatMap(attach))
        rows = beam.pvalue.AsSingleton(joined | "AllRows" >> beam.combiners.ToList()
                                       | "Order" >> beam.Map(prepared))
        fits = (records.pipeline
                | "Classifiers" >> beam.Create(fit_tasks(token))  # Create reshuffles: the fits spread out
                | "Fit" >> beam.Map(lambda task, rows: fit_one(rows, *task), rows=rows))
        return (records.pipeline
                | "Once" >> beam.Create([None])
                | "Assemble" >> beam.Map(lambda _, rows, fits: assemble(rows, fits, token), rows=rows,
                                         fits=beam.pvalue.AsList(fits)))
