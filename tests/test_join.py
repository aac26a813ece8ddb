import datetime as dt

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline import mimic
from beam_pipeline.transforms.join import LinkImagesToStays, after_departure, as_of, in_time_order, select_stay
from conftest import test_pipeline

T0 = dt.datetime(2180, 7, 22, 16, 24)
H = dt.timedelta(hours=1)
S = dt.timedelta(seconds=1)


def stay(stay_id, intime, outtime=None, **extra):
    return {"subject_id": 10000032, "stay_id": stay_id, "intime": intime, "outtime": outtime or intime + 6 * H,
            "gender": "F", "arrival_transport": "AMBULANCE", **extra}


@pytest.mark.parametrize("offset, expected", [
    (dt.timedelta(0), 1),  # exactly at intime
    (24 * H, 1),  # exactly at +24 h (inclusive)
    (24 * H + S, None),  # one second past
    (-S, None),  # one second before intime
    (dt.timedelta(microseconds=-1), None),  # fractional seconds count
    (12 * H, 1),
])
def test_window_edges(offset, expected):
    chosen = select_stay(T0 + offset, [stay(1, T0)], 0, 24)
    assert (chosen and chosen["stay_id"]) == expected


def test_negative_window_start_admits_xrays_before_arrival():
    assert select_stay(T0 - 2 * H, [stay(1, T0)], -3, 24)["stay_id"] == 1
    assert select_stay(T0 - 3 * H - S, [stay(1, T0)], -3, 24) is None


def test_back_to_back_stays_take_the_latest_arrival():
    """Real demo subject 10000032: stay 32952584 ends at 05:54 when 39399961 begins; an 08:05 X-ray is within 24 h
    of both intimes and belongs to the later arrival."""
    first = stay(32952584, dt.datetime(2180, 7, 22, 16, 24), dt.datetime(2180, 7, 23, 5, 54))
    second = stay(39399961, dt.datetime(2180, 7, 23, 5, 54), dt.datetime(2180, 7, 23, 14, 0))
    study = dt.datetime(2180, 7, 23, 8, 5, 56, 875000)
    assert select_stay(study, [first, second], 0, 24)["stay_id"] == 39399961
    assert select_stay(study, [second, first], 0, 24)["stay_id"] == 39399961  # file order is irrelevant
    at_boundary = dt.datetime(2180, 7, 23, 5, 54)
    assert select_stay(at_boundary, [first, second], 0, 24)["stay_id"] == 39399961


def test_overlapping_stays_and_ties():
    a, b = stay(30000002, T0), stay(30000001, T0)  # same intime: smallest stay_id wins
    c = stay(30000003, T0 + 2 * H)  # overlaps a and b, arrived later
    assert select_stay(T0 + H, [a, b, c], 0, 24)["stay_id"] == 30000001
    assert select_stay(T0 + 3 * H, [a, b, c], 0, 24)["stay_id"] == 30000003


def test_no_arrival_before_study_takes_earliest_intime():
    later, earliest, tie = stay(30000009, T0 + 2 * H), stay(30000005, T0 + H), stay(30000004, T0 + H)
    assert select_stay(T0, [later, earliest, tie], -3, 24)["stay_id"] == 30000004


def test_as_of_keeps_only_rows_charted_by_the_study_time():
    rows = [{"charttime": T0 + 2 * H, "v": 2}, {"charttime": T0, "v": 0}, {"charttime": T0 + H, "v": 1},
            {"charttime": T0 + H + S, "v": 9}]
    assert [r["v"] for r in as_of(in_time_order(rows), T0 + H)] == [0, 1]


def _image(dicom_id, when, study_id=50000001, subject_id=10000032, view="AP"):
    return mimic.Image(dicom_id, subject_id, study_id, view, 3056, 2544, when)


def _link(p, start=0, end=24, within_ed_stay=False, **tables):
    keyed = {tag: [(row.subject_id if tag == "images" else row["subject_id"], row) for row in rows]
             for tag, rows in tables.items()}
    for tag in ("images", "stays", "triage", "vitals", "medrecon", "pyxis", "labels"):
        keyed.setdefault(tag, [])
    pcolls = {tag: p | f"Create {tag}" >> beam.Create(rows) for tag, rows in keyed.items()}
    return pcolls | LinkImagesToStays(start, end, within_ed_stay)


