"""The attention view's data, as capbatch/report/attention.py and docs/report.md promise it:
the row's sheet found by its `attention` column (as written, in the attention folder,
beside the output) else by the name attention_maps gives its key; the panel grid read
back from the sheet's own size (the caption's word count picks the columns first, other
counts are tried for a caption cut short); the sheet embedded (or linked) whole; and a
damaged, foreign or oversized map costing only its overlay.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from capbatch.attention_maps import LABEL_HEIGHT, attention_file_name, save_attention_map
from capbatch.report.attention import (
    MAX_SHEET_PIXELS,
    SHEET_QUALITY,
    SheetLayout,
    attention_payload,
    find_sheet,
    sheet_layout,
)
from capbatch.report.images import encode_data_uri
from tests.io_fixtures import png_header_only


def blank_sheet(path: Path, size: tuple[int, int], mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, (90, 120, 150, 200)[: len(mode)]).save(path)
    return path


def real_sheet(directory: Path, key: str, words: list[str], side: int = 32) -> Path:
    pixels = np.full((side, side, 3), 180, np.uint8)
    alphas = np.full((len(words) + 1, 4), 0.25, np.float32)
    return save_attention_map(directory, key, pixels, words, alphas)


def decoded(uri: str) -> Image.Image:
    assert uri.startswith("data:image/")
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    image.load()
    return image


def grid(layout: SheetLayout | None) -> tuple | None:
    return None if layout is None else (layout.panel, layout.columns, layout.rows)


# -- the panel grid -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "hint", "expected"),
    [
        # 20 x 72 fits 2 columns of 10 px (3 rows) and 5 columns of 4 px (4 rows):
        ((20, 72), 2, (10, 2, 3)),  # the caption's steps pick 2
        ((20, 72), 5, (4, 5, 4)),
        ((20, 72), 3, (4, 5, 4)),  # 3 does not divide 20: the widest grid that fits
        ((20, 72), 1, (4, 5, 4)),  # 1 column of 20 px does not fit 72 rows of pixels
        # 28 x 84 fits 1 column of 28 px (2 rows), 2 of 14 (3 rows) and 4 of 7 (4 rows):
        ((28, 84), 1, (28, 1, 2)),
        ((28, 84), 0, (28, 1, 2)),  # no steps at all still means one panel per row
        ((28, 84), -3, (28, 1, 2)),
        ((28, 84), 2, (14, 2, 3)),
        ((28, 84), 9, (7, 4, 4)),  # more steps than a row holds: 5 columns, which do not fit
        # 64 x 60 fits only 4 columns of 16 px (2 rows):
        ((64, 60), 5, (16, 4, 2)),
        # 64 x 78 fits only 1 column: a caption cut short of its hint
        ((64, 78), 3, (64, 1, 1)),
        ((64, 78), 11, (64, 1, 1)),
        ((1, 1 + LABEL_HEIGHT), 1, (1, 1, 1)),  # the smallest panel: one pixel
    ],
)
def test_the_grid_is_read_back_from_the_sheets_size(size, hint, expected):
    layout = sheet_layout(*size, steps_hint=hint)
    assert grid(layout) == expected
    # Whole pixels: the page offsets the sheet by panel * column.
    assert all(type(value) is int for value in expected)
    assert (type(layout.panel), type(layout.rows)) == (int, int)
    assert layout.panels == expected[1] * expected[2]


@pytest.mark.parametrize(
    ("size", "hint"), [((100, 37), 3), ((0, 28), 1), ((0, 0), 1), ((7, 50), 1), ((64, 77), 1)]
)
def test_a_size_no_grid_fits_is_not_a_sheet(size, hint):
    assert sheet_layout(*size, steps_hint=hint) is None


# -- the payload --------------------------------------------------------------------------


def test_a_sheet_is_embedded_whole_with_its_grid(tmp_path):
    sheet = real_sheet(tmp_path / "maps", "a.png", ["two", "dots"])
    payload = attention_payload(sheet, words=2, link_from=None)
    with Image.open(sheet) as image:
        expected_src = encode_data_uri(image.convert("RGB"), quality=SHEET_QUALITY)
        size = image.size
    assert payload == {
        "src": expected_src,
        "panel": 32,
        "label": LABEL_HEIGHT,
        "columns": 3,
        "rows": 1,
        "steps": 3,  # one per word, then <end>
    }
    assert decoded(payload["src"]).size == size


def test_the_embedded_sheet_is_rgb_whatever_the_png_holds(tmp_path):
    sheet = blank_sheet(tmp_path / "rgba.png", (20, 72), mode="RGBA")
    payload = attention_payload(sheet, words=1, link_from=None)
    image = decoded(payload["src"])
    assert (image.mode, image.size) == ("RGB", (20, 72))


def test_the_captions_words_pick_the_grid_and_the_steps(tmp_path):
    sheet = blank_sheet(tmp_path / "s.png", (20, 72))
    one_word = attention_payload(sheet, words=1, link_from=tmp_path)
    assert one_word == {"src": "s.png", "panel": 10, "label": LABEL_HEIGHT, "columns": 2,
                        "rows": 3, "steps": 2}  # fmt: skip
    four_words = attention_payload(sheet, words=4, link_from=tmp_path)
    assert (four_words["columns"], four_words["rows"], four_words["steps"]) == (5, 4, 5)


def test_steps_are_at_most_the_panels_the_sheet_holds(tmp_path):
    # A caption longer than its map (cut at the maximum length): one step per panel.
    sheet = blank_sheet(tmp_path / "s.png", (64, 78))
    payload = attention_payload(sheet, words=10, link_from=tmp_path)
    assert (payload["columns"], payload["rows"], payload["steps"]) == (1, 1, 1)


def test_a_linked_sheet_is_a_url_from_the_pages_folder(tmp_path):
    sheet = real_sheet(tmp_path / "maps", "a b.png", ["one"])
    payload = attention_payload(sheet, words=1, link_from=tmp_path / "site")
    assert payload["src"] == "../maps/" + sheet.name.replace(" ", "%20")
    assert (payload["panel"], payload["columns"], payload["rows"], payload["steps"]) == (
        32,
        2,
        1,
        2,
    )


def test_a_sheet_of_another_size_says_so(tmp_path):
    sheet = blank_sheet(tmp_path / "photo.png", (100, 37))
    assert attention_payload(sheet, words=2, link_from=None) == {
        "error": "100x37 is not an attention sheet"
    }


def test_an_oversized_sheet_is_refused_unread(tmp_path):
    # Only the PNG header is there: the size alone refuses it, nothing is decoded.
    big = tmp_path / "big.png"
    big.write_bytes(png_header_only(8000, MAX_SHEET_PIXELS // 8000 + 1))
    assert attention_payload(big, words=2, link_from=None) == {"error": "attention map too large"}
    # Exactly at the limit the size is allowed: this one is refused for its shape instead.
    limit = tmp_path / "limit.png"
    limit.write_bytes(png_header_only(8000, MAX_SHEET_PIXELS // 8000))
    assert attention_payload(limit, words=2, link_from=None) == {
        "error": f"8000x{MAX_SHEET_PIXELS // 8000} is not an attention sheet"
    }


def test_a_damaged_sheet_costs_only_its_overlay(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png at all")
    assert attention_payload(garbage, words=1, link_from=None) == {
        "error": "unreadable attention map: UnidentifiedImageError"
    }
    # A header that promises a sheet whose pixels are not there.
    torn = tmp_path / "torn.png"
    torn.write_bytes(png_header_only(64, 78))
    assert attention_payload(torn, words=1, link_from=None) == {
        "error": "unreadable attention map: OSError"  # Pillow: "image file is truncated"
    }
    # Linking does not decode: the same header is a sheet the browser will try to show.
    assert attention_payload(torn, words=1, link_from=tmp_path)["src"] == "torn.png"


# -- finding the sheet --------------------------------------------------------------------


def test_the_attention_column_is_tried_as_written_first(tmp_path, monkeypatch):
    here, maps, base = tmp_path / "here", tmp_path / "maps", tmp_path / "out"
    for folder in (here, maps, base):
        folder.mkdir()
        (folder / "a.png").write_bytes(b"x")
    monkeypatch.chdir(here)
    assert find_sheet("k.png", "a.png", maps, base) == Path("a.png")


def test_a_relative_column_is_looked_for_in_the_attention_folder_then_beside_the_output(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # nothing under these names here
    maps, base = tmp_path / "maps", tmp_path / "out"
    named = "run1/a.png"
    (base / "run1").mkdir(parents=True)
    (base / named).write_bytes(b"x")
    # Beside the output, with or without an attention folder.
    assert find_sheet("k.png", named, None, base) == base / named
    assert find_sheet("k.png", named, maps, base) == base / named
    # The attention folder's file by its bare name comes before the output's folder...
    maps.mkdir()
    (maps / "a.png").write_bytes(b"x")
    assert find_sheet("k.png", named, maps, base) == maps / "a.png"
    # ... and the full relative name inside it before that.
    (maps / "run1").mkdir()
    (maps / named).write_bytes(b"x")
    assert find_sheet("k.png", named, maps, base) == maps / named


def test_without_a_usable_column_the_sheet_is_found_by_its_key(tmp_path):
    maps = tmp_path / "maps"
    by_key = real_sheet(maps, "photos/k.png", ["one"])
    assert by_key == maps / attention_file_name("photos/k.png")
    assert find_sheet("photos/k.png", None, maps, tmp_path) == by_key
    assert find_sheet("photos/k.png", "", maps, tmp_path) == by_key
    assert find_sheet("photos/k.png", "gone.png", maps, tmp_path) == by_key
    assert find_sheet("photos/k.png", None, None, tmp_path) is None  # no folder: no key lookup
    assert find_sheet("photos/other.png", None, maps, tmp_path) is None


def test_an_absolute_column_is_not_looked_for_elsewhere(tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "a.png").write_bytes(b"x")
    (tmp_path / "a.png").write_bytes(b"x")
    named = str(tmp_path / "missing" / "a.png")
    assert find_sheet("k.png", named, maps, tmp_path) is None
    assert find_sheet("k.png", str(maps / "a.png"), None, tmp_path) == maps / "a.png"


def test_a_folder_is_not_a_sheet(tmp_path):
    maps = tmp_path / "maps"
    (maps / attention_file_name("k.png")).mkdir(parents=True)
    (maps / "named.png").mkdir()
    assert find_sheet("k.png", "named.png", maps, tmp_path) is None
