"""Raw image bytes -> the encoder's input, or an InputDecodeError with a clear reason.

Every failure of one input (empty, truncated, not an image, too large, a format
Pillow cannot read) becomes an InputDecodeError whose message is short enough
to sit in the `error` column of an output row; nothing else escapes. Global
Pillow state (MAX_IMAGE_PIXELS, LOAD_TRUNCATED_IMAGES) is never changed: the
pixel limit is checked here, from the header, before any pixel is decoded, and
so are the memory the whole decode will hold and a JPEG's scan work
(image_limits.py); data that ends early is refused after decoding.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputDecodeError, short_message
from .image_limits import (
    DEFAULT_MAX_DECODE_BYTES,
    DecodePlan,
    JpegFacts,
    describe_plan,
    ico_largest_entry,
    jpeg_work_refusal,
    plan_decode,
    png_data_shortfall,
    read_jpeg,
)
from .preprocess import (
    BAND_BYTES,
    TRANSPOSING_ORIENTATIONS,
    PreprocessSpec,
    exif_orientation,
    preprocess_image,
    resized_size,
)

# Pillow's own hard limit (2 x Image.MAX_IMAGE_PIXELS at its default), so the two
# guards agree by default: about 13,400 x 13,400 pixels, ~537 MB as RGB.
DEFAULT_MAX_PIXELS = 178_956_970

# JPEG draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale (DCT scaling).
# It is used only while the reduced image keeps at least this factor over the
# size the resize needs, the same margin Pillow's thumbnail() keeps.
DRAFT_REDUCING_GAP = 2.0

# Formats recognised by their first bytes that Pillow cannot decode here.
UNSUPPORTED_FORMATS = frozenset({"HEIC", "JPEG XL", "SVG"})

_HEIC_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_BMP_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}
SNIFF_BYTES = 64


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # (S, S, 3) uint8, the encoder input per the PreprocessSpec
    width: int  # original width after EXIF orientation
    height: int


def sniff_image_format(head: bytes) -> str | None:
    """Image format named by the file's first bytes (SNIFF_BYTES suffice), else None.

    Unsupported image formats (HEIC, JPEG XL, SVG) are named too, so callers can
    tell "an image we cannot read" from "not an image".
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _AVIF_BRANDS:
            return "AVIF"
        if brand in _HEIC_BRANDS:
            return "HEIC"
    if head.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n") or head.startswith(b"\xff\x0a"):
        return "JPEG XL"
    if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or head.startswith(b"\xff\x4f\xff\x51"):
        return "JPEG2000"
    if head[:2] == b"BM" and len(head) >= 18:
        # "BM" alone is too weak (text can start with it): check the DIB header size.
        if int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
            return "BMP"
    if re.match(rb"P[1-7][ \t\r\n#]", head[:3]):
        return "PPM"
    if head[:4] == b"8BPS":
        return "PSD"
    if head[:4] == b"qoif":
        return "QOI"
    if head[:4] == b"\x00\x00\x01\x00" and len(head) >= 6 and head[4:6] != b"\x00\x00":
        return "ICO"
    if head[:4] == b"DDS ":
        return "DDS"
    if _looks_like_svg(head):
        return "SVG"
    return None


def _looks_like_svg(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text)