def test_link_keeps_only_what_was_known_at_the_study_time():
    """Vitals, home meds and ED meds charted after the X-ray never reach the linked record; triage and the arrival
    mode (timestamped at intime) are dropped when the X-ray precedes arrival."""
    def vitals(minutes, hr):
        return {"subject_id": 10000032, "stay_id": 30000001, "charttime": T0 + dt.timedelta(minutes=minutes),
                "heartrate": hr}

    def check(linked):
        by_id = {lk.image.dicom_id: lk for lk in linked}
        during, before = by_id["d-during"], by_id["d-before"]
        assert [v["heartrate"] for v in during.vitals] == [90.0, 95.0]
        assert [m["name"] for m in during.home_meds] == ["aspirin"] and during.ed_meds == ()
        assert during.triage["chiefcomplaint"] == "Dyspnea" and during.stay["arrival_transport"] == "AMBULANCE"
        assert before.triage is None and before.stay["arrival_transport"] is None and before.vitals == ()

    with test_pipeline() as p:
        out = _link(
            p, start=-2, end=24,
            images=[_image("d-during", T0 + H, 50000001), _image("d-before", T0 - H, 50000002)],
            stays=[stay(30000001, T0)],
            triage=[{"subject_id": 10000032, "stay_id": 30000001, "chiefcomplaint": "Dyspnea", "heartrate": 100.0}],
            vitals=[vitals(30, 90.0), vitals(60, 95.0), vitals(61, 150.0), vitals(300, 160.0)],
            medrecon=[{"subject_id": 10000032, "stay_id": 30000001, "charttime": T0 + 10 * H / 60, "name": "aspirin"},
                      {"subject_id": 10000032, "stay_id": 30000001, "charttime": T0 + 2 * H, "name": "later-med"}],
            pyxis=[{"subject_id": 10000032, "stay_id": 30000001, "charttime": T0 + 2 * H, "name": "Furosemide"}])
        assert_that(out.linked, check)
        assert_that(out.events | beam.CombinePerKey(sum), equal_to([("images_linked", 2)]), label="Events")


def test_link_counts_unmatched_and_rejects_duplicate_images():
    with test_pipeline() as p:
        out = _link(p, images=[_image("d1", T0 + H), _image("d1", T0 + H), _image("d2", T0 + 30 * H, 50000002),
                               _image("d3", T0 + H, 50000003, subject_id=10000099)],
                    stays=[stay(30000001, T0)])
        assert_that(out.linked | beam.Map(lambda lk: lk.image.dicom_id), equal_to(["d1"]))
        assert_that(out.events | beam.CombinePerKey(sum),
                    equal_to([("images_linked", 1), ("no_ed_stay", 2), ("rejected", 1),
                              ("rejects/join/duplicate_dicom_id", 1)]), label="Events")
        assert_that(out.rejects | beam.Map(lambda r: (r["reason"], r["dicom_id"])),
                    equal_to([("duplicate_dicom_id", "d1")]), label="Rejects")


@pytest.mark.parametrize("offset, outtime, expected", [
    (5 * H, T0 + 6 * H, False),  # in the ED
    (6 * H, T0 + 6 * H, False),  # at outtime: still counted as in the ED
    (6 * H + dt.timedelta(microseconds=1), T0 + 6 * H, True),  # any time after outtime
    (20 * H, T0 + 6 * H, True),
    (20 * H, None, False),  # unknown departure is never "after"
])
def test_after_departure(offset, outtime, expected):
    assert after_departure(T0 + offset, outtime) is expected


@pytest.mark.parametrize("within", [False, True])
def test_within_ed_stay_drops_and_counts_xrays_after_departure(within):
    """Off: X-rays after outtime (inside the 24 h window) are linked like any other; on: they are dropped and
    counted as dropped_after_ed_departure (at outtime exactly they are kept)."""
    images = [_image("d-in", T0 + H, 50000001), _image("d-at-out", T0 + 6 * H, 50000002),
              _image("d-after", T0 + 6 * H + S, 50000003), _image("d-late", T0 + 20 * H, 50000004)]
    kept = ["d-in", "d-at-out"] + ([] if within else ["d-after", "d-late"])
    events = [("images_linked", len(kept))] + ([("dropped_after_ed_departure", 2)] if within else [])
    with test_pipeline() as p:
        out = _link(p, within_ed_stay=within, images=images, stays=[stay(30000001, T0, T0 + 6 * H)])
        assert_that(out.linked | beam.Map(lambda lk: lk.image.dicom_id), equal_to(kept))
        assert_that(out.events | beam.CombinePerKey(sum), equal_to(events), label="Events")
