"""X-ray pixels: one JPEG in, one small uint8 grayscale image out, with the geometry to map coordinates back.

Pure functions, no Beam. The JPEG header is read first (size, completeness) so bad files are refused before any
decoding; the decode then uses libjpeg-turbo's DCT scaling (1/2, 1/4, 1/8, through simplejpeg) whenever the reduced
image is still at least as large as the target, which skips most of the work for 3000-pixel radiographs. It runs in
strict mode: libjpeg only warns about damaged scan data and fills in the rest, so any warning refuses the image
(OpenCV's decoder, used before, prints the warning and returns the damaged image). The resize uses area
interpolation (linear when enlarging). Output coordinates map to the original as
``x_orig = (x_out - offset_x) / scale_x`` (same for y), in continuous coordinates with the origin at the top-left
corner (pixel i spans [i, i + 1), its centre is i + 0.5). With DCT scaling the scale is the decoded image's, which
spans ceil(side / f) * f original pixels: when a side is not a multiple of f its last decoded pixel reaches into
the encoder's padding (a copy of the edge), so the output's far edge holds up to one pixel of it. PNGs are written here (``png``): 8-bit grayscale, every row
"up"-filtered, deflated by libdeflate, which is twice as fast as zlib and gives the same bytes on every CPU for a
pinned version (README, Images).
"""

from __future__ import annotations

import dataclasses
import math
import struct
import zlib

import cv2
import deflate
import numpy as np
import simplejpeg

MIN_SIDE, MAX_SIDE, MAX_ASPECT = 64, 16384, 4.0  # outside these a "radiograph" is a broken file
RESIZE_MODES = ("pad", "crop", "squash")
FORMATS = ("png", "jpeg")
PAD_VALUE = 0  # black, the background of a radiograph
RADIOGRAPH_LEVEL = 1  # libdeflate levels (1-12): the fastest; higher levels cost 2-100x more for a few % less
EDGE_MAP_LEVEL = 3  # runs of zeros: as small as OpenCV's default PNG of the real NIH edge maps (level 1: 7 % larger)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class JpegInfo:
    height: int
    width: int
    components: int


