import datetime as dt

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline import accounting, mimic
from beam_pipeline.transforms.join import (KeyLabelRejects, LinkImagesToStays, OneSubjectPerId, after_departure, as_of,
                                          in_time_order, select_stay, unique_rows)
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


def test_outtime_before_intime_rejects_the_stay_row():
    """Checked when the row is typed: read/outtime_before_intime, with both times; equal times are a valid stay."""
    raw = {"subject_id": "10000032", "stay_id": "30000001", "intime": "2180-07-22 16:24:00", "gender": "F",
           "arrival_transport": "WALK IN"}
    for outtime in ("", "2180-07-22 16:24:00", "2180-07-22 16:24:01"):
        assert mimic.type_row(mimic.EDSTAYS, {**raw, "outtime": outtime})["intime"] == T0
    with pytest.raises(mimic.RowError) as err:
        mimic.type_row(mimic.EDSTAYS, {**raw, "outtime": "2180-07-22 16:23:59.5"})
    assert err.value.reason == "outtime_before_intime"
    assert err.value.detail == "edstays.outtime=2180-07-22 16:23:59.500000 < intime=2180-07-22 16:24:00"


def test_unique_rows_merges_copies_and_sets_conflicts_aside():
    a, b = stay(30000001, T0), stay(30000002, T0 + H)
    b_later = {**b, "intime": T0 + 2 * H, "arrival_transport": "WALK IN"}
    for order in ([a, b, a, b_later, a], [b_later, a, a, b, a]):
        unique = unique_rows(order, "edstays", "stay_id")
        assert unique.rows == {30000001: a} and unique.copies == 2
        assert unique.conflicts == {30000002: (b, b_later)}  # a fixed order, whatever the input order
    assert unique.conflict(30000001) is None
    assert unique.conflict(30000002) == ("conflicting_edstays",
                                         "edstays stay_id=30000002: 2 rows differ in arrival_transport,intime")


def _events(out):
    return out.events | beam.CombinePerKey(sum)


def _rejects(out):
    return out.rejects | beam.Map(lambda r: (r["dicom_id"], r["stage"], r["reason"]))


def _ids(out):
    return out.linked | beam.Map(lambda lk: lk.image.dicom_id)


def test_a_conflicting_stay_rejects_the_images_any_of_its_versions_would_take():
    """Stay 2 has two versions (intime +2 h / +4 h): an X-ray one of them would be chosen for is rejected; one
    that stay 1 wins against every version keeps it; one no version reaches is no_ed_stay as before. Duplicates are
    counted for every subject, also one without images."""
    first, second, imageless = stay(30000001, T0), stay(30000002, T0 + 2 * H), stay(30000005, T0, subject_id=10000055)
    with test_pipeline() as p:
        out = _link(p, images=[_image("d-first", T0 + H, 50000001), _image("d-version", T0 + 3 * H, 50000002),
                               _image("d-none", T0 + 30 * H, 50000003)],
                    stays=[first, first, second, {**second, "intime": T0 + 4 * H}, imageless, imageless])
        assert_that(_ids(out), equal_to(["d-first"]))
        assert_that(_rejects(out), equal_to([("d-version", "join", "conflicting_edstays")]), label="Rejects")
        assert_that(_events(out), equal_to([
            ("duplicates/identical_rows/edstays", 2), ("duplicates/conflicting_keys/edstays", 1),
            ("images_linked", 1), ("no_ed_stay", 1), ("rejected", 1), ("rejects/join/conflicting_edstays", 1)]),
            label="Events")


