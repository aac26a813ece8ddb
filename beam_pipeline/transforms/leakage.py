"""Label-agnostic leakage filter: redact what in a pseudo-note reveals a finding or imaging results.

The same rules run on every note and the labels are never an input, so what survives cannot encode the label (the
original pipeline chose patterns from each record's own positive labels). Rules (``resources/leakage_rules.json``,
documented there) are regular expressions matched case-insensitively at word boundaries, so "ct" never fires inside
"activity" and "98.4" is never split. Only the matching span is replaced by the redaction token; overlapping or
adjacent spans become one token. The unfiltered note never reaches a training record: an opt-in audit output keeps
it, clearly marked. For the leakage probe (``probe.py``) a redacted note's unfiltered text leaves only as hashed
bag-of-words buckets (``UNFILTERED_TERMS``), which nothing writes.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from importlib import resources

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import accounting
from beam_pipeline.transforms.probe import UNFILTERED_TERMS, hashed_terms
from beam_pipeline.transforms.records import Record

AUDIT = "audit"
AUDIT_WARNING = "UNFILTERED NOTE: audit only, never use for training"
_WORD_CHAR = "A-Za-z0-9"


@dataclasses.dataclass(frozen=True)
class Rule:
    id: str
    finding: str | None
    pattern: re.Pattern
    except_after: re.Pattern | None
    except_before: re.Pattern | None = None


def _compile(entry: dict) -> Rule:
    alternation = "|".join(f"(?:{p})" for p in entry["patterns"])
    pattern = re.compile(rf"(?<![{_WORD_CHAR}])(?:{alternation})(?![{_WORD_CHAR}])", re.IGNORECASE)
    words = entry.get("except_after") or []
    except_after = re.compile(rf"(?:^|[^{_WORD_CHAR}])(?:{'|'.join(re.escape(w) for w in words)})\s+$",
                              re.IGNORECASE) if words else None
    words = entry.get("except_before") or []
    except_before = re.compile(rf"\s+(?:of\s+)?(?:the\s+)?(?:(?:l|r|left|right|bilat|bilateral)\s+)?"
                               rf"(?:{'|'.join(re.escape(w) for w in words)})(?![{_WORD_CHAR}])",
                               re.IGNORECASE) if words else None
    return Rule(entry["id"], entry.get("finding"), pattern, except_after, except_before)


def rules_document(extra_path: str = "") -> dict:
    """The packaged rules, with the rules of ``extra_path`` (local or gs://) replacing same-id rules or added."""
    document = json.loads(resources.files("beam_pipeline.resources").joinpath("leakage_rules.json").read_text())
    if extra_path:
        with FileSystems.open(extra_path) as f:
            extra = json.loads(f.read().decode("utf-8"))
        by_id = {rule["id"]: rule for rule in document["rules"]}
        by_id.update({rule["id"]: rule for rule in extra["rules"]})
        document = {**document, "rules": list(by_id.values())}
    return document


def compile_rules(entries: list[dict]) -> tuple[Rule, ...]:
    return tuple(_compile(entry) for entry in entries)


def load_rules(extra_path: str = "") -> tuple[Rule, ...]:
    return compile_rules(rules_document(extra_path)["rules"])


def redact(text: str, rules: tuple[Rule, ...], token: str) -> tuple[str, dict[str, int]]:
    """(filtered text, hits per rule id). Deterministic and independent of anything but the text and the rules."""
    spans, hits = [], collections.Counter()
    for rule in rules:
        for match in rule.pattern.finditer(text):
            if rule.except_after and rule.except_after.search(text[max(0, match.start() - 40):match.start()]):
                continue
            if rule.except_before and rule.except_before.match(text, match.end()):
                continue
            spans.append((match.start(), match.end()))
            hits[rule.id] += 1
    if not spans:
        return text, {}
    merged = []
    for start, end in sorted(spans):
        if merged and (start <= merged[-1][1] or not text[merged[-1][1]:start].strip()):
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    pieces, cursor = [], 0
    for start, end in merged:
        pieces += [text[cursor:start], token]
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces), dict(hits)


class FilterLeakage(beam.DoFn):
    """Record -> the same record with its note and retrieval query filtered; counts hits per rule in the note;
    optional audit rows; (dicom_id, hashed terms of the unfiltered note) of every redacted note for the probe.
    ``entries`` are the rules read once at launch (the ones metadata.json records): workers never reopen
    --leakage_rules, which may have changed or gone since."""

    def __init__(self, entries: list[dict], token: str, audit: bool):
        self._entries = entries
        self._token = token
        self._audit = audit
        self._rules: tuple[Rule, ...] = ()

    def setup(self):
        self._rules = compile_rules(self._entries)

    def process(self, record: Record):
        filtered, hits = redact(record.note, self._rules, self._token)
        for rule_id, n in hits.items():
            yield accounting.event(f"leakage/{rule_id}", n)
        if hits:
            yield accounting.event("leakage_notes_redacted")
            yield beam.pvalue.TaggedOutput(UNFILTERED_TERMS, (record.dicom_id, hashed_terms(record.note)))
            if self._audit:
                yield beam.pvalue.TaggedOutput(AUDIT, {
                    "warning": AUDIT_WARNING, "dicom_id": record.dicom_id, "subject_id": record.subject_id,
                    "hits": hits, "original_note": record.note, "filtered_note": filtered})
        # The query is a subset of the note's facts (hits counted once), and its spans are deleted, not marked: a
        # marker would pull the search towards chest-finding passages ("Cough, [REDACTED]" retrieved contusion
        # and infiltrate passages that "Cough" does not), telling through them what was redacted.
        query = " ".join(redact(record.query, self._rules, "")[0].split())
        yield dataclasses.replace(record, note=filtered, query=query, redacted=bool(hits))
