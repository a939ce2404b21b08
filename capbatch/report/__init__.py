"""`capbatch report`: a caption run's output as one self-contained HTML gallery.

write_report() is the library entry point (the CLI and `caption --report` call it).
"""

from .build import DEFAULT_THUMB_SIZE, ReportOptions, ReportResult, write_report
from .rows import ReportRow, open_rows

__all__ = [
    "DEFAULT_THUMB_SIZE",
    "ReportOptions",
    "ReportResult",
    "ReportRow",
    "open_rows",
    "write_report",
]