def describe_non_image(head: bytes) -> str | None:
    """Why bytes that no image reader accepts are not an image, when it can be told."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in text:
        return "not an image (looks like HTML)"
    if _looks_like_svg(head[:1024]) or b"<svg" in text:
        return "unsupported image format (SVG)"
    if text.startswith(b"<?xml"):
        return "not an image (looks like XML)"
    if head.startswith(b"%PDF"):
        return "not an image (looks like a PDF document)"
    if head.startswith(b"PK\x03\x04"):
        return "not an image (looks like a ZIP archive)"
    if head.startswith(b"\x1f\x8b"):
        return "not an image (looks like gzip data)"
    if text.startswith((b"{", b"[")):
        return "not an image (looks like JSON)"
    if _is_text(head):
        return "not an image (looks like text)"
    return None


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character cut at the end of the sample is still text.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return bool(text) and all(ch.isprintable() or ch in "\t\r\n\f" for ch in text)


def _too_large(pixels: int, max_pixels: int) -> InputDecodeError:
    return InputDecodeError(f"image too large: {pixels} pixels > limit {max_pixels}")


def _draft_request(size: tuple[int, int], spec: PreprocessSpec) -> tuple[int, int] | None:
    """The smallest stored size the resize still needs, times the reducing gap.

    Works on the stored (pre-EXIF) size: both resize modes are symmetric in
    width and height, so the rotation applied afterwards does not change it.
    """
    width, height = size
    if spec.resize == "center_crop":
        scale = spec.size / min(width, height)  # the shorter side ends at spec.size
        needed = (width * scale, height * scale)
    else:
        needed = (spec.size, spec.size)
    request = (int(needed[0] * DRAFT_REDUCING_GAP), int(needed[1] * DRAFT_REDUCING_GAP))
    if request[0] > width // 2 or request[1] > height // 2:
        return None  # not even a 1/2 reduction would keep the margin
    return request


def _pillow_bomb(exc: Image.DecompressionBombError, max_pixels: int) -> InputDecodeError:
    numbers = [int(n) for n in re.findall(r"\d+", str(exc))]
    if len(numbers) >= 2:
        return _too_large(numbers[0], min(numbers[1], max_pixels))
    return InputDecodeError(f"image too large: {short_message(exc)}")


def _load_failure(exc: BaseException, fmt: str, max_pixels: int) -> InputDecodeError:
    if isinstance(exc, Image.DecompressionBombError):
        return _pillow_bomb(exc, max_pixels)
    if isinstance(exc, MemoryError):
        return InputDecodeError(f"out of memory decoding {fmt}")
    message = str(exc).lower()
    if isinstance(exc, EOFError) or "truncated" in message or "premature end" in message:
        return InputDecodeError(f"truncated {fmt}")
    return InputDecodeError(f"corrupt {fmt}: {short_message(exc)}")


def decode_image(
    data: bytes,
    spec: PreprocessSpec,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
    draft: bool = True,
) -> DecodedImage:
    """Bytes of one image file -> DecodedImage; raises InputDecodeError(clear reason).

    Reads only the first frame of animated or multi-page files. Before any pixel
    is decoded, the declared size is checked against max_pixels, the memory the
    decode and conversion will hold against max_decode_bytes, and a JPEG's scans
    against the work limits (image_limits). `draft` allows JPEG DCT downscaling
    for large JPEGs (off: a full decode, as training does, for benchmarks and
    comparisons).
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    if max_decode_bytes < 1:
        raise ValueError(f"max_decode_bytes must be >= 1, got {max_decode_bytes}")
    try:
        return _decode(data, spec, max_pixels, max_decode_bytes, draft)
    except InputDecodeError as exc:
        reason = str(exc)
    # Raised afresh, outside the except block and with the input dropped from this
    # frame: the error carries no __context__ (Pillow's exception, whose frames hold
    # the image and a BytesIO of the input) and its traceback no bytes, so an error
    # kept by a Future or a log pins nothing of the input.
    del data
    raise InputDecodeError(reason)


def _open(data: bytes, sniffed: str | None, max_pixels: int) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        # Pillow's own header check fires inside open() when its (global) limit is
        # below the declared size; report it in the same words as ours.
        raise _pillow_bomb(exc, max_pixels) from None
    except UnidentifiedImageError:
        if sniffed is not None:
            raise InputDecodeError(f"truncated or corrupt {sniffed} header") from None
        reason = describe_non_image(data[:1024])
        raise InputDecodeError(reason or "unsupported image format") from None
    except Exception as exc:  # any parser error on hostile bytes is that input's problem
        raise _load_failure(exc, sniffed or "image", max_pixels) from None


def _decode(
    data: bytes, spec: PreprocessSpec, max_pixels: int, max_decode_bytes: int, draft: bool
) -> DecodedImage:
    if not data:
        raise InputDecodeError("empty file (0 bytes)")
    sniffed = sniff_image_format(data[:SNIFF_BYTES])
    if sniffed in UNSUPPORTED_FORMATS:
        raise InputDecodeError(f"unsupported image format ({sniffed})")
    jpeg = read_jpeg(data) if sniffed == "JPEG" else None
    refusal = jpeg_work_refusal(jpeg) if jpeg is not None else None
    if refusal is not None:
        raise InputDecodeError(refusal)
    image = _open(data, sniffed, max_pixels)
    with image:
        fmt = image.format or sniffed or "image"
        stored_width, stored_height = _true_size(image, fmt, data)
        if stored_width * stored_height > max_pixels:
            raise _too_large(stored_width * stored_height, max_pixels)
        if stored_width < 1 or stored_height < 1:
            raise InputDecodeError(f"corrupt {fmt}: size {stored_width}x{stored_height}")
        try:
            if draft and fmt == "JPEG":
                request = _draft_request(image.size, spec)
                if request is not None:
                    image.draft("RGB", request)
            plan = _plan(image, fmt, data, spec, jpeg)
            if plan.total > max_decode_bytes:
                what = f"{stored_width}x{stored_height} {fmt} mode {image.mode}"
                raise InputDecodeError(describe_plan(plan, max_decode_bytes, what))
            image.load()
        except InputDecodeError:
            raise
        except Exception as exc:
            raise _load_failure(exc, fmt, max_pixels) from None
        try:
            _check_complete(image, fmt, data, jpeg)
        except InputDecodeError:
            raise
        except Exception as exc:  # a check tripping on hostile bytes: still that input's problem
            raise InputDecodeError(f"corrupt {fmt}: {short_message(exc)}") from None
        # Read after load (a PNG's eXIf may follow its image data), from the stored
        # size (draft mode has shrunk image.size by now).
        width, height = stored_width, stored_height
        if exif_orientation(image) in TRANSPOSING_ORIENTATIONS:
            width, height = height, width
        try:
            pixels = preprocess_image(image, spec)  # (S, S, 3) uint8
        except Exception as exc:
            raise InputDecodeError(
                f"cannot convert {fmt} image (mode {image.mode}): {short_message(exc)}"
            ) from None
    return DecodedImage(pixels=pixels, width=width, height=height)


