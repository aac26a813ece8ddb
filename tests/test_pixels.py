import hashlib
import io
import math
import struct
import zlib

import cv2
import numpy as np
import pytest

from beam_pipeline import sample
from beam_pipeline.transforms import pixels
from conftest import OPEN_DATA


def jpeg(rows, columns, seed=0):
    return sample.encode(sample.radiograph(np.random.default_rng(seed), rows, columns, lateral=False))


def decode(data):
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def test_inspect_reads_the_frame_size_without_decoding():
    info = pixels.inspect_jpeg(jpeg(3056, 2544))
    assert (info.height, info.width, info.components) == (3056, 2544, 1)
    nih = cv2.imread(str(OPEN_DATA / "nih-chestxray14-sample" / "00000001_000.png"), cv2.IMREAD_GRAYSCALE)
    progressive = cv2.imencode(".jpg", nih, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert pixels.inspect_jpeg(progressive).height == 512


def claimed_size(data: bytes, height: int, width: int) -> bytes:
    """The JPEG with its frame header claiming another size (what a decompression bomb does)."""
    sof = data.index(b"\xff\xc0")
    return data[:sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[sof + 9:]


@pytest.mark.parametrize("data, reason", [
    (b"", "empty_image"),
    (bytes(range(256)) * 40, "not_a_jpeg"),
    (cv2.imencode(".png", np.zeros((100, 100), np.uint8))[1].tobytes(), "not_a_jpeg"),
    (jpeg(300, 250)[:2000], "truncated_image"),
    (jpeg(300, 250)[:150], "truncated_image"),
    (b"\xff\xd8\xff", "truncated_image"),
    (jpeg(40, 300), "absurd_dimensions"),  # 40 px high
    (jpeg(100, 500), "absurd_dimensions"),  # 5:1
    (cv2.imencode(".jpg", np.zeros((1, 1), np.uint8))[1].tobytes(), "absurd_dimensions"),  # 1 x 1
    (claimed_size(jpeg(300, 250), 20000, 20000), "absurd_dimensions"),  # a small file claiming 400 megapixels
])
def test_bad_files_are_refused_with_a_reason(data, reason):
    with pytest.raises(pixels.ImageError) as err:
        pixels.preprocess(data, 64, "pad", "png")
    assert err.value.reason == reason


@pytest.mark.parametrize("height, width, size, mode, expected", [
    (3056, 2544, 518, "pad", (518, 431, 0, 43)),
    (2544, 3056, 518, "pad", (431, 518, 43, 0)),
    (3056, 2544, 518, "crop", (622, 518, -52, 0)),
    (3056, 2544, 518, "squash", (518, 518, 0, 0)),
    (512, 512, 224, "pad", (224, 224, 0, 0)),
])
def test_geometry(height, width, size, mode, expected):
    geo = pixels.geometry(height, width, size, mode)
    assert (geo.height, geo.width, geo.offset_y, geo.offset_x) == expected
    assert geo.scale_y == geo.height / height and geo.scale_x == geo.width / width


@pytest.mark.parametrize("height, width, size, mode, factor", [
    (3056, 2544, 518, "pad", 4),  # 764 x 636 still covers 518 x 431
    (3056, 2544, 224, "pad", 8),
    (3056, 2544, 518, "crop", 4),  # needs 622 x 518: 764 x 636 covers it
    (2544, 3056, 1024, "pad", 2),
    (600, 800, 518, "pad", 1),
    (512, 512, 518, "pad", 1),  # enlarging
])
def test_reduced_decode_only_when_the_target_allows(height, width, size, mode, factor):
    assert pixels.reduction(height, width, pixels.geometry(height, width, size, mode)) == factor


def test_reduced_decode_matches_full_decode_then_area_resize():
    data = jpeg(3056, 2544, seed=4)
    out = pixels.preprocess(data, 518, "pad", "png")
    assert out.reduction == 4 and (out.original_height, out.original_width) == (3056, 2544)
    image = decode(out.encoded)
    assert image.shape == (518, 518) and image.dtype == np.uint8
    geo = out.geometry
    full = cv2.resize(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE), (geo.width, geo.height),
                      interpolation=cv2.INTER_AREA)
    inside = image[:, geo.offset_x:geo.offset_x + geo.width].astype(int)
    assert np.abs(inside - full).mean() < 1.0 and np.abs(inside - full).max() <= 12
    assert image[:, :geo.offset_x].max() == pixels.PAD_VALUE  # padding is black


@pytest.mark.parametrize("mode", ["pad", "crop", "squash"])
def test_coordinates_map_back_to_the_original(mode):
    """A bright dot at a known original position lands where the stored geometry says it does."""
    canvas = np.zeros((1200, 900), np.uint8)
    canvas[700:716, 300:316] = 255  # centre (707.5, 307.5)
    data = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    out = pixels.preprocess(data, 256, mode, "png")
    ys, xs = np.nonzero(decode(out.encoded) > 100)
    geo = out.geometry
    y_orig = (ys.mean() + 0.5 - geo.offset_y) / geo.scale_y - 0.5
    x_orig = (xs.mean() + 0.5 - geo.offset_x) / geo.scale_x - 0.5
    assert abs(y_orig - 707.5) < 3 and abs(x_orig - 307.5) < 3


@pytest.mark.parametrize("side", [1024, 1025, 1030])
def test_the_far_edge_maps_back_when_a_side_is_not_a_multiple_of_the_dct_scaling(side):
    """At 1/8 a 1025-pixel side decodes to 129 pixels spanning 1032 original ones; the scale must be that span's,
    else a band near the far edge maps back about 7 original pixels too low (0.84 output pixels)."""
    canvas = np.zeros((side, side), np.uint8)
    canvas[side - 40:side - 24, :] = 255  # rows [side - 40, side - 24): centre side - 32 (continuous coordinates)
    data = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()
    out = pixels.preprocess(data, 128, "pad", "png")
    assert out.reduction == 8
    profile = decode(out.encoded).astype(float).mean(axis=1)
    centre = (profile * (np.arange(len(profile)) + 0.5)).sum() / profile.sum()
    assert abs((centre - out.geometry.offset_y) / out.geometry.scale_y - (side - 32)) < 1.5


def test_jpeg_output_edge_map_and_determinism():
    data = jpeg(900, 700, seed=2)
    first = pixels.preprocess(data, 224, "pad", "jpeg", jpeg_quality=90, with_edge_map=True)
    again = pixels.preprocess(data, 224, "pad", "jpeg", jpeg_quality=90, with_edge_map=True)
    assert first == again
    assert first.encoded[:2] == b"\xff\xd8" and first.format == "jpeg"
    edges = decode(first.edge_map)
    assert first.edge_map[:4] == b"\x89PNG" and edges.shape == (224, 224) and edges.dtype == np.uint8
    assert set(np.unique(edges)) <= {0, 255} and edges.any()
    assert not edges[:, :first.geometry.offset_x].any()  # no edge along the padding border
    assert len(first.encoded) < 60_000  # small, not a float tensor


def test_enlarging_small_images_works():
    nih = (OPEN_DATA / "nih-chestxray14-sample" / "00000001_000.png")
    data = cv2.imencode(".jpg", cv2.imread(str(nih), cv2.IMREAD_GRAYSCALE))[1].tobytes()
    out = pixels.preprocess(data, 518, "pad", "png")
    assert out.reduction == 1 and decode(out.encoded).shape == (518, 518) and out.geometry.scale_x > 1


@pytest.mark.parametrize("name", ["00000001_000.png", "00027426_000.png"])
def test_radiograph_pngs_are_lossless_and_smaller_than_opencvs_default(name):
    """Real chest X-rays (512 px, so enlarged): the stored PNG decodes to exactly the processed pixels and is smaller
    than OpenCV's default encoding of them; the binary edge map, at its own level, is about as small as OpenCV's
    default (which suits its runs of zeros) and smaller than at the radiographs' level."""
    image = cv2.imread(str(OPEN_DATA / "nih-chestxray14-sample" / name), cv2.IMREAD_GRAYSCALE)
    data = cv2.imencode(".jpg", image)[1].tobytes()
    out = pixels.preprocess(data, 518, "pad", "png", with_edge_map=True)
    geo = out.geometry
    decoded = pixels.decode(data, pixels.inspect_jpeg(data), out.reduction)
    expected = pixels.place(cv2.resize(decoded, (geo.width, geo.height), interpolation=cv2.INTER_LINEAR), geo)
    assert np.array_equal(decode(out.encoded), expected)
    assert len(out.encoded) < len(cv2.imencode(".png", expected)[1])
    edges = pixels.place(pixels.edge_map(cv2.resize(decoded, (geo.width, geo.height))), geo)
    assert np.array_equal(decode(out.edge_map), edges) and set(np.unique(edges)) == {0, 255}
    assert len(out.edge_map) < 1.05 * len(cv2.imencode(".png", edges)[1])
    assert len(out.edge_map) < len(pixels.png(edges, pixels.RADIOGRAPH_LEVEL))


def test_pngs_are_standard_files_every_reader_decodes_to_the_same_pixels():
    """The hand-written PNG: signature, IHDR (8-bit grayscale), one IDAT whose rows all use the "up" filter, IEND,
    every CRC right; OpenCV, Pillow and TensorFlow decode it to the image, odd sizes included."""
    import tensorflow as tf
    from PIL import Image

    rng = np.random.default_rng(0)
    for image in (rng.integers(0, 256, (37, 53), dtype=np.uint8), np.zeros((1, 1), np.uint8),
                  sample.radiograph(rng, 300, 260, lateral=False)):
        data = pixels.png(image, pixels.RADIOGRAPH_LEVEL)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        chunks, pos = [], 8
        while pos < len(data):
            length = int.from_bytes(data[pos:pos + 4], "big")
            kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
            assert int.from_bytes(data[pos + 8 + length:pos + 12 + length], "big") == zlib.crc32(kind + body)
            chunks.append((kind, body))
            pos += 12 + length
        assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
        height, width = image.shape
        assert chunks[0][1] == struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
        rows = np.frombuffer(zlib.decompress(chunks[1][1]), np.uint8).reshape(height, width + 1)
        assert (rows[:, 0] == 2).all()
        assert np.array_equal(decode(data).reshape(image.shape), image)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), image)
        assert np.array_equal(tf.io.decode_png(data).numpy()[:, :, 0], image)