def test_vitals_whose_rows_differ_at_one_charttime_reject_the_xrays_that_would_hold_them():
    """vitalsign's key is (stay_id, charttime): two heart rates at 17:24 cannot both be right (which one the note
    showed followed the rows' text order). An X-ray after 17:24 is rejected; one before it never holds that row;
    exact copies are one row."""
    def vital(minutes, hr):
        return {"subject_id": 10000032, "stay_id": 30000001, "charttime": T0 + dt.timedelta(minutes=minutes),
                "heartrate": hr}

    with test_pipeline() as p:
        out = _link(p, images=[_image("d-before", T0 + 30 * H / 60, 50000001), _image("d-after", T0 + 2 * H, 50000002)],
                    stays=[stay(30000001, T0)], vitals=[vital(10, 90.0), vital(10, 90.0), vital(60, 80.0),
                                                        vital(60, 150.0)])
        assert_that(out.linked | beam.Map(lambda lk: (lk.image.dicom_id, [v["heartrate"] for v in lk.vitals])),
                    equal_to([("d-before", [90.0])]))
        assert_that(out.rejects | beam.Map(lambda r: (r["dicom_id"], r["reason"], r["detail"])), equal_to([
            ("d-after", "conflicting_vitalsign", "vitalsign stay_id=30000001, charttime=2180-07-22 17:24:00: 2 rows "
                                                 "differ in heartrate")]), label="Rejects")
        assert_that(_events(out), equal_to([
            ("duplicates/identical_rows/vitalsign", 1), ("duplicates/conflicting_keys/vitalsign", 1),
            ("images_linked", 1), ("rejected", 1), ("rejects/join/conflicting_vitalsign", 1)]), label="Events")


def _read_reject(reason, subject_id=10000032, study_id=None):
    return {"stage": "read", "reason": reason, "subject_id": subject_id, "study_id": study_id, "dicom_id": None,
            "detail": "edstays.csv.gz:7: ..."}


def test_images_of_a_subject_with_a_rejected_stay_row_are_rejected_never_linked_or_no_ed_stay():
    """Subject 10000032 had an edstays row rejected at read, whose times are unknown: it may be a later arrival that
    the X-ray at +1 h belongs to (a valid earlier stay must not take it, with that stay's arrival mode and vitals),
    or the stay of the X-ray at +48 h. Both are stay_row_rejected; another subject's unmatched X-ray stays
    no_ed_stay."""
    detail = ("one may be the X-ray's stay, whose times are unknown; edstays rows of this subject rejected: "
              "bad_timestamp,outtime_before_intime")
    with test_pipeline() as p:
        out = _link(p, images=[_image("d-valid", T0 + H, 50000001), _image("d-lost", T0 + 48 * H, 50000002),
                               _image("d-other", T0 + H, 50000003, subject_id=10000099)],
                    stays=[stay(30000001, T0)],
                    rejected_edstays=[_read_reject("outtime_before_intime"), _read_reject("bad_timestamp")])
        assert_that(_ids(out), equal_to([]))
        assert_that(out.rejects | beam.Map(lambda r: (r["dicom_id"], r["reason"], r["detail"])), equal_to([
            ("d-valid", "stay_row_rejected", detail), ("d-lost", "stay_row_rejected", detail)]), label="Rejects")
        assert_that(_events(out), equal_to([("no_ed_stay", 1), ("rejected", 2),
                                            ("rejects/join/stay_row_rejected", 2)]), label="Events")


def test_an_xray_in_overlapping_stays_goes_to_the_one_in_progress_not_a_later_one_already_left():
    """Stay 1 runs 10:00-20:00, stay 2 (a later arrival) 12:00-13:00: an X-ray at 15:00 is of stay 1, in the ED,
    whatever the row order; once both are left, the latest arrival wins as before."""
    ten = T0.replace(hour=10, minute=0)
    long, short = stay(30000001, ten, ten + 10 * H), stay(30000002, ten + 2 * H, ten + 3 * H)
    for stays in ([long, short], [short, long]):
        assert select_stay(ten + 5 * H, stays, 0, 24)["stay_id"] == 30000001
        assert select_stay(ten + 21 * H, stays, 0, 24)["stay_id"] == 30000002
    open_ended = {**long, "outtime": None}  # a departure not known is never passed (after_departure)
    assert select_stay(ten + 5 * H, [short, open_ended], 0, 24)["stay_id"] == 30000001
    with test_pipeline() as p:
        out = _link(p, within_ed_stay=True, images=[_image("d1", ten + 5 * H)], stays=[short, long])
        assert_that(out.linked | beam.Map(lambda lk: (lk.stay["stay_id"], after_departure(lk.image.study_time,
                                                                                           lk.stay["outtime"]))),
                    equal_to([(30000001, False)]))


