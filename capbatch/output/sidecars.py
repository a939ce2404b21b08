"""`--format txt`: a .txt caption beside each image, plus a JSONL journal of every row."""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import replace
from pathlib import Path

from ..rows import ERROR, Row
from ..sources import escape_undecodable
from .durable import link_new
from .lines import JsonlWriter


def sidecar_path(image_path: str) -> str:
    """ "photos/a.jpg" -> "photos/a.txt" (as dataset-prep tools expect)."""
    stem, extension = os.path.splitext(image_path)
    if extension.lower() == ".txt":  # an image named *.txt must not become its own sidecar
        return image_path + ".txt"
    return stem + ".txt"


class SidecarWriter:
    """Writes each captioned file's caption to a .txt beside it, and every row to a
    JSONL journal at `out` (which gives resume, errors and the lock a home).

    Existing sidecars are never replaced unless overwrite_sidecars; one that already
    holds the same caption (left by a killed run) counts as written. A refused
    sidecar turns its row into an error row, and write() returns the rows so
    changed: the caller counts what was written. Archive members have no file to
    sit beside: their captions are in the journal only.
    """

    def __init__(self, out: Path, *, append: bool, overwrite_sidecars: bool = False) -> None:
        self.overwrite_sidecars = overwrite_sidecars
        self.journal = JsonlWriter(out, append=append)

    def write(self, rows: Sequence[Row]) -> list[Row]:
        # Sidecars first: a journal row then always means its sidecar exists.
        return self.journal.write([self._write_sidecar(row) for row in rows])

    def _write_sidecar(self, row: Row) -> Row:
        if not row.ok or row.caption is None or row.path is None:
            return row
        target = sidecar_path(row.path)
        text = escape_undecodable(row.caption) + "\n"
        try:
            link_new(text, target, replace=self.overwrite_sidecars)
        except FileExistsError:
            if _read_text(target) == text:
                return row
            name = escape_undecodable(os.path.basename(target))
            return replace(
                row, status=ERROR, error=f"sidecar {name} exists (use --overwrite-sidecars)"
            )
        except OSError as exc:
            return replace(row, status=ERROR, error=f"cannot write sidecar: {exc.strerror or exc}")
        return row

    def close(self) -> None:
        self.journal.close()

    @staticmethod
    def read_done(out: Path) -> dict[str, str]:
        return JsonlWriter.read_done(out)

    @staticmethod
    def drop_keys(out: Path, keys: Collection[str]) -> int:
        return JsonlWriter.drop_keys(out, keys)


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None
