"""What a run did, for people (the summary's error breakdown) and for monitoring
(`--stats-json FILE`).

Error reasons are grouped by their text with every number replaced by "#", so
"image is 90000x90000 pixels" and "image is 70000x70000 pixels" count as one
reason. The per-row flags (FLAG_FIELDS) are counted only when the rows carry
them; a field no row carries is written as null ("not known"), never 0.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from .errors import OutputError
from .output.durable import write_file

# Boolean row fields the summary and the stats count, when rows carry them.
FLAG_FIELDS = ("in_domain", "truncated", "repeated")
STATS_VERSION = 1
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def reason_group(reason: str | None) -> str:
    """The error reason with its numbers as "#" (the grouping key)."""
    return _NUMBER.sub("#", (reason or "unknown error").strip()) or "unknown error"


def reason_lines(reasons: Counter, top: int = 5) -> list[str]:
    """The summary's breakdown: the `top` reasons with their counts, most first."""
    lines = [f"  {count} x {reason}" for reason, count in reasons.most_common(top)]
    rest = sum(reasons.values()) - sum(count for _, count in reasons.most_common(top))
    if rest:
        lines.append(f"  {rest} x {len(reasons) - top} other reason(s) (see the error column)")
    return lines


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def stats_record(summary, exit_code: int, ended_at: float) -> dict:
    """The --stats-json document for a finished (or interrupted) run's RunSummary."""
    return {
        "stats_version": STATS_VERSION,
        "model_id": summary.model_id,
        # "<runtime>-<precision>" (null when no row was captioned): who ran the encoder.
        "encoder": summary.encoder,
        "out": str(summary.out),
        "format": summary.fmt,
        "started_at": _iso(summary.started_at),
        "ended_at": _iso(ended_at),
        "elapsed_s": round(summary.elapsed_s, 3),
        "images_per_s": round(summary.images_per_s, 3),
        "rows": summary.ok + summary.errors,
        "status": {"ok": summary.ok, "error": summary.errors},
        "skipped": summary.skipped,
        "error_reasons": dict(summary.reasons.most_common()),
        "in_domain": summary.flag_count("in_domain", True),
        "out_of_domain": summary.flag_count("in_domain", False),
        "truncated": summary.flag_count("truncated", True),
        "repeated": summary.flag_count("repeated", True),
        "interrupted": summary.interrupted,
        "exit_code": int(exit_code),
    }


def write_stats(path: Path, record: dict) -> None:
    """Write the stats JSON whole (capbatch.output.durable.write_file), so a monitor
    never reads half a document and a link at `path` is replaced, never followed.
    Whether `path` may be replaced at all was checked before the run
    (capbatch.write_targets)."""
    text = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    try:
        write_file(Path(path), text)
    except OSError as exc:
        raise OutputError(f"cannot write --stats-json {path}: {exc.strerror or exc}") from None
