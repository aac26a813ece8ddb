"""Hourly discretisation and normalisation (MedFuse, reference §B.3) against hand-computed matrices and a literal
re-reading of the upstream Discretizer / Normalizer loops."""

import itertools
import json
import math
import random
from importlib import resources

import numpy as np
import pytest

from beam_pipeline.transforms import hourly
from beam_pipeline.transforms.hourly import (CHANNELS, CONFIG, EPS, STD_FLOOR, Moments, Normalizer, continuous_columns,
                                             discretize, feature_names, fit, load_config, n_bins)

DOCUMENT = json.loads(
    resources.files("beam_pipeline.resources").joinpath("medfuse/discretizer_config.json").read_text())
NAMES = feature_names()
COLUMN = {name: i for i, name in enumerate(NAMES)}
HR, EYE, TEMP, FIO2 = "Heart Rate", "Glascow coma scale eye opening", "Temperature", "Fraction inspired oxygen"


# ----------------------------------------------------------------------------------------------------------------
# Config and header


def test_config_channels_and_header_order():
    assert len(CHANNELS) == 17 and CHANNELS[0] == "Capillary refill rate" and CHANNELS[-1] == "pH"
    assert len(NAMES) == 76
    # Per channel in config order: its name, or its one-hot columns in possible_values order; then 17 masks.
    assert NAMES[:4] == ["Capillary refill rate->0.0", "Capillary refill rate->1.0", "Diastolic blood pressure",
                         "Fraction inspired oxygen"]
    assert NAMES[4:12] == [f"{EYE}->{v}" for v in DOCUMENT["possible_values"][EYE]]
    assert NAMES[12] == "Glascow coma scale motor response->1 No Response"
    assert NAMES[24] == "Glascow coma scale total->11" and NAMES[36] == "Glascow coma scale total->8"
    assert NAMES[37] == "Glascow coma scale verbal response->1 No Response"
    assert NAMES[49:59] == ["Glucose", HR, "Height", "Mean blood pressure", "Oxygen saturation", "Respiratory rate",
                            "Systolic blood pressure", TEMP, "Weight", "pH"]
    assert NAMES[59:] == [f"mask->{c}" for c in CHANNELS]
    assert continuous_columns() == (2, 3, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58)


def test_header_matches_upstream_construction_from_the_json():
    header = []
    for channel in DOCUMENT["id_to_channel"]:
        if DOCUMENT["is_categorical_channel"][channel]:
            header += [channel + "->" + value for value in DOCUMENT["possible_values"][channel]]
        else:
            header.append(channel)
    header += ["mask->" + channel for channel in DOCUMENT["id_to_channel"]]
    assert NAMES == header


def test_a_config_whose_normal_value_is_not_possible_is_refused():
    document = {"id_to_channel": ["a"], "is_categorical_channel": {"a": True}, "possible_values": {"a": ["x"]},
                "normal_values": {"a": "y"}}
    with pytest.raises(ValueError, match="normal value"):
        load_config(document)


@pytest.mark.parametrize("hours,expected", [(48, 48), (48.5, 49), (30.5, 31), (1, 1), (0.5, 1), (0, 0), (1e-7, 0),
                                            (47.9999999, 48)])
def test_bin_count_is_upstreams(hours, expected):
    assert n_bins(hours) == expected == max(0, int(hours / 1.0 + 1.0 - 1e-6))


# ----------------------------------------------------------------------------------------------------------------
# Binning


@pytest.mark.parametrize("t,expected_bin", [
    (0.0, 0), (-0.5 * EPS, 0), (0.5, 0), (1.0, 0), (1.0 + 0.5 * EPS, 0), (1.00001, 1), (23.0, 22), (23.5, 23),
    (47.5, 47), (48.0, 47), (48.0 + 0.5 * EPS, 47),
    (-2 * EPS, None), (-1.0, None), (48.0 + 2 * EPS, None), (49.0, None)])
def test_bin_boundaries_and_the_48_hour_edge(t, expected_bin):
    raw = discretize([(t, HR, 80.0)], hours=48).raw
    assert len(raw) == 48
    observed = [b for b, row in enumerate(raw) if row[CHANNELS.index(HR)] is not None]
    assert observed == ([] if expected_bin is None else [expected_bin])


def test_a_timestep_other_than_one_keeps_an_event_within_eps_of_the_end_in_the_last_bin():
    raw = discretize([(2.0 + 0.9 * EPS, HR, 80.0), (0.5, HR, 70.0), (0.6, HR, 75.0)], hours=2, timestep=0.5).raw
    hr = [row[CHANNELS.index(HR)] for row in raw]
    assert hr == [70.0, 75.0, None, 80.0]


