"""CheXpert labels of a study: raw values plus binary targets and a mask under the uncertain policy.

Order is ``mimic.LABELS`` (the file's column order). Raw: 1.0 positive, 0.0 negative, -1.0 uncertain, NaN blank
(not mentioned). Binary/mask: positive -> 1/1, negative and blank -> 0/1 (not mentioned counts as negative, as in
CheXpert training), uncertain -> 0/1 (zeros), 1/1 (ones) or -1/0 (ignore).

A target that is not valid (mask 0) is stored as ``NO_TARGET`` (-1), never as 0: a user who forgets the mask gets
a target no binary loss accepts quietly (binary cross-entropy on -1 runs negative), not a silent negative. A study
without a label row, or whose row is entirely blank (the labeller found nothing to label), is *unlabelled*: all
targets -1, mask all 0 and status ``no_label_row`` / ``all_blank`` (``labels/present`` = 0 in the records), never
negative. Values other than 1, 0, -1 or blank never get here: the row is rejected when it is read
(``mimic.LABEL_VALUE``) and so is every image of its study (transforms/join.py), never written as unlabelled.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from beam_pipeline import mimic

NO_LABEL_ROW = "no_label_row"
ALL_BLANK = "all_blank"
LABELED = "labeled"
STATUSES = (LABELED, ALL_BLANK, NO_LABEL_ROW)
NO_TARGET = -1
UNCERTAIN = {"zeros": (0, 1), "ones": (1, 1), "ignore": (NO_TARGET, 0)}
_KNOWN = {1.0: (1, 1), 0.0: (0, 1)}


def label_vectors(row: Mapping[str, Any] | None, policy: str) -> tuple[list[float], list[int], list[int], str]:
    """(raw, binary, mask, status) for one study from a typed CheXpert row (values 1, 0, -1 or None).
    ``binary`` is 1 or 0 where ``mask`` is 1 and NO_TARGET (-1) where it is 0."""
    raw = [math.nan if row is None or row.get(name) is None else float(row[name]) for name in mimic.LABELS]
    if row is None or all(math.isnan(v) for v in raw):
        return (raw, [NO_TARGET] * len(mimic.LABELS), [0] * len(mimic.LABELS),
                NO_LABEL_ROW if row is None else ALL_BLANK)
    binary, mask = [], []
    for value in raw:
        pair = (0, 1) if math.isnan(value) else UNCERTAIN[policy] if value == -1.0 else _KNOWN[value]
        binary.append(pair[0])
        mask.append(pair[1])
    return raw, binary, mask, LABELED
