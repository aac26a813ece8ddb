"""MedFuse's clinical events: which MIMIC-IV items feed the 17 channels, and the benchmark's value cleaning.

The item map is the packaged ``resources/medfuse/itemid_to_variable.csv`` (see its SOURCE.md). It mixes MIMIC-III
CareVue chart items (ids below 220000) with MetaVision ones and lab items. MIMIC-IV's ``icu/chartevents`` only holds
MetaVision ids (``icu/d_items`` starts at 220001), so ``ITEM_VARIABLES`` and the readers' row filters
(``EVENT_ITEMIDS``) keep the items that can occur in MIMIC-IV, and ``NEVER_IN_MIMIC_IV`` names the variables left
with none: those channels are never observed in a MIMIC-IV build, only imputed.

``clean_value`` re-implements the unit cleaning of ``mimic3benchmark/preprocessing.py`` (YerevaNN mimic3-benchmarks;
MedFuse's copy is ``mimic4extract/mimic3benchmark/preprocessing.py``), function by function, with three deliberate
differences, each noted where it applies:

1. Units come from ``valueuom``. MedFuse's cleaning tests the unit in the ``valuenum`` column (where YerevaNN's
   reads ``VALUEUOM``) and its extraction keeps no unit for chart and lab events
   (``mimic3csv.read_events_table_and_break_up_by_subject``), so none of its unit tests can match on MIMIC-IV; the
   one that matters is height item 226707, recorded in inches, which MedFuse keeps as centimetres.
2. FiO2 is divided by 100 only when above 1 (the line upstream's ``clean_fio2`` itself calls correct); the code that
   built the published benchmark divides every value, turning a fraction already recorded as 0.5 into 0.005.
3. When ``value`` is not a plain number, ``valuenum`` is used: MIMIC-IV 2.x ``hosp/labevents`` writes ``___`` into
   ``value`` whenever a comment is attached, with the number in ``valuenum`` (every glucose 50931 row of the demo);
   upstream reads ``value`` only and would lose them.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
from importlib import resources
from typing import Mapping

from beam_pipeline.transforms import hourly

METAVISION_FIRST_ITEMID = 220000  # MetaVision chart items; MIMIC-IV icu/d_items starts at 220001, lower ids are CareVue


def _read_map() -> list[dict[str, str]]:
    text = resources.files("beam_pipeline.resources").joinpath("medfuse/itemid_to_variable.csv").read_text()
    return list(csv.DictReader(io.StringIO(text)))


def _in_mimic_iv(row: Mapping[str, str]) -> bool:
    return row["table"] == "labevents" or int(row["itemid"]) >= METAVISION_FIRST_ITEMID


_KEPT = [row for row in _read_map() if _in_mimic_iv(row)]

ITEM_VARIABLES: dict[int, str] = {int(row["itemid"]): row["variable"] for row in _KEPT}
"""itemid -> channel, for the items that can occur in MIMIC-IV."""
ITEM_LABELS: dict[int, str] = {int(row["itemid"]): row["label"] for row in _KEPT}
"""itemid -> the map's label (MIMIC-III d_items wording), which some unit rules read."""
EVENT_ITEMIDS: dict[str, frozenset[str]] = {
    table: frozenset(row["itemid"] for row in _KEPT if row["table"] == table) for table in ("chartevents", "labevents")}
"""Table name -> its itemids as raw CSV text, for the readers' row filter (``ReadCsvRows(row_filter=...)``)."""
NEVER_IN_MIMIC_IV: tuple[str, ...] = tuple(
    channel for channel in hourly.CHANNELS if channel not in set(ITEM_VARIABLES.values()))
"""Channels with no MIMIC-IV item (config order): always imputed with their normal value in a MIMIC-IV build."""

# Upstream's test for a numeric text (clean_lab, clean_o2sat): an unsigned decimal, nothing else. ASCII digits only,
# as at read (mimic.py): float() also reads other scripts' digits ("٨٠" is 80), which are not MIMIC values.
_PLAIN_NUMBER = re.compile(r"\d+(\.\d*)?|\.\d+", re.ASCII)
_BLOOD_PRESSURE = re.compile(r"(\d+)/(\d+)", re.ASCII)  # clean_sbp / clean_dbp: "systolic/diastolic"
_CRR = {"Normal <3 secs": "0.0", "Brisk": "0.0", "Abnormal >3 secs": "1.0", "Delayed": "1.0"}  # clean_crr
_KG_PER_LB = 0.453592  # clean_weight's factor


def _number(text: str, valuenum: float | None) -> float | None:
    """``value`` when it is a plain number (upstream reads ``value``), else ``valuenum`` (difference 3)."""
    return float(text) if _PLAIN_NUMBER.fullmatch(text) else valuenum


