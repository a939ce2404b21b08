"""Where a row's image is, and its thumbnail as a data URI.

Thumbnails go through capbatch.image_decode (the captioning decode path: size limits,
EXIF orientation, CMYK, 16-bit, alpha over white, clear reasons) with a square
PreprocessSpec, so a card shows the image the way the model framed it. Files
are read through capbatch.sources (no FIFO hangs, size cap) and archive
members are streamed from their archive, never extracted.
"""

from __future__ import annotations

import base64
import io
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from PIL import Image, features

from ..image_decode import decode_image
from ..preprocess import PreprocessSpec
from ..sources import KEY_SEPARATOR, SourceItem, archive_kind, escape_undecodable, iter_sources

# WebP is about a third smaller than JPEG at the same look, which matters when
# ten thousand thumbnails sit inside one HTML file.
THUMB_FORMAT = "WEBP" if features.check("webp") else "JPEG"
THUMB_QUALITY = 75
OPEN_ARCHIVES = 4
# Formats every current browser shows from a link; others are embedded even with --link-images.
BROWSER_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".webp", ".avif", ".bmp", ".ico"})  # fmt: skip


def encode_data_uri(
    image: Image.Image, fmt: str = THUMB_FORMAT, quality: int = THUMB_QUALITY
) -> str:
    buffer = io.BytesIO()
    image.save(buffer, fmt, quality=quality)
    mime = "image/webp" if fmt == "WEBP" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def thumbnail_uri(data: bytes, size: int) -> str:
    """Image bytes -> a (size x size) thumbnail data URI; raises InputDecodeError."""
    decoded = decode_image(data, PreprocessSpec(size=size, resize="center_crop"))
    return encode_data_uri(Image.fromarray(decoded.pixels))


def read_file(path: str) -> bytes:
    """The bytes of one image file, read the way captioning reads it (raises OSError)."""
    item = next(iter_sources([path], archives=False), None)
    if item is None or item.data is None:
        reason = item.error if item is not None else "cannot read"
        raise OSError(reason)
    return item.data


def relative_url(target: Path, page_dir: Path) -> str:
    """A URL from the report's folder to a local file (works from file://)."""
    relative = os.path.relpath(os.path.abspath(target), os.path.abspath(page_dir))
    return quote(Path(relative).as_posix(), safe="/")


class Locator:
    """Finds a row's image: a file (tried as written, then beside the output) or an
    archive member ("shards/a.tar::x.jpg")."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir

    def file(self, name: str | None) -> Path | None:
        if not name:
            return None
        candidates = [Path(name)]
        if not os.path.isabs(name):
            candidates.append(self.base_dir / name)
        return next((path for path in candidates if path.is_file()), None)

    def archive_member(self, key: str) -> tuple[Path, str] | None:
        """(archive file, member name) when the key names a member of an archive here."""
        start = key.find(KEY_SEPARATOR)
        while start != -1:
            archive = self.file(key[:start])
            if archive is not None and archive_kind(archive.name):
                return archive, key[start + len(KEY_SEPARATOR) :]
            start = key.find(KEY_SEPARATOR, start + 1)
        return None


class _ArchiveCursor:
    """One archive streamed forward; rows usually list members in archive order,
    so each member costs one step. A member behind the cursor restarts the scan."""

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.prefix = escape_undecodable(str(archive)) + KEY_SEPARATOR
        self._items: Iterator[SourceItem] = iter(())
        self._at_start = False

    def start(self) -> None:
        self._items = iter_sources([self.archive])
        self._at_start = True

    def _scan(self, wanted: str) -> SourceItem | None:
        for item in self._items:
            self._at_start = False
            if item.key == wanted:
                return item
        return None

    def read(self, member: str) -> SourceItem | None:
        wanted = self.prefix + member
        from_start = self._at_start
        item = self._scan(wanted)
        if item is None and not from_start:
            self.start()  # the member lies behind the cursor: scan once more from the top
            item = self._scan(wanted)
        return item

    def close(self) -> None:
        close = getattr(self._items, "close", None)
        if close is not None:
            close()


class ArchiveReader:
    """Members of a few archives at once, each read by a forward cursor."""

    def __init__(self, limit: int = OPEN_ARCHIVES) -> None:
        self._cursors: OrderedDict[Path, _ArchiveCursor] = OrderedDict()
        self._limit = limit

    def read(self, archive: Path, member: str) -> bytes:
        cursor = self._cursors.get(archive)
        if cursor is None:
            cursor = _ArchiveCursor(archive)
            cursor.start()
            self._cursors[archive] = cursor
            if len(self._cursors) > self._limit:
                self._cursors.popitem(last=False)[1].close()
        self._cursors.move_to_end(archive)
        item = cursor.read(member)
        if item is None:
            raise OSError("member not found in the archive")
        if item.data is None:
            raise OSError(item.error or "cannot read archive member")
        return item.data

    def close(self) -> None:
        for cursor in self._cursors.values():
            cursor.close()
        self._cursors.clear()
