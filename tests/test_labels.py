import math

import pytest

from beam_pipeline import mimic
from beam_pipeline.transforms.labels import NO_TARGET, label_vectors


def row(**values):
    return {name: values.get(name.replace(" ", "_")) for name in mimic.LABELS}


@pytest.mark.parametrize("policy, uncertain", [("zeros", (0, 1)), ("ones", (1, 1)), ("ignore", (-1, 0))])
def test_policies(policy, uncertain):
    raw, binary, mask, status = label_vectors(row(Atelectasis=1.0, Cardiomegaly=0.0, Edema=-1.0), policy)
    assert status == "labeled"
    i = {name: k for k, name in enumerate(mimic.LABELS)}
    assert raw[i["Atelectasis"]] == 1.0 and raw[i["Cardiomegaly"]] == 0.0 and raw[i["Edema"]] == -1.0
    assert math.isnan(raw[i["Pneumonia"]])
    assert (binary[i["Atelectasis"]], mask[i["Atelectasis"]]) == (1, 1)
    assert (binary[i["Cardiomegaly"]], mask[i["Cardiomegaly"]]) == (0, 1)
    assert (binary[i["Edema"]], mask[i["Edema"]]) == uncertain
    assert (binary[i["Pneumonia"]], mask[i["Pneumonia"]]) == (0, 1)  # blank: not mentioned = negative


@pytest.mark.parametrize("policy", ["zeros", "ones", "ignore"])
def test_a_masked_target_is_never_zero(policy):
    """Wherever the mask is 0 the target is NO_TARGET (-1), so ignoring the mask cannot train on a silent 0."""
    for label_row in (None, row(), row(Edema=-1.0, Pneumonia=-1.0, Atelectasis=0.0), row(**{
            name.replace(" ", "_"): -1.0 for name in mimic.LABELS})):
        _, binary, mask, _ = label_vectors(label_row, policy)
        assert all((b in (0, 1)) if m else (b == NO_TARGET == -1) for b, m in zip(binary, mask))


def test_missing_and_all_blank_rows_are_unlabelled_not_negative():
    for label_row, status in ((None, "no_label_row"), (row(), "all_blank")):
        for policy in ("zeros", "ones", "ignore"):
            raw, binary, mask, got = label_vectors(label_row, policy)
            assert got == status and all(math.isnan(v) for v in raw)
            assert binary == [-1] * 14 and mask == [0] * 14


def chexpert_cells(**cells):
    return {"subject_id": "10000032", "study_id": "50414267", **{name: cells.get(name, "") for name in mimic.LABELS}}


@pytest.mark.parametrize("text, value", [("1.0", 1.0), ("0", 0.0), ("-1.0", -1.0), ("", None)])
def test_label_cells_are_typed_at_read(text, value):
    assert mimic.type_row(mimic.CXR_CHEXPERT, chexpert_cells(Edema=text))["Edema"] == value


@pytest.mark.parametrize("text", ["2.0", "0.5", "x", "nan", "inf", "positive"])
def test_a_value_other_than_1_0_minus_1_or_blank_rejects_the_row(text):
    """At read time, so the join can reject the study's images (label_row_rejected): never written unlabelled."""
    with pytest.raises(mimic.RowError) as err:
        mimic.type_row(mimic.CXR_CHEXPERT, chexpert_cells(Edema=text))
    assert err.value.reason == "bad_label_value"
    assert err.value.detail == f"cxr_chexpert.Edema={text!r}"