def test_last_value_in_a_bin_wins_whatever_the_input_order():
    events = [(0.2, HR, 80.0), (0.7, HR, 90.0), (0.5, HR, 100.0), (1.5, HR, 60.0), (1.2, HR, 65.0)]
    for order in itertools.permutations(events):
        hr = [row[CHANNELS.index(HR)] for row in discretize(order, hours=3).raw]
        assert hr == [90.0, 60.0, None]


def test_equal_times_keep_the_largest_value():
    for order in itertools.permutations([(0.5, HR, 100.0), (0.5, HR, 90.0), (0.5, HR, 95.0)]):
        assert discretize(order, hours=1).raw[0][CHANNELS.index(HR)] == 100.0
    for order in itertools.permutations([(0.5, EYE, "To Pain"), (0.5, EYE, "To Speech"), (0.5, EYE, "None")]):
        assert discretize(order, hours=1).raw[0][CHANNELS.index(EYE)] == "To Speech"  # text order: "To S" > "To P"


@pytest.mark.parametrize("event,message", [
    ((0.5, "Heart rate", 80.0), "unknown channel"), ((0.5, EYE, "to speech"), "possible values"),
    ((0.5, HR, "80"), "finite number"), ((0.5, HR, math.nan), "finite number"), ((0.5, HR, None), "finite number"),
    ((math.nan, HR, 80.0), "finite number of hours"), ((0.5, HR, 1e39), "float32"), ((0.5, HR, -1e39), "float32"),
    ((0.5, HR, 10 ** 39), "float32")])
def test_unclean_events_are_refused(event, message):
    with pytest.raises(ValueError, match=message):
        discretize([event], hours=48)


def test_only_values_float32_can_hold_are_storable():
    """1e39 is finite in float64 but would be inf in the stored float32 series (and the normaliser would refuse it);
    float32's largest finite value is fine and is stored as it is."""
    assert not any(hourly.storable(v) for v in (1e39, -1e39, math.inf, math.nan, 10 ** 39))
    assert all(hourly.storable(v) for v in (hourly.FLOAT32_MAX, -hourly.FLOAT32_MAX, 0.0, 80, "To Speech"))
    series = discretize([(0.5, HR, hourly.FLOAT32_MAX)], hours=1)
    assert series.raw_array()[0, CHANNELS.index(HR)] == np.finfo(np.float32).max
    assert np.isfinite(series.features()).all()


# ----------------------------------------------------------------------------------------------------------------
# Features: hand-computed


def _normal_row() -> np.ndarray:
    """The row before any observation, written out from the config's normal values."""
    row = np.zeros(76, dtype=np.float32)
    for name, value in {"Capillary refill rate->0.0": 1, "Diastolic blood pressure": 59.0, FIO2: 0.21,
                        f"{EYE}->4 Spontaneously": 1, "Glascow coma scale motor response->6 Obeys Commands": 1,
                        "Glascow coma scale total->15": 1, "Glascow coma scale verbal response->5 Oriented": 1,
                        "Glucose": 128.0, HR: 86, "Height": 170.0, "Mean blood pressure": 77.0,
                        "Oxygen saturation": 98.0, "Respiratory rate": 19, "Systolic blood pressure": 118.0,
                        TEMP: 36.6, "Weight": 81.0, "pH": 7.4}.items():
        row[COLUMN[name]] = value
    return row


def test_features_hand_computed():
    events = [(0.5, HR, 80.0), (2.5, HR, 100.0), (1.5, EYE, "To Speech"), (3.2, TEMP, 37.5), (3.9, TEMP, 38.0),
              (3.4, EYE, "To Pain")]
    hourly_ = discretize(events, hours=4)
    expected = np.tile(_normal_row(), (4, 1))
    expected[:, COLUMN[HR]] = [80, 80, 100, 100]  # forward fill from bin 0
    eye = [f"{EYE}->{v}" for v in DOCUMENT["possible_values"][EYE]]
    expected[:, [COLUMN[n] for n in eye]] = 0
    expected[0, COLUMN[f"{EYE}->4 Spontaneously"]] = 1  # normal value before the first observation
    expected[1:3, COLUMN[f"{EYE}->To Speech"]] = 1
    expected[3, COLUMN[f"{EYE}->To Pain"]] = 1
    expected[:3, COLUMN[TEMP]] = 36.6
    expected[3, COLUMN[TEMP]] = 38.0  # last in the bin, not 37.5
    expected[[0, 2], COLUMN[f"mask->{HR}"]] = 1
    expected[[1, 3], COLUMN[f"mask->{EYE}"]] = 1
    expected[3, COLUMN[f"mask->{TEMP}"]] = 1
    features = hourly_.features()
    assert features.dtype == np.float32 and features.shape == (4, 76)
    np.testing.assert_array_equal(features, expected)
    np.testing.assert_array_equal(hourly_.mask, expected[:, 59:].astype(np.uint8))