def inspect_jpeg(data: bytes) -> JpegInfo:
    """Frame size from the JPEG header; refuse empty, non-JPEG, truncated and absurdly sized files."""
    if not data:
        raise ImageError("empty_image", "0 bytes")
    if data[:2] != b"\xff\xd8":
        raise ImageError("not_a_jpeg", f"starts with {data[:4].hex()}")
    pos, frame = 2, None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageError("undecodable_image", f"no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _SOF and pos + 10 <= len(data):
            frame = JpegInfo(int.from_bytes(data[pos + 5:pos + 7], "big"), int.from_bytes(data[pos + 7:pos + 9], "big"),
                             data[pos + 9])
        if marker == 0xDA:  # start of scan: entropy-coded data follows, ended by EOI (never escaped inside it)
            if frame is None:
                raise ImageError("undecodable_image", "no frame header before the scan")
            if data.rfind(b"\xff\xd9", pos + 2 + length) < 0:  # from the end: a forward scan cost 3 ms a file
                raise ImageError("truncated_image", f"no end-of-image marker in {len(data)} bytes")
            _check_size(frame)
            return frame
        pos += 2 + length
    raise ImageError("truncated_image", f"header ends after {len(data)} bytes")


def _check_size(frame: JpegInfo) -> None:
    short, long = sorted((frame.height, frame.width))
    if short < MIN_SIDE or long > MAX_SIDE or long / short > MAX_ASPECT:
        raise ImageError("absurd_dimensions", f"{frame.height}x{frame.width}")


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where the original lands in the size x size output: resized to (height, width), top-left at (offset_y,
    offset_x) (negative offsets crop)."""

    size: int
    height: int
    width: int
    scale_y: float
    scale_x: float
    offset_y: int
    offset_x: int


def geometry(height: int, width: int, size: int, mode: str) -> Geometry:
    if mode == "squash":
        return Geometry(size, size, size, size / height, size / width, 0, 0)
    scale = size / (max(height, width) if mode == "pad" else min(height, width))
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    return Geometry(size, new_h, new_w, new_h / height, new_w / width, (size - new_h) // 2, (size - new_w) // 2)


def reduction(height: int, width: int, geo: Geometry) -> int:
    """The largest DCT scaling (8, 4, 2) whose decoded image is still no smaller than the resized one."""
    for factor in (8, 4, 2):
        if math.ceil(height / factor) >= geo.height and math.ceil(width / factor) >= geo.width:
            return factor
    return 1


def decode(data: bytes, frame: JpegInfo, factor: int) -> np.ndarray:
    """Grayscale pixels at 1/factor of the frame size (EXIF orientation ignored), decoded strictly: an image that
    decodes only when libjpeg's warnings are tolerated (damaged scan data, a premature end) is ``corrupt_image``,
    one that fails either way ``undecodable_image``; the detail is libjpeg's message."""
    scaled = {"colorspace": "GRAY", "min_height": math.ceil(frame.height / factor),
              "min_width": math.ceil(frame.width / factor)}
    try:
        return simplejpeg.decode_jpeg(data, strict=True, **scaled)[:, :, 0]
    except ValueError as err:
        message = str(err)
    try:
        simplejpeg.decode_jpeg(data, strict=False, **scaled)
    except ValueError:
        raise ImageError("undecodable_image", message) from None
    raise ImageError("corrupt_image", message)


def place(resized: np.ndarray, geo: Geometry) -> np.ndarray:
    """Put the resized image on a size x size canvas at the geometry's offsets (padding or cropping)."""
    canvas = np.full((geo.size, geo.size), PAD_VALUE, np.uint8)
    y0, x0 = max(geo.offset_y, 0), max(geo.offset_x, 0)
    y1, x1 = min(geo.offset_y + geo.height, geo.size), min(geo.offset_x + geo.width, geo.size)
    canvas[y0:y1, x0:x1] = resized[y0 - geo.offset_y:y1 - geo.offset_y, x0 - geo.offset_x:x1 - geo.offset_x]
    return canvas


def edge_map(resized: np.ndarray) -> np.ndarray:
    """Saliency at the target size: CLAHE (clip 2, 8x8 tiles) then Canny (50/150); 0 or 255."""
    equalized = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(resized)
    return cv2.Canny(equalized, 50, 150)


def encode(image: np.ndarray, fmt: str, jpeg_quality: int) -> bytes:
    if fmt == "png":
        return png(image, RADIOGRAPH_LEVEL)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise ImageError("encode_failed", fmt)
    return data.tobytes()


def png(image: np.ndarray, level: int) -> bytes:
    """A 2-D uint8 image as an 8-bit grayscale PNG: each row "up"-filtered (its difference from the row above, mod
    256), all in one zlib stream from libdeflate at ``level``. For radiographs, against OpenCV's PNG with the same
    filter and Huffman-only zlib (the encoder before): half the time (1.4 against 2.9 ms at 518 px), 1-7 % smaller,
    as fast to read (docs/performance.md, 2026-12-02 evening)."""
    height, width = image.shape
    rows = np.empty((height, width + 1), np.uint8)
    rows[:, 0] = 2  # filter type "up"; the row above the first is zeros
    rows[0, 1:] = image[0]
    np.subtract(image[1:], image[:-1], out=rows[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bits, grayscale, deflate, filters, no interlace
    return b"".join([PNG_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", deflate.zlib_compress(rows, level)),
                     _chunk(b"IEND", b"")])


def _chunk(kind: bytes, data) -> bytes:
    return struct.pack(">I", len(data)) + kind + bytes(data) + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


@dataclasses.dataclass(frozen=True)
class ProcessedImage:
    encoded: bytes
    format: str  # png or jpeg
    edge_map: bytes | None  # PNG, same geometry, when asked for
    original_height: int
    original_width: int
    geometry: Geometry
    reduction: int  # DCT scaling used at decode (1 = full resolution)


def preprocess(data: bytes, size: int, mode: str, fmt: str, jpeg_quality: int = 95,
               with_edge_map: bool = False) -> ProcessedImage:
    """JPEG bytes -> encoded size x size uint8 grayscale image (+ optional edge map); raise ImageError."""
    frame = inspect_jpeg(data)
    geo = geometry(frame.height, frame.width, size, mode)
    factor = reduction(frame.height, frame.width, geo)
    decoded = decode(data, frame, factor)
    if factor > 1:  # 1/f decoding gives ceil(side / f) pixels, which span ceil(side / f) * f original ones
        geo = dataclasses.replace(geo, scale_y=geo.height / (decoded.shape[0] * factor),
                                  scale_x=geo.width / (decoded.shape[1] * factor))
    shrinking = decoded.shape[0] * decoded.shape[1] >= geo.height * geo.width
    resized = cv2.resize(decoded, (geo.width, geo.height),
                         interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    edges = png(place(edge_map(resized), geo), EDGE_MAP_LEVEL) if with_edge_map else None
    return ProcessedImage(encode(place(resized, geo), fmt, jpeg_quality), fmt, edges, frame.height, frame.width, geo,
                          factor)
