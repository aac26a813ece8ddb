"""Rejects and counters: how every input row and image is accounted for.

Each stage's DoFn yields its main output plus two tagged outputs: ``rejects`` (one JSON-able dict per bad row or
image, with a stable reason code) and ``events`` (``(counter_name, n)`` pairs). Events are summed into
``metadata.json`` by the pipeline itself, so the counts are data (exact on every runner); the same increments go to
Beam ``Metrics`` for live monitoring. Rejects never carry note text or free-text values.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics

NAMESPACE = "mimic_cxr_ed"
REJECTS = "rejects"
EVENTS = "events"
REJECT_FIELDS = ("stage", "reason", "subject_id", "study_id", "dicom_id", "detail")
PROGRESS_SECONDS = 10.0  # at most one progress line per stage and interval, per worker process
PROGRESS_STAGES = {"rows_read/cxr_metadata": "metadata rows read", "images_kept_view": "kept-view images",
                   "images_linked": "images linked to a stay", "notes_tokenized": "notes tokenised",
                   "matched": "records written"}
_log = logging.getLogger("beam_pipeline.progress")
_progress: dict[str, list[float]] = {}  # stage -> [count, first seen, last logged]
_progress_lock = threading.Lock()


def _tick(name: str, n: int) -> None:
    """Log '<stage>: N (R/s)' now and then while a job runs: counts and rates only, never row contents."""
    now = time.monotonic()
    with _progress_lock:
        state = _progress.setdefault(name, [0, now, now])
        state[0] += n
        if now - state[2] < PROGRESS_SECONDS:
            return
        state[2] = now
        total, elapsed = state[0], max(now - state[1], 1e-9)
    _log.info("progress: %s %d (%.1f/s)", PROGRESS_STAGES[name], total, total / elapsed)


def reset_progress() -> None:
    """Start the progress counts afresh (a process may run several jobs, e.g. tests or a notebook)."""
    with _progress_lock:
        _progress.clear()


def count(name: str, n: int = 1, counter: str = "") -> tuple[str, int]:
    """Count ``n`` of ``name``: a Beam counter now (named ``counter`` when ``name`` holds words from the data, which
    counter names must not: the Dataflow console shows them to every job viewer), and the (name, n) event to be
    summed into metadata.json."""
    Metrics.counter(NAMESPACE, counter or name).inc(n)
    if name in PROGRESS_STAGES:
        _tick(name, n)
    return name, n


def event(name: str, n: int = 1, counter: str = "") -> beam.pvalue.TaggedOutput:
    """``count`` as the ``events`` output of a multi-output DoFn."""
    return beam.pvalue.TaggedOutput(EVENTS, count(name, n, counter))


def reject(stage: str, reason: str, *, subject_id: Any = None, study_id: Any = None, dicom_id: Any = None,
           detail: str = "", counter: str | None = None) -> Iterable[beam.pvalue.TaggedOutput]:
    """Emit one reject row and count it as ``rejected/<stage>/<reason>`` (plus ``counter`` if given)."""
    row = dict(zip(REJECT_FIELDS, (stage, reason, subject_id, study_id, dicom_id, detail)))
    yield beam.pvalue.TaggedOutput(REJECTS, row)
    yield event(f"rejects/{stage}/{reason}")
    if counter:
        yield event(counter)


class CountWritten(beam.DoFn):
    """The last step before the sinks: every record reaching it is written, so it is counted here as ``matched``
    and per split (earlier stages may still reject), with what the cohort's funnel reports of written records
    (``record.written_events()``, e.g. label status, notes redacted)."""

    def process(self, record):
        yield event("matched")
        yield event(f"per_split/{record.split}")
        for item in record.written_events():  # a name, or (name, n[, counter])
            yield event(*item) if isinstance(item, tuple) else event(item)
        yield record


def sum_events(pairs: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Fold (name, n) events into a sorted {name: total} dict."""
    totals: dict[str, int] = {}
    for name, n in pairs:
        totals[name] = totals.get(name, 0) + n
    return dict(sorted(totals.items()))
