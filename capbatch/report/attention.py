"""A row's attention sheet (written by `capbatch caption --attention-dir`) for the page.

capbatch.attention_maps draws one labelled panel per decoding step on a sheet
of PANELS_PER_ROW columns; the page shows one panel at a time by offsetting
the sheet as a CSS background, so the sheet travels once, whole, per row.
The panel size is read back from the sheet's own dimensions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..attention_maps import LABEL_HEIGHT, PANELS_PER_ROW, attention_file_name
from .images import encode_data_uri, relative_url

SHEET_QUALITY = 80
MAX_SHEET_PIXELS = 40_000_000  # far above any real sheet; refuses a hostile PNG


@dataclass(frozen=True)
class SheetLayout:
    panel: int  # panel side in pixels (the encoder input size)
    columns: int
    rows: int

    @property
    def panels(self) -> int:
        return self.columns * self.rows


def sheet_layout(width: int, height: int, steps_hint: int) -> SheetLayout | None:
    """The panel grid of a sheet of this size, or None if it is not one of ours.

    steps_hint (words + 1 for <end>) picks the column count first; other counts
    are tried in case the caption was cut at the maximum length.
    """
    preferred = min(PANELS_PER_ROW, max(1, steps_hint))
    for columns in [preferred, *range(PANELS_PER_ROW, 0, -1)]:
        if width % columns:
            continue
        panel = width // columns
        if panel > 0 and height % (panel + LABEL_HEIGHT) == 0:
            return SheetLayout(panel=panel, columns=columns, rows=height // (panel + LABEL_HEIGHT))
    return None


def find_sheet(
    key: str, named: str | None, attention_dir: Path | None, base_dir: Path
) -> Path | None:
    """The row's sheet: the path its `attention` column names, else the file
    attention_maps names after the key inside attention_dir."""
    candidates: list[Path] = []
    if named:
        candidates.append(Path(named))
        if not os.path.isabs(named):
            if attention_dir is not None:
                candidates += [attention_dir / named, attention_dir / Path(named).name]
            candidates.append(base_dir / named)
    if attention_dir is not None:
        candidates.append(attention_dir / attention_file_name(key))
    return next((path for path in candidates if path.is_file()), None)


def attention_payload(sheet: Path, words: int, link_from: Path | None) -> dict:
    """What the page needs to show the sheet panel by panel.

    link_from: the report's folder, to link the PNG instead of embedding it.
    """
    try:
        with Image.open(sheet) as image:
            width, height = image.size
            if width * height > MAX_SHEET_PIXELS:
                return {"error": "attention map too large"}
            layout = sheet_layout(width, height, words + 1)
            if layout is None:
                return {"error": f"{width}x{height} is not an attention sheet"}
            source = (
                relative_url(sheet, link_from)
                if link_from is not None
                else encode_data_uri(image.convert("RGB"), quality=SHEET_QUALITY)
            )
    except Exception as exc:  # a damaged map costs its overlay, never the report
        return {"error": f"unreadable attention map: {type(exc).__name__}"}
    return {
        "src": source,
        "panel": layout.panel,
        "label": LABEL_HEIGHT,
        "columns": layout.columns,
        "rows": layout.rows,
        "steps": min(layout.panels, words + 1),  # one per word, then <end>
    }
