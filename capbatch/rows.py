"""The output row: its fields, statuses and Parquet schema, declared once.

Every engine and every output format writes these rows; the Ray engine's
stages carry them as plain records (`Row.to_record()` / `Row(**record)`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .sources import escape_undecodable

OK = "ok"
ERROR = "error"
STATUSES = (OK, ERROR)

# (name, Arrow type name) in file order: the CSV header, the JSON keys and the
# Parquet columns all come from this table.
_FIELD_TYPES: tuple[tuple[str, str], ...] = (
    ("key", "string"),
    ("path", "string"),
    ("caption", "string"),
    ("score", "float64"),
    ("status", "string"),
    ("error", "string"),
    ("width", "int64"),
    ("height", "int64"),
    ("model_id", "string"),
    # Who ran the encoder, at which precision ("onnxruntime-f32", "openvino-bf16"):
    # captions of two encoders can differ, so a resumed output says which is which.
    ("encoder", "string"),
    # Trust signals (docs/runtime.md): empty on error rows, and domain_* empty
    # when the bundle carries no domain statistics.
    ("domain_distance", "float64"),
    ("in_domain", "bool_"),
    ("truncated", "bool_"),
    ("repeated", "bool_"),
    # --attention-dir: the heatmap PNG's file name in that folder (null without it).
    ("attention", "string"),
)
ROW_FIELDS: tuple[str, ...] = tuple(name for name, _ in _FIELD_TYPES)
TEXT_FIELDS = tuple(name for name, kind in _FIELD_TYPES if kind == "string")
# Fields a record may lack (rows made before the field existed, engines without it).
OPTIONAL_FIELDS: tuple[str, ...] = (
    "encoder", "domain_distance", "in_domain", "truncated", "repeated", "attention",
)  # fmt: skip


@dataclass(frozen=True)
class Row:
    key: str
    path: str | None
    caption: str | None
    score: float | None
    status: str  # "ok" | "error"
    error: str | None
    width: int | None
    height: int | None
    model_id: str
    encoder: str | None = None  # "<runtime>-<precision>" of the encoder (ok rows)
    domain_distance: float | None = None  # Mahalanobis distance to the training images
    in_domain: bool | None = None  # distance within the bundle's calibrated threshold
    truncated: bool | None = None  # reached max_len without the end token
    repeated: bool | None = None  # a word or phrase repeated back to back
    attention: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"row status must be one of {STATUSES}, got {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_record(self) -> dict:
        """Plain values in ROW_FIELDS order, every string safe to encode as UTF-8."""
        record = asdict(self)
        for name in TEXT_FIELDS:
            if record[name] is not None:
                record[name] = escape_undecodable(str(record[name]))
        for name in ("score", "domain_distance"):
            if record[name] is not None:
                value = float(record[name])
                # NaN/inf have no JSON spelling and no meaning as a measure.
                record[name] = value if math.isfinite(value) else None
        return record

    @classmethod
    def from_record(cls, record: dict) -> Row:
        """A row from a record holding at least the fields every row has (extra
        columns ignored; OPTIONAL_FIELDS may be missing, as in rows of older runs)."""
        return cls(
            **{
                name: record.get(name) if name in OPTIONAL_FIELDS else record[name]
                for name in ROW_FIELDS
            }
        )


def parquet_schema(pa, leading: tuple = ()):
    """The Parquet schema of output rows; `leading` (name, type) fields go first (the
    Ray engine's shard bookkeeping)."""
    return pa.schema([*leading, *((name, getattr(pa, kind)()) for name, kind in _FIELD_TYPES)])