@pytest.mark.parametrize("first", [0, 1])
def test_a_dicom_id_whose_metadata_rows_differ_rejects_every_row_in_any_order(first):
    """Which row is right cannot be known: writing the first would follow the CoGroupByKey's order (AP 3000 or PA
    2500 from the same input). Exact copies stay one image written, the other copy duplicate_dicom_id."""
    versions = [_image("d1", T0 + H), mimic.Image("d1", 10000032, 50000001, "PA", 2500, 2544, T0 + H)]
    with test_pipeline() as p:
        out = _link(p, images=[versions[first], versions[1 - first], _image("d2", T0 + H, 50000002),
                               _image("d2", T0 + H, 50000002)], stays=[stay(30000001, T0)])
        assert_that(_ids(out), equal_to(["d2"]))
        assert_that(out.rejects | beam.Map(lambda r: (r["dicom_id"], r["reason"], r["detail"])), equal_to([
            ("d1", "conflicting_cxr_metadata", "cxr_metadata dicom_id=d1: 2 rows differ in rows,view_position"),
            ("d1", "conflicting_cxr_metadata", "cxr_metadata dicom_id=d1: 2 rows differ in rows,view_position"),
            ("d2", "duplicate_dicom_id", "an identical metadata row of this dicom_id is used")]), label="Rejects")


def _labels(study_id, **values):
    return {"subject_id": 10000032, "study_id": study_id,
            **{name: values.get(name.replace(" ", "_")) for name in mimic.LABELS}}


def test_rejected_or_conflicting_label_rows_reject_the_image_never_unlabelled():
    """Study 1: a valid row and a row rejected at read; 2: two differing rows; 3: no row while a row of the subject
    with an unreadable study_id was rejected; 4: a valid row (stays labelled, the unattributed reject is not its)."""
    images = [_image(f"d{n}", T0 + H, 50000000 + n) for n in (1, 2, 3, 4)]
    with test_pipeline() as p:
        out = _link(p, images=images, stays=[stay(30000001, T0)],
                    labels=[_labels(50000001, Edema=1.0), _labels(50000002, Edema=1.0),
                            _labels(50000002, Edema=0.0), _labels(50000002, Edema=0.0), _labels(50000004, Edema=1.0)],
                    rejected_labels=[_read_reject("bad_label_value", study_id=50000001),
                                     _read_reject("wrong_field_count")])
        assert_that(out.linked | beam.Map(lambda lk: (lk.image.dicom_id, lk.labels["Edema"])), equal_to([("d4", 1.0)]))
        assert_that(out.rejects | beam.Map(lambda r: (r["dicom_id"], r["reason"], r["detail"])), equal_to([
            ("d1", "label_row_rejected", "cxr_chexpert row of study_id=50000001 rejected at read: bad_label_value"),
            ("d2", "conflicting_cxr_chexpert", "cxr_chexpert study_id=50000002: 2 rows differ in Edema"),
            ("d3", "label_row_rejected", "no cxr_chexpert row of study_id=50000003; a row of this subject with an "
                                         "unreadable study_id rejected at read: wrong_field_count")]), label="Rejects")
        assert_that(_events(out), equal_to([
            ("duplicates/identical_rows/cxr_chexpert", 1), ("duplicates/conflicting_keys/cxr_chexpert", 1),
            ("images_linked", 1), ("rejected", 3), ("rejects/join/conflicting_cxr_chexpert", 1),
            ("rejects/join/label_row_rejected", 2)]), label="Events")


