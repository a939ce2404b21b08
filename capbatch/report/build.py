"""write_report: a caption run's output -> one self-contained HTML page.

Two streaming passes over the rows: the first counts (the header), the second
makes each row's thumbnail in a bounded thread pool and writes the row into
the page as it goes, so memory stays flat whatever the run's size. The page is
a Jinja2 template rendered with generate(): rows flow from the reader to the
file without being collected.

Safety: row text reaches the page in two ways only: Jinja2 autoescaping (the
header and error list) and a JSON block that the script reads and shows with
textContent (the cards); "<", ">" and "&" are escaped inside that block too,
so no file name can close it. A Content-Security-Policy allows just the page's
own inline script and style (by hash) and no network at all.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup

from ..errors import OutputError
from ..output.durable import write_file
from ..providers import cpu_thread_count
from .attention import attention_payload, find_sheet
from .images import (
    BROWSER_EXTENSIONS,
    ArchiveReader,
    Locator,
    read_file,
    relative_url,
    thumbnail_uri,
)
from .rows import ReportRow, RowStream, open_rows
from .summary import RunSummary

TEMPLATES = Path(__file__).with_name("templates")
DEFAULT_THUMB_SIZE = 256
IN_FLIGHT_PER_WORKER = 4
_JSON_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026"}


@dataclass(frozen=True)
class ReportOptions:
    attention_dir: Path | None = None
    link_images: bool = False  # reference image files instead of embedding thumbnails
    thumb_size: int = DEFAULT_THUMB_SIZE
    workers: int | None = None  # thumbnail threads; None: one per core
    title: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.thumb_size, int) or not 32 <= self.thumb_size <= 1024:
            raise ValueError(
                f"thumbnail size must be an integer in 32..1024, got {self.thumb_size!r}"
            )
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ValueError(f"workers must be an integer >= 1, got {self.workers!r}")


@dataclass(frozen=True)
class ReportResult:
    out: Path
    summary: RunSummary
    thumbnails: int  # rows shown with an image
    elapsed_s: float


def _script_json(value) -> str:
    """JSON that cannot end the <script> element holding it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).translate(_JSON_ESCAPES)


def _csp_hash(text: str) -> str:
    return (
        "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"
    )


class _Thumbnails:
    """Row -> its image for the page: a data URI, a link, or why there is none."""

    def __init__(self, options: ReportOptions, base_dir: Path, page_dir: Path, pool) -> None:
        self.options, self.page_dir, self.pool = options, page_dir, pool
        self.locator = Locator(base_dir)
        self.archives = ArchiveReader()

    def submit(self, row: ReportRow) -> Future | tuple[str, str] | None:
        """A Future of the data URI, or ("img" | "imgError", value) at once, or None."""
        if not row.ok:
            return None  # error rows show their reason; most could not be decoded anyway
        size = self.options.thumb_size
        path = self.locator.file(row.path) or self.locator.file(row.key)
        if path is not None:
            if self.options.link_images and path.suffix.lower() in BROWSER_EXTENSIONS:
                return ("img", relative_url(path, self.page_dir))
            return self.pool.submit(lambda: thumbnail_uri(read_file(str(path)), size))
        member = self.locator.archive_member(row.key)
        if member is None:
            return ("imgError", "image not found")
        try:
            data = self.archives.read(*member)  # archives stream in this thread, in row order
        except OSError as exc:
            return ("imgError", str(exc))
        return self.pool.submit(thumbnail_uri, data, size)

    @staticmethod
    def resolve(pending: Future | tuple[str, str] | None) -> tuple[str, str] | None:
        if pending is None or isinstance(pending, tuple):
            return pending
        try:
            return ("img", pending.result())
        except Exception as exc:  # InputDecodeError, OSError, or a decoder bug: this card only
            return ("imgError", str(exc) or type(exc).__name__)


def _row_payload(row: ReportRow, summary: RunSummary) -> dict:
    payload = {
        "i": row.index, "key": row.key, "path": row.path, "caption": row.caption,
        "score": row.score, "ok": row.ok, "error": row.error, "width": row.width,
        "height": row.height, "model": row.model_id, "inDomain": row.in_domain,
        "distance": row.domain_distance, "truncated": row.truncated, "repeated": row.repeated,
        "extra": row.extra or None,
    }  # fmt: skip
    if not row.ok:
        payload["reason"] = summary.group_of(row.error or "")
    return {name: value for name, value in payload.items() if value is not None}