def test_png_bytes_are_pinned():
    """The same pixels give the same bytes on every machine and run (libdeflate's output depends on its version
    only, not on the CPU's instruction set): a changed digest means an upgrade changed every written PNG, which
    the README's reproducibility promise must then say."""
    image = (np.add.outer(np.arange(64) * 3, np.arange(80) * 5) % 251).astype(np.uint8)  # a gradient
    noise = ((np.arange(64 * 80, dtype=np.uint64) * 2654435761) >> np.uint64(13)) % np.uint64(16)  # hashed noise
    image += noise.reshape(64, 80).astype(np.uint8)
    image[20:40, 10:70] = 0  # a run of zeros
    digests = [hashlib.sha256(pixels.png(image, level)).hexdigest()
               for level in (pixels.RADIOGRAPH_LEVEL, pixels.EDGE_MAP_LEVEL)]
    assert digests == ["a2355215d89b5a7df2d54fb1c2ed9eede1bc88f237221eeb5773af93c70c7905",
                       "9bfe8f0f0330a6e215ff50c3d5d8d97f2f0773d3f470df0974a18a4ec8e9aa81"]


def scan_data(data: bytes) -> tuple[int, int]:
    """(start, end) of the entropy-coded data of a baseline JPEG: after the start-of-scan header, up to EOI."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big"), data.rindex(b"\xff\xd9")


def damage_scan(data: bytes, length: int = 64, seed: int = 0) -> bytes:
    """``length`` bytes in the middle of the scan data overwritten with random bytes (never 0xFF, so no marker
    appears), the end-of-image marker intact: the fault a flipped disk sector or a bad copy leaves."""
    start, end = scan_data(data)
    middle = (start + end) // 2
    noise = np.random.default_rng(seed).integers(0, 0xFF, length, dtype=np.uint8).tobytes()
    return data[:middle] + noise + data[middle + length:]


REDUCED = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
           8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


def opencv(data: bytes, factor: int = 1):
    """OpenCV's reduced grayscale decode: the stage's decoder before 2026-11-30, kept as the reference."""
    return cv2.imdecode(np.frombuffer(data, np.uint8), REDUCED[factor] | cv2.IMREAD_IGNORE_ORIENTATION)


def encoded_variants() -> dict[str, bytes]:
    """The JPEG flavours the stage meets: MIMIC's (grayscale, q95), progressive, colour 4:2:0, CMYK, an odd size."""
    from PIL import Image

    gray = sample.radiograph(np.random.default_rng(5), 1000, 800, lateral=False)
    color = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    color[:, :, 0] //= 2
    cmyk = io.BytesIO()
    Image.fromarray(color[:, :, ::-1]).convert("CMYK").save(cmyk, "JPEG")
    return {"gray": sample.encode(gray), "cmyk": cmyk.getvalue(),
            "progressive": cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
            "color_420": cv2.imencode(".jpg", color)[1].tobytes(),
            "odd_size": cv2.imencode(".jpg", gray[:333, :517])[1].tobytes()}


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_strict_decoder_gives_opencvs_pixels(factor):
    """Switching the decoder to simplejpeg (libjpeg-turbo, strict) changed no output pixel."""
    for name, data in encoded_variants().items():
        decoded = pixels.decode(data, pixels.inspect_jpeg(data), factor)
        assert np.array_equal(decoded, opencv(data, factor)), name


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
@pytest.mark.parametrize("damage", [
    lambda data: damage_scan(data, 64),
    lambda data: data[:sum(scan_data(data)) // 2] + b"\xff\xd9",  # cut inside the scan, end-of-image appended
    lambda data: data[:sum(scan_data(data)) // 2] + data[sum(scan_data(data)) // 2 + 1000:],  # a piece missing
], ids=["64_random_bytes", "cut_then_eoi", "piece_missing"])
def test_damaged_scan_data_is_corrupt_although_opencv_decodes_it(damage, factor):
    data = jpeg(1600, 1300, seed=6)
    bad = damage(data)
    assert opencv(bad, factor) is not None  # OpenCV only warns on stderr and returns the damaged image
    size = math.ceil(1600 / factor)  # a target that makes the stage decode at 1/factor
    with pytest.raises(pixels.ImageError) as err:
        pixels.preprocess(bad, size, "pad", "png")
    assert err.value.reason == "corrupt_image" and err.value.detail.startswith("Corrupt JPEG data")
    assert pixels.reduction(1600, 1300, pixels.geometry(1600, 1300, size, "pad")) == factor


def test_the_damage_is_real():
    """What corrupt_image keeps out of the training records: a 64-byte overwrite bands an eighth of the image."""
    data = jpeg(1600, 1300, seed=6)
    off = np.abs(opencv(damage_scan(data)).astype(int) - opencv(data)) > 30
    assert off.mean() > 0.1


def test_damage_that_keeps_the_entropy_code_valid_is_not_seen():
    """The limit of strict decoding (README, Images): libjpeg warns only when damage breaks the entropy code's
    structure. Random overwrites of a radiograph of MIMIC's weight per pixel are caught rarely for 1 byte and mostly
    for 64; the others decode to wrong pixels with no warning, as good images. Only a checksum would find those."""
    data = jpeg(1600, 1300, seed=6)
    frame, clean = pixels.inspect_jpeg(data), opencv(data)
    caught = {1: 0, 64: 0}
    for length in caught:
        for seed in range(40):
            bad = damage_scan(data, length, seed)
            try:
                unseen = pixels.decode(bad, frame, 1)
            except pixels.ImageError as err:
                assert err.reason == "corrupt_image"
                caught[length] += 1
            else:
                assert not np.array_equal(unseen, clean)
    assert caught[1] <= 8 and caught[64] >= 20


def test_bytes_after_the_end_of_image_are_ignored():
    """libjpeg stops at EOI; padding or junk after it (some writers append some) changes nothing."""
    data = jpeg(900, 700, seed=7)
    assert pixels.preprocess(data + b"\x00junk\xff\xd8", 224, "pad", "png") == \
        pixels.preprocess(data, 224, "pad", "png")


def test_a_decoder_failure_is_undecodable():
    """An error the decoder cannot get past even leniently (here a 12-bit precision the 8-bit decoder refuses)."""
    data = bytearray(jpeg(300, 250))
    data[data.index(b"\xff\xc0") + 4] = 12
    with pytest.raises(pixels.ImageError) as err:
        pixels.preprocess(bytes(data), 64, "pad", "png")
    assert (err.value.reason, err.value.detail) == ("undecodable_image", "Unsupported JPEG data precision 12")