def clean_value(variable: str, value: str | None, valuenum: float | None, uom: str | None,
                item_label: str) -> float | str | None:
    """One event's value as the discretizer takes it: a number in the channel's unit, or for a categorical channel
    one of its possible values (the config's text); None drops the event (upstream's NaN, dropped by
    ``clean_events``, or a value upstream would crash on). Rules, all from upstream ``preprocessing.py``:

    * Capillary refill rate (``clean_crr``): "Normal <3 secs" / "Brisk" -> "0.0", "Abnormal >3 secs" / "Delayed"
      -> "1.0", anything else None.
    * GCS eye / motor / verbal / total: no cleaning upstream; the text is kept when it is one of the config's
      possible values (MIMIC-IV's "To Speech", "Obeys Commands", "No Response-ETT", ... are listed there, as are the
      CareVue "4 Spontaneously" forms) and None otherwise (upstream's one-hot lookup would raise).
    * Systolic / diastolic BP (``clean_sbp``, ``clean_dbp``): a text holding "/" must read "<digits>/<digits>" and
      gives its first / second number (else None: upstream's regex match would raise); other values as numbers.
    * FiO2 (``clean_fio2``): above 1 and the unit not containing "torr" -> divided by 100 (difference 2).
    * O2 saturation (``clean_o2sat``): <= 1 -> multiplied by 100.
    * Glucose, pH (``clean_lab``): a text that is not a plain number (e.g. "ERROR") -> None.
    * Temperature (``clean_temperature``): >= 79 -> Fahrenheit converted to Celsius. Upstream also tests for "F" in
      the lower-cased unit and label, which can never match, so the threshold is its only working rule and the one
      kept (a Celsius reading in the Fahrenheit item stays Celsius).
    * Weight (``clean_weight``): "oz" in the unit or label -> / 16 then x 0.453592; "lb" -> x 0.453592.
    * Height (``clean_height``): "in" in the unit or label -> x 2.54, rounded to whole cm (half to even, as
      ``np.round``).
    * Heart rate, respiratory rate, mean BP: no cleaning upstream (its discretizer calls ``float(value)``).

    Every numeric channel takes ``value`` when it is a plain unsigned decimal (ASCII digits) and ``valuenum``
    otherwise; with neither the event is dropped. A zero is +0.0: -0.0 (a valuenum) equals it, so the tie rule "the
    larger value" could keep either sign, by arrival order. Outlier removal stays off, as in MedFuse
    (``variable_ranges.csv`` is unused)."""
    c = hourly.CONFIG.index(variable)
    text = (value or "").strip()
    if variable == "Capillary refill rate":
        return _CRR.get(text)
    if hourly.CONFIG.categorical[c]:
        return text if text in hourly.CONFIG.possible_values[c] else None
    if variable in ("Systolic blood pressure", "Diastolic blood pressure") and "/" in text:
        pair = _BLOOD_PRESSURE.fullmatch(text)
        return float(pair.group(1 if variable.startswith("Systolic") else 2)) if pair else None
    number = _number(text, valuenum)
    return None if number is None else _in_unit(variable, number, uom, item_label) + 0.0  # -0.0 + 0.0 is 0.0


def _in_unit(variable: str, number: float, uom: str | None, item_label: str) -> float:
    """A numeric channel's number in its unit (clean_value's FiO2 to height rules)."""
    unit, label = (uom or "").lower(), item_label.lower()
    if variable == "Fraction inspired oxygen" and number > 1.0 and "torr" not in unit:
        return number / 100.0
    if variable == "Oxygen saturation" and number <= 1:
        return number * 100.0
    if variable == "Temperature" and number >= 79:
        return (number - 32) * 5.0 / 9
    if variable == "Weight":
        ounces = "oz" in unit or "oz" in label
        if ounces:
            number = number / 16.0
        if ounces or "lb" in unit or "lb" in label:
            number = number * _KG_PER_LB
    if variable == "Height" and ("in" in unit or "in" in label):
        centimetres = number * 2.54
        return float(round(centimetres)) if math.isfinite(centimetres) else centimetres  # round(inf) raises
    return number


def hours_since(start: dt.datetime, when: dt.datetime) -> float:
    """The benchmark's time axis: hours from the ICU intime (negative before it)."""
    return (when - start).total_seconds() / 3600


def event(row: Mapping, intime: dt.datetime) -> tuple[float, str, float | str] | None:
    """A typed chartevents / labevents row (itemid, charttime, value, valuenum, valueuom) as the discretizer's
    ``(hours since intime, channel, value)``; None for an unmapped item or a value ``clean_value`` drops."""
    variable = ITEM_VARIABLES.get(row["itemid"])
    if variable is None:
        return None
    cleaned = clean_value(variable, row.get("value"), row.get("valuenum"), row.get("valueuom"),
                          ITEM_LABELS[row["itemid"]])
    return None if cleaned is None else (hours_since(intime, row["charttime"]), variable, cleaned)