def test_raw_array_and_mask_keep_the_unimputed_series():
    hourly_ = discretize([(0.5, HR, 80.0), (1.5, EYE, "To Speech")], hours=3)
    raw = hourly_.raw_array()
    assert raw.shape == (3, 17) and raw.dtype == np.float32
    assert raw[0, CHANNELS.index(HR)] == 80.0
    assert raw[1, CHANNELS.index(EYE)] == DOCUMENT["possible_values"][EYE].index("To Speech") == 5
    assert int(np.isnan(raw).sum()) == 3 * 17 - 2
    np.testing.assert_array_equal(hourly_.mask, ~np.isnan(raw))


def test_a_stay_without_events_is_all_normal_values_and_a_zero_length_stay_has_no_rows():
    np.testing.assert_array_equal(discretize([], hours=2).features(), np.tile(_normal_row(), (2, 1)))
    empty = discretize([(0.0, HR, 80.0)], hours=0)
    assert empty.features().shape == (0, 76) and empty.mask.shape == (0, 17) and empty.raw_array().shape == (0, 17)


def test_a_small_custom_config_drives_everything():
    config = load_config({"id_to_channel": ["c", "k"], "is_categorical_channel": {"c": False, "k": True},
                          "possible_values": {"c": [], "k": ["lo", "hi"]}, "normal_values": {"c": "5", "k": "hi"}})
    assert feature_names(config) == ["c", "k->lo", "k->hi", "mask->c", "mask->k"]
    features = discretize([(1.5, "k", "lo"), (0.1, "c", 2.0)], hours=2, config=config).features()
    np.testing.assert_array_equal(features, [[2, 0, 1, 1, 0], [2, 1, 0, 0, 1]])


# ----------------------------------------------------------------------------------------------------------------
# Features: brute force, the upstream loops read literally


def _upstream(events, hours):
    """Upstream Discretizer.transform with impute 'previous', start 'zero', masks, on rows sorted the benchmark's
    way (time, then value: the last of equal times is the largest)."""
    channels = DOCUMENT["id_to_channel"]
    categorical, possible, normal = (DOCUMENT["is_categorical_channel"], DOCUMENT["possible_values"],
                                     DOCUMENT["normal_values"])
    begin, width = {}, 0
    for channel in channels:
        begin[channel] = width
        width += len(possible[channel]) if categorical[channel] else 1
    bins = int(hours / 1.0 + 1.0 - EPS)
    data = np.zeros((bins, width))
    mask = np.zeros((bins, len(channels)), dtype=int)
    original = [["" for _ in channels] for _ in range(bins)]

    def write(b, channel, value):
        if categorical[channel]:
            for pos, option in enumerate(possible[channel]):
                data[b, begin[channel] + pos] = 1.0 if option == value else 0.0
        else:
            data[b, begin[channel]] = float(value)

    for t, channel, value in sorted(events, key=lambda e: (e[0], e[1], e[2])):
        if not -EPS < t < hours + EPS:
            continue
        b = int(t / 1.0 - EPS)
        mask[b][channels.index(channel)] = 1
        write(b, channel, value)
        original[b][channels.index(channel)] = value
    previous = [[] for _ in channels]
    for b in range(bins):
        for i, channel in enumerate(channels):
            if mask[b][i] == 1:
                previous[i].append(original[b][i])
                continue
            write(b, channel, previous[i][-1] if previous[i] else normal[channel])
    return np.hstack([data, mask.astype(np.float32)])


def _random_value(rng: random.Random, channel: str):
    c = CHANNELS.index(channel)
    if CONFIG.categorical[c]:
        return rng.choice(CONFIG.possible_values[c])
    return round(rng.uniform(0, 200), rng.choice([0, 2]))


def _random_events(rng: random.Random, hours: float, n: int) -> list:
    """Times anywhere around [0, hours], often on hour boundaries or at the end; some equal-time companions."""
    events = []
    for _ in range(n):
        channel = rng.choice(CHANNELS)
        t = rng.choice([rng.uniform(-1, hours + 1), float(rng.randint(0, int(hours) + 1)), hours])
        events.append((t, channel, _random_value(rng, channel)))
        if rng.random() < 0.2:
            events.append((t, channel, _random_value(rng, channel)))
    return events