def _true_size(image: Image.Image, fmt: str, data: bytes) -> tuple[int, int]:
    """The size the decode will produce; an ICO's directory can understate it."""
    if fmt == "ICO":
        width, height, _ = ico_largest_entry(data)
        return max(width, image.width), max(height, image.height)
    return image.size


def _decoder_bytes(image: Image.Image, fmt: str, data: bytes, jpeg: JpegFacts | None) -> int:
    """Buffers the format's decoder holds besides the decoded image (measured in Pillow 13)."""
    width, height = image.size
    if jpeg is not None:
        return jpeg.coefficient_bytes()
    if fmt == "WEBP":
        return 2 * 4 * width * height  # libwebp's RGBA output, copied once more
    if fmt == "TIFF" and getattr(image, "tile", None) and image.tile[0][0] != "raw":
        tags = getattr(image, "tag_v2", {})
        if 322 in tags and 323 in tags:  # tiled
            rows, row_width = int(tags[323]), int(tags[322])
        else:
            rows, row_width = int(tags.get(278, height)), width
        return min(rows, height) * row_width * 4  # libtiff decodes a strip or tile at a time
    if fmt == "ICO":
        entry_w, entry_h, is_png = ico_largest_entry(data)
        # A BMP entry is read, masked and converted to RGBA: two more copies.
        return 0 if is_png else 2 * 4 * entry_w * entry_h
    return 0


def _plan(
    image: Image.Image, fmt: str, data: bytes, spec: PreprocessSpec, jpeg: JpegFacts | None
) -> DecodePlan:
    size, mode = image.size, image.mode
    if fmt == "ICO":
        entry_w, entry_h, _ = ico_largest_entry(data)
        if entry_w * entry_h > size[0] * size[1]:
            size, mode = (entry_w, entry_h), "RGBA"
    orientation = _orientation_before_load(image, fmt)
    rotated = orientation != 1
    upright = (size[1], size[0]) if orientation in TRANSPOSING_ORIENTATIONS else size
    return plan_decode(
        mode,
        size,
        resized_size(upright, spec),
        interpolation=spec.interpolation,
        decoder_bytes=_decoder_bytes(image, fmt, data, jpeg),
        rotated=rotated,
        band_bytes=BAND_BYTES,
    )


def _orientation_before_load(image: Image.Image, fmt: str) -> int:
    # Pillow's PNG getexif() decodes the whole image to look for an eXIf chunk
    # after the image data: that would be the decode this check is meant to avoid.
    # Such a late eXIf is rare; its rotation copy goes uncounted.
    if fmt == "PNG" and "exif" not in image.info:
        return 1
    return exif_orientation(image)


def _last_row_is_zero(image: Image.Image) -> bool:
    extrema = image.crop((0, image.height - 1, image.width, image.height)).getextrema()
    highs = [extrema[1]] if not isinstance(extrema[0], tuple) else [high for _, high in extrema]
    return all(high == 0 for high in highs)


def _check_complete(image: Image.Image, fmt: str, data: bytes, jpeg: JpegFacts | None) -> None:
    """Data that ended early decodes "fine" in Pillow, the rest grey or black: refuse it."""
    # Rows Pillow never received stay all 0, so a non-interlaced PNG whose last row
    # holds anything else is whole: that spares inflating it twice (1.9 s for 357 MB).
    if fmt == "PNG" and (image.info.get("interlace") or _last_row_is_zero(image)):
        reason = png_data_shortfall(data)
        if reason is not None:
            raise InputDecodeError(reason)
    elif jpeg is not None and jpeg.progressive and not jpeg.complete():
        raise InputDecodeError("truncated JPEG (progressive scans end before full detail)")