class _RowWriter:
    """Pass two: rows -> JSON chunks for the page, thumbnails in a bounded FIFO window."""

    def __init__(
        self, rows: RowStream, summary: RunSummary, options: ReportOptions, page_dir: Path
    ):
        self.rows, self.summary, self.options, self.page_dir = rows, summary, options, page_dir
        self.base_dir = rows.source if rows.source.is_dir() else rows.source.parent
        self.shown = 0

    def _finish(self, row: ReportRow, pending, thumbs: _Thumbnails) -> str:
        payload = _row_payload(row, self.summary)
        image = thumbs.resolve(pending)
        if image is not None:
            payload[image[0]] = image[1]
            self.shown += image[0] == "img"
        if row.ok and (row.attention or self.options.attention_dir is not None):
            sheet = find_sheet(row.key, row.attention, self.options.attention_dir, self.base_dir)
            if sheet is not None:
                link_from = self.page_dir if self.options.link_images else None
                words = len((row.caption or "").split())
                payload["attention"] = attention_payload(sheet, words, link_from)
        return _script_json(payload)

    def chunks(self) -> Iterator[Markup]:
        workers = self.options.workers or cpu_thread_count()
        limit = workers * IN_FLIGHT_PER_WORKER
        window: deque = deque()
        first = True
        with ThreadPoolExecutor(workers, thread_name_prefix="report-thumb") as pool:
            thumbs = _Thumbnails(self.options, self.base_dir, self.page_dir, pool)
            try:
                for row in self.rows:
                    window.append((row, thumbs.submit(row)))
                    while len(window) >= limit or (window and _done(window[0][1])):
                        text = self._finish(*window.popleft(), thumbs)
                        yield Markup(text if first else "," + text)
                        first = False
                while window:
                    text = self._finish(*window.popleft(), thumbs)
                    yield Markup(text if first else "," + text)
                    first = False
            finally:
                for _, pending in window:
                    if isinstance(pending, Future):
                        pending.cancel()
                thumbs.archives.close()


def _done(pending) -> bool:
    return not isinstance(pending, Future) or pending.done()


def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True
    )


def _page_context(rows: RowStream, summary: RunSummary, options: ReportOptions) -> dict:
    script = (TEMPLATES / "report.js").read_text(encoding="utf-8")
    style = (TEMPLATES / "report.css").read_text(encoding="utf-8")
    images = "data: file: 'self'" if options.link_images else "data:"
    csp = (
        f"default-src 'none'; img-src {images}; style-src {_csp_hash(style)}; "
        f"script-src {_csp_hash(script)}; base-uri 'none'; form-action 'none'"
    )
    try:
        finished = datetime.fromtimestamp(rows.files[-1].stat().st_mtime, timezone.utc)
    except (OSError, IndexError):
        finished = None
    return {
        "title": options.title or f"capbatch report: {rows.source.name}",
        "source": str(rows.source),
        "fmt": rows.fmt,
        "summary": summary,
        "finished": finished.strftime("%Y-%m-%d %H:%M UTC") if finished else None,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "unreadable": rows.unreadable,
        "csp": csp,
        "script": Markup(script),
        "style": Markup(style),
        "config": Markup(
            _script_json({"hasDomain": summary.has_domain, "hasTruncation": summary.has_truncation})
        ),
    }


def write_report(
    rows_path: Path | str,
    out_html: Path | str,
    *,
    attention_dir: Path | str | None = None,
    link_images: bool = False,
    thumb_size: int = DEFAULT_THUMB_SIZE,
    workers: int | None = None,
    title: str | None = None,
) -> ReportResult:
    """Write an HTML report of a `capbatch caption` output; returns what it holds.

    The page is written to a temporary file beside out_html and renamed into
    place, so a report is whole or absent. Raises UsageError (bad input),
    MissingDependencyError (Parquet without pyarrow), OutputError (cannot write).
    """
    started = time.monotonic()
    options = ReportOptions(
        attention_dir=Path(attention_dir) if attention_dir is not None else None,
        link_images=link_images, thumb_size=thumb_size, workers=workers, title=title,
    )  # fmt: skip
    rows = open_rows(rows_path)
    out_html = Path(out_html)
    summary = RunSummary()
    for row in rows:
        summary.add(row)
    context = _page_context(rows, summary, options)
    writer = _RowWriter(rows, summary, options, out_html.parent.resolve())
    template = _environment().get_template("report.html.j2")
    _write_atomically(out_html, template.generate(rows_json=writer.chunks(), **context))
    return ReportResult(out_html, summary, writer.shown, time.monotonic() - started)


def _write_atomically(out: Path, chunks: Iterator[str]) -> None:
    def write(handle) -> None:
        for chunk in chunks:
            handle.write(chunk.encode("utf-8"))

    try:
        write_file(out, write)
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
