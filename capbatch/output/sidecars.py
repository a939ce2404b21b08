"""`--format txt`: a caption file beside each image, plus a JSONL journal of every row."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import replace
from pathlib import Path

from ..rows import ERROR, OK, Row
from ..sources import IMAGE_EXTENSIONS, escape_undecodable
from .durable import make_folder, write_file
from .lines import JsonlWriter, _scan_jsonl
from .settings import OutputSettings

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sidecar_path(image_path: str, extension: str = ".txt") -> str:
    """ "photos/a.jpg" -> "photos/a.txt" (as dataset-prep tools expect)."""
    stem, image_extension = os.path.splitext(image_path)
    if image_extension.lower() == extension.lower():
        return image_path + extension  # an image named *.txt must not become its own sidecar
    return stem + extension


def member_sidecar_name(key: str, extension: str = ".txt") -> str:
    """A flat, safe, unique file name for an archive member's sidecar in --sidecar-dir:
    "a.tar::x/../y.jpg" -> "a.tar_x_.._y-<hash>.txt"; no folder, no way out of the dir."""
    stem = os.path.splitext(key)[0]
    readable = _UNSAFE.sub("_", stem).strip("._")[-80:] or "member"
    digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{readable}-{digest}{extension}"


class SidecarWriter:
    """Writes each captioned file's caption beside it (or, for archive members, into
    settings.sidecar_dir), and every row to a JSONL journal at `out` (which gives
    resume, errors and the lock a home).

    Existing sidecars are never replaced unless overwrite_sidecars; one that already
    holds the same text (left by a killed run) counts as written. A sidecar name that
    is a symbolic link is never written through nor replaced. Two images sharing a
    sidecar (a.jpg and a.png) are a collision: the second one's row says so, and no
    option overwrites the first one's caption. A refused sidecar turns its row into
    an error row, and write() returns the rows so changed.
    """

    def __init__(
        self,
        out: Path,
        *,
        append: bool,
        overwrite_sidecars: bool = False,
        settings: OutputSettings | None = None,
    ) -> None:
        self.overwrite_sidecars = overwrite_sidecars
        self.settings = settings or OutputSettings()
        # sidecar path -> the key whose caption it holds (this run and the rows kept),
        # so a.png never takes a.jpg's sidecar, even with --overwrite-sidecars.
        self._owners: dict[str, str] = {}
        if append and out.is_file():
            for record in _scan_jsonl(out).records:
                target = self._target(record["key"], record.get("path"))
                if record.get("status") == OK and target is not None:
                    self._owners[target] = record["key"]
        if self.settings.sidecar_dir is not None:
            make_folder(self.settings.sidecar_dir, "--sidecar-dir")
        self.journal = JsonlWriter(out, append=append)

    def write(self, rows: Sequence[Row]) -> list[Row]:
        # Sidecars first: a journal row then always means its sidecar exists.
        return self.journal.write([self._write_sidecar(row) for row in rows])

    def _target(self, key: str, path: str | None) -> str | None:
        extension = self.settings.caption_extension
        if path is not None:
            return sidecar_path(path, extension)
        if self.settings.sidecar_dir is None:
            return None
        return os.path.join(self.settings.sidecar_dir, member_sidecar_name(key, extension))

    def _write_sidecar(self, row: Row) -> Row:
        if not row.ok or row.caption is None:
            return row
        target = self._target(row.key, row.path)
        if target is None:
            return _refused(
                row, "archive member: no folder of its own for a sidecar (use --sidecar-dir DIR)"
            )
        name = escape_undecodable(os.path.basename(target))
        owner = self._owners.get(target)
        if owner is not None and owner != row.key:
            return _refused(row, _collision(name, owner))
        if os.path.islink(target):
            return _refused(row, f"sidecar {name} is a symbolic link (not followed)")
        settings = self.settings
        text = settings.sidecar_prefix + escape_undecodable(row.caption) + settings.sidecar_suffix
        text += "\n"
        try:
            write_file(target, text, replace=self.overwrite_sidecars)
        except FileExistsError:
            if _read_text(target) != text:
                other = _sibling_image(row.path)
                if other is not None:
                    return _refused(row, _collision(name, other))
                return _refused(row, f"sidecar {name} exists (use --overwrite-sidecars)")
        except OSError as exc:
            return _refused(row, f"cannot write sidecar: {exc.strerror or exc}")
        self._owners[target] = row.key
        return row

    def close(self) -> None:
        self.journal.close()

    @staticmethod
    def read_done(out: Path) -> dict[str, str]:
        return JsonlWriter.read_done(out)

    @staticmethod
    def read_producers(out: Path) -> set[tuple[str | None, str | None]]:
        return JsonlWriter.read_producers(out)

    @staticmethod
    def drop_keys(out: Path, keys: Collection[str]) -> int:
        return JsonlWriter.drop_keys(out, keys)


def _refused(row: Row, reason: str) -> Row:
    return replace(row, status=ERROR, error=reason)


def _collision(name: str, other: str) -> str:
    other = escape_undecodable(os.path.basename(other))
    return (
        f"sidecar {name} is also the sidecar of {other} (same name, another extension); "
        "rename one of the images"
    )


def _sibling_image(path: str | None) -> str | None:
    """Another image beside `path` with the same stem (a.png for a.jpg), if any: then an
    existing sidecar may be that image's caption, and overwriting it would lose it."""
    if path is None:
        return None
    folder, base = os.path.split(path)
    stem = os.path.splitext(base)[0]
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return None
    for other in sorted(names):
        other_stem, extension = os.path.splitext(other)
        if other != base and other_stem == stem and extension.lower() in IMAGE_EXTENSIONS:
            return os.path.join(folder, other)
    return None


def _read_text(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, encoding="utf-8") as handle:
            return handle.read(1 << 20)
    except (OSError, UnicodeDecodeError):
        return None
