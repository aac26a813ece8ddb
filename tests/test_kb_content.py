"""Content checks for the retrieval knowledge base: beam_pipeline/resources/kb/passages.jsonl."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

KB_PATH = Path(__file__).resolve().parents[1] / "beam_pipeline" / "resources" / "kb" / "passages.jsonl"

KEYS = {"id", "title", "text", "source", "topic"}
TOPICS = {
    "presentation",
    "chest_condition",
    "vital_signs",
    "ed_medication",
    "home_medication",
    "triage",
    "imaging_basics",
    "devices",
}
MIN_PASSAGES = 160
MIN_PER_TOPIC = 8
MIN_WORDS, MAX_WORDS = 35, 90
MIN_SENTENCES, MAX_SENTENCES = 2, 4
MAX_TITLE_CHARS = 60

# A sentence ends at . ! or ? followed by whitespace and a capital letter. Decimals ("98.6", "0.5") never
# split because the period is followed by a digit, not by whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
# Whole-word only: "nan" inside "pregnancy" or "malignant" is fine, a stray pandas NaN/None is not.
_MISSING_TOKEN = re.compile(r"\b(?:none|nan|null)\b", re.IGNORECASE)


def split_sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def _lines() -> list[str]:
    return KB_PATH.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def passages() -> list[dict]:
    return [json.loads(line) for line in _lines()]


def _corpus(passages: list[dict]) -> str:
    return "\n".join(f"{p['title']} {p['text']}" for p in passages).lower()


def test_sentence_splitter_ignores_decimals():
    assert len(split_sentences("Fever is 38.0 °C or 100.4 °F. Ratios above 0.5 suggest an exudate.")) == 2
    assert len(split_sentences("A ratio of 0.5 to 0.7. Values above 0.9 matter. Rates below 150 rarely do.")) == 3
    assert len(split_sentences("One sentence with 98.6 °F and 1.5 points only.")) == 1


def test_file_exists_is_utf8_and_has_enough_lines():
    raw = KB_PATH.read_bytes()
    raw.decode("utf-8")  # raises if not UTF-8
    assert raw.endswith(b"\n")
    lines = _lines()
    assert len(lines) >= MIN_PASSAGES
    assert all(line.strip() for line in lines), "blank lines are not allowed"


def test_every_line_is_a_json_object_with_exactly_the_five_keys(passages):
    for p in passages:
        assert isinstance(p, dict)
        assert set(p) == KEYS, p.get("id")
        for key in KEYS:
            assert isinstance(p[key], str) and p[key].strip() == p[key] and p[key], (p.get("id"), key)


def test_ids_are_unique_and_consecutive(passages):
    ids = [p["id"] for p in passages]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"kb-\d{4}", i) for i in ids)
    assert ids == [f"kb-{n:04d}" for n in range(1, len(ids) + 1)]


def test_text_length_and_sentence_count(passages):
    for p in passages:
        words = len(p["text"].split())
        assert MIN_WORDS <= words <= MAX_WORDS, (p["id"], words)
        sentences = split_sentences(p["text"])
        assert MIN_SENTENCES <= len(sentences) <= MAX_SENTENCES, (p["id"], len(sentences))
        assert p["text"].rstrip()[-1] in ".!?", p["id"]


def test_titles_are_short(passages):
    for p in passages:
        assert len(p["title"]) <= MAX_TITLE_CHARS, p["id"]


def test_sources_are_non_empty(passages):
    for p in passages:
        assert len(p["source"]) >= 5, p["id"]


def test_topics_are_allowed_and_each_has_enough_passages(passages):
    counts = Counter(p["topic"] for p in passages)
    assert set(counts) <= TOPICS, set(counts) - TOPICS
    for topic in TOPICS:
        assert counts[topic] >= MIN_PER_TOPIC, (topic, counts[topic])


def test_no_duplicate_titles_or_texts(passages):
    titles = Counter(p["title"].casefold() for p in passages)
    texts = Counter(" ".join(p["text"].split()).casefold() for p in passages)
    assert not [t for t, c in titles.items() if c > 1]
    assert not [t for t, c in texts.items() if c > 1]


def test_no_missing_value_artifacts(passages):
    for p in passages:
        for key in ("title", "text", "source"):
            assert not _MISSING_TOKEN.search(p[key]), (p["id"], key)


@pytest.mark.parametrize(
    "term",
    [
        "pneumonia",
        "heart failure",
        "pulmonary embolism",
        "pneumothorax",
        "pleural effusion",
        "copd",
        "asthma",
        "acute coronary syndrome",
        "aortic dissection",
        "sepsis",
        "rib fracture",
        "tachycardia",
        "fever",
        "furosemide",
        "albuterol",
        "ceftriaxone",
        "aspirin",
        "nitroglycerin",
        "ondansetron",
        "morphine",
        "metformin",
        "anticoagulant",
        "emergency severity index",
        "endotracheal tube",
    ],
)
def test_coverage_terms_are_present(passages, term):
    assert term in _corpus(passages)


def test_oxygenation_coverage(passages):
    corpus = _corpus(passages)
    assert "hypoxemia" in corpus and "oxygen saturation" in corpus
    assert "88 to 92 percent" in corpus  # COPD / hypercapnic-risk saturation target


@pytest.mark.parametrize(
    ("topic", "terms"),
    [
        ("ed_medication", ["furosemide", "albuterol", "ceftriaxone", "aspirin", "ondansetron", "morphine"]),
        ("home_medication", ["metformin", "warfarin", "apixaban", "lisinopril"]),
        ("chest_condition", ["pneumothorax", "pleural effusion", "pulmonary embolism", "heart failure"]),
        ("vital_signs", ["tachycardia", "fever", "oxygen saturation", "qsofa"]),
    ],
)
def test_key_terms_live_under_the_right_topic(passages, topic, terms):
    corpus = _corpus([p for p in passages if p["topic"] == topic])
    for term in terms:
        assert term in corpus, (topic, term)