def test_conflicting_triage_patient_and_split_rows_reject_the_images_that_use_them():
    """Triage of stay 1 conflicts: the X-ray after arrival is rejected, the one before arrival (which never uses
    triage) is linked. Subject 10000099's patients rows conflict; d-split's official split rows conflict (one of
    them twice: an identical copy, counted)."""
    triage = {"subject_id": 10000032, "stay_id": 30000001, "acuity": 2.0, "chiefcomplaint": "Dyspnea"}
    split = {"subject_id": 10000077, "study_id": 50000003, "dicom_id": "d-split", "split": "train"}
    patient = {"subject_id": 10000099, "anchor_age": 60, "anchor_year": 2180}
    with test_pipeline() as p:
        out = _link(p, start=-2,
                    images=[_image("d-triage", T0 + H, 50000001), _image("d-before", T0 - H, 50000002),
                            _image("d-split", T0 + 2 * H, 50000003, subject_id=10000077),
                            _image("d-patient", T0 + H, 50000004, subject_id=10000099)],
                    stays=[stay(30000001, T0), stay(30000009, T0, subject_id=10000099),
                           stay(30000007, T0, subject_id=10000077)],
                    triage=[triage, {**triage, "chiefcomplaint": "Chest pain"}],
                    patients=[patient, {**patient, "anchor_age": 61}],
                    splits=[split, {**split, "split": "test"}, {**split, "split": "test"}])
        assert_that(_ids(out), equal_to(["d-before"]))
        assert_that(out.rejects | beam.Map(lambda r: (r["dicom_id"], r["reason"], r["detail"])), equal_to([
            ("d-triage", "conflicting_triage", "triage stay_id=30000001: 2 rows differ in chiefcomplaint"),
            ("d-patient", "conflicting_patients", "patients subject_id=10000099: 2 rows differ in anchor_age"),
            ("d-split", "conflicting_cxr_split", "cxr_split dicom_id=d-split: 2 rows differ in split")]),
            label="Rejects")
        assert_that(_events(out), equal_to([
            ("duplicates/identical_rows/cxr_split", 1), ("duplicates/conflicting_keys/cxr_split", 1),
            ("duplicates/conflicting_keys/patients", 1), ("duplicates/conflicting_keys/triage", 1),
            ("images_linked", 1), ("rejected", 3), ("rejects/join/conflicting_cxr_split", 1),
            ("rejects/join/conflicting_patients", 1), ("rejects/join/conflicting_triage", 1)]), label="Events")


def test_an_id_under_two_subjects_is_rejected_for_each_and_counted_as_a_unit():
    """hadm_id 1 under subjects 10 and 11: both rows rejected, each an admission the funnel counts; hadm_id 2's two
    differing rows of one subject pass on (the subject's own conflict, settled next to its other rows)."""
    rows = [{"hadm_id": 1, "subject_id": 11, "v": "a"}, {"hadm_id": 1, "subject_id": 10, "v": "b"},
            {"hadm_id": 2, "subject_id": 10, "v": "c"}, {"hadm_id": 2, "subject_id": 10, "v": "d"}]
    with test_pipeline() as p:
        out = p | beam.Create(rows) | OneSubjectPerId("hadm_id", lambda r: (r["hadm_id"], r["subject_id"], None),
                                                      "join", unit="admissions")
        assert_that(out.rows | beam.Map(lambda r: r["v"]), equal_to(["c", "d"]))
        assert_that(out[accounting.REJECTS] | beam.Map(lambda r: (r["stage"], r["reason"], r["subject_id"],
                                                                  r["detail"])),
                    equal_to([("join", "hadm_id_of_several_subjects", s, "hadm_id=1 under subject_ids 10,11")
                              for s in (10, 11)]), label="Rejects")
        assert_that(out[accounting.EVENTS] | beam.CombinePerKey(sum),
                    equal_to([("admissions", 2), ("rejected", 2), ("rejects/join/hadm_id_of_several_subjects", 2)]),
                    label="Events")


def test_label_rejects_without_a_subject_id_are_tied_to_their_study_subject():
    """A CheXpert read reject reaches the join under its subject: directly, or (subject_id unreadable) through the
    kept images of its study_id; one with neither readable cannot be tied."""
    def reject(subject_id, study_id, reason):
        return {"stage": "read", "reason": reason, "subject_id": subject_id, "study_id": study_id, "dicom_id": None,
                "detail": ""}

    rejects = [reject(10000032, 50000001, "bad_label_value"), reject(None, 50000002, "missing_value"),
               reject(None, None, "bad_int")]
    images = [_image("d1", T0, 50000002), _image("d2", T0, 50000002), _image("d3", T0, 50000003)]
    with test_pipeline() as p:
        keyed = (p | "Rejects" >> beam.Create(rejects)
                 | KeyLabelRejects(p | "Images" >> beam.Create(images)))
        assert_that(keyed | beam.Map(lambda kv: (kv[0], kv[1]["subject_id"], kv[1]["study_id"], kv[1]["reason"])),
                    equal_to([(10000032, 10000032, 50000001, "bad_label_value")]
                             + [(10000032, 10000032, 50000002, "missing_value")] * 2))  # once per image of the study