def test_features_match_the_upstream_loops_on_random_stays():
    rng = random.Random(14)
    for _ in range(300):
        hours = rng.choice([48.0, rng.uniform(0, 120), float(rng.randint(1, 30))])
        events = _random_events(rng, hours, rng.randint(0, 60))
        ours = discretize(rng.sample(events, len(events)), hours)
        np.testing.assert_array_equal(ours.features(), _upstream(events, hours).astype(np.float32))


# ----------------------------------------------------------------------------------------------------------------
# Normalizer


def _random_matrices(rng: random.Random, count: int) -> list[np.ndarray]:
    return [discretize(_random_events(rng, 24, rng.randint(0, 40)), rng.uniform(1, 30)).features()
            for _ in range(count)]


def test_normalizer_matches_numpy():
    matrices = _random_matrices(random.Random(7), 60)
    normalizer = fit(matrices)
    stacked = np.concatenate(matrices).astype(np.float64)[:, list(continuous_columns())]
    assert normalizer.count == stacked.shape[0]
    assert normalizer.names == tuple(NAMES[i] for i in continuous_columns())
    np.testing.assert_allclose(normalizer.means, stacked.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(normalizer.stds, np.maximum(stacked.std(axis=0, ddof=1), STD_FLOOR), rtol=1e-9)
    applied = normalizer.apply(matrices[0])
    expected = matrices[0].astype(np.float64)
    expected[:, list(continuous_columns())] = (stacked[:len(matrices[0])] - stacked.mean(axis=0)) / np.maximum(
        stacked.std(axis=0, ddof=1), STD_FLOOR)
    assert applied.dtype == np.float32
    np.testing.assert_allclose(applied, expected.astype(np.float32), rtol=1e-5, atol=1e-6)
    one_hot_and_masks = [i for i in range(76) if i not in continuous_columns()]
    np.testing.assert_array_equal(applied[:, one_hot_and_masks], matrices[0][:, one_hot_and_masks])


def test_a_constant_column_gets_the_std_floor():
    matrices = [discretize([(0.5, HR, 80.0)], hours=5).features() for _ in range(3)]
    normalizer = fit(matrices)
    stds = dict(zip(normalizer.names, normalizer.stds))
    assert stds[HR] == STD_FLOOR and stds[FIO2] == STD_FLOOR  # FiO2 never observed: always 0.21
    assert dict(zip(normalizer.names, normalizer.means))[HR] == pytest.approx(80.0)


def test_normalizer_refuses_fewer_than_two_rows():
    with pytest.raises(ValueError, match="at least 2 rows"):
        fit([discretize([], hours=0.5).features()])


def test_moments_merge_in_any_order_or_grouping_to_identical_bits():
    rng = random.Random(3)
    generator = np.random.default_rng(3)
    matrices = [generator.normal(80, 25, size=(rng.randint(1, 50), 76)) for _ in range(40)]
    parts = [Moments.of(m) for m in matrices]
    reference = sum(parts, Moments())
    float_sums = set()
    for _ in range(20):
        shuffled = rng.sample(parts, len(parts))
        groups, start = [], 0
        while start < len(shuffled):  # random bundles, merged in a random order, like a Beam combine
            size = rng.randint(1, 7)
            groups.append(sum(shuffled[start:start + size], Moments()))
            start += size
        merged = sum(rng.sample(groups, len(groups)), Moments())
        assert merged == reference
        assert Normalizer.from_moments(merged) == Normalizer.from_moments(reference)
        float_sums.add(sum(m[:, 2].sum() for m in rng.sample(matrices, len(matrices))))
    assert len(float_sums) > 1  # plain float accumulation would have depended on the order


def test_moments_identity_and_mismatch():
    m = Moments.of(discretize([(0.5, HR, 80.0)], hours=2).features())
    assert Moments() + m == m == m + Moments()
    with pytest.raises(ValueError, match="cannot merge"):
        m + Moments.of(np.zeros((2, 76)), columns=(0, 1))
    with pytest.raises(ValueError, match="non-finite"):
        Moments.of(np.full((1, 76), np.inf))


def test_as_dict_is_json_safe():
    normalizer = fit(_random_matrices(random.Random(5), 5))
    document = json.loads(json.dumps(normalizer.as_dict(), allow_nan=False))
    assert document["columns"] == [NAMES[i] for i in continuous_columns()]
    assert document["means"] == list(normalizer.means) and document["stds"] == list(normalizer.stds)
    assert document["rows"] == normalizer.count and document["ddof"] == 1 and document["std_floor"] == 1e-7


def test_module_constants_come_from_the_packaged_config():
    assert hourly.CONFIG == load_config(DOCUMENT)
    assert EPS == 1e-6 and STD_FLOOR == 1e-7
