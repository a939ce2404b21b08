"""Small real image files for the source/decode/writer tests (made with Pillow)."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_kwargs)
    return buffer.getvalue()


def solid(color=RED, size=(40, 30), mode="RGB") -> Image.Image:
    return Image.new(mode, size, color)


def jpeg_bytes(color=RED, size=(40, 30)) -> bytes:
    return encode(solid(color, size), "JPEG", quality=95)


def png_bytes(color=GREEN, size=(40, 30)) -> bytes:
    return encode(solid(color, size), "PNG")


def gradient(size=(64, 48)) -> Image.Image:
    """A smooth RGB image, so JPEG artefacts and scaling differences stay small."""
    width, height = size
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    pixels = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)  # (H, W, 3)
    return Image.fromarray(pixels, "RGB")


def marker_image(size=(80, 40)) -> Image.Image:
    """White image with a red block in the top-left quadrant (as stored)."""
    image = Image.new("RGB", size, WHITE)
    width, height = size
    image.paste(RED, (0, 0, width // 4, height // 4))
    return image


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring a huge size with almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


HEIC_BYTES = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
HTML_BYTES = (
    b"<!DOCTYPE html>\n<html><head><title>404</title></head><body>Not found</body></html>\n"
)


def tar_file(path: Path, members: dict[str, bytes]) -> Path:
    """A plain tar at `path` holding these regular-file members, in this order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
