"""What `--attention-dir` promises (capbatch/attention_maps.py, docs/runtime.md,
docs/report.md): one PNG per image named after its key, one labelled panel per
decoding step laid out the way `capbatch report` reads it, each panel the input image
with that step's attention drawn over it in red."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from capbatch.attention_maps import (
    LABEL_HEIGHT,
    PANELS_PER_ROW,
    attention_file_name,
    render_attention,
    save_attention_map,
)
from capbatch.errors import ExitCode
from tests.cli.test_caption import run_cli
from tests.runtime_fakes import make_fake_bundle

SIZE = 48
PEAK_RED = 153  # 60 % of full red over black
WHITE = (255, 255, 255)


def sha8(key: str) -> str:
    return hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def black(size: int = SIZE) -> np.ndarray:
    return np.zeros((size, size, 3), np.uint8)


def gradient(size: int = SIZE) -> np.ndarray:
    """Every channel runs through all of 0..255 (several times)."""
    values = (np.arange(size * size) % 256).reshape(size, size).astype(np.uint8)
    return np.stack([values, values[::-1], values.T], axis=-1)


def uniform(steps: int, regions: int = 4, weight: float = 0.25) -> np.ndarray:
    return np.full((steps, regions), weight, np.float32)


def one_hot(steps: int, regions: int = 4) -> np.ndarray:
    """Step i attends only to region i % regions."""
    alphas = np.zeros((steps, regions), np.float32)
    alphas[np.arange(steps), np.arange(steps) % regions] = 1.0
    return alphas


def beyond(cell: int, size: int = SIZE) -> slice:
    """The pixels of a 2x2 grid's row/column `cell` farther out than its centre."""
    centre = size // 4 + cell * size // 2
    return slice(centre + 1, size) if cell else slice(0, centre)


def panel(sheet: Image.Image, index: int, size: int = SIZE) -> np.ndarray:
    left = (index % PANELS_PER_ROW) * size
    top = (index // PANELS_PER_ROW) * (size + LABEL_HEIGHT) + LABEL_HEIGHT
    return np.asarray(sheet.crop((left, top, left + size, top + size)))


def label_strip(sheet: Image.Image, index: int, size: int = SIZE) -> np.ndarray:
    left = (index % PANELS_PER_ROW) * size
    top = (index // PANELS_PER_ROW) * (size + LABEL_HEIGHT)
    return np.asarray(sheet.crop((left, top, left + size, top + LABEL_HEIGHT)))


def written_label(text: str, size: int = SIZE) -> np.ndarray:
    """What a label strip reading `text` (black, top left, on white) looks like."""
    strip = Image.new("RGB", (size, LABEL_HEIGHT), "white")
    ImageDraw.Draw(strip).text((2, 1), text, fill="black")
    return np.asarray(strip)


# -- file names: what `capbatch report` looks a row's map up by -------------------------------


@pytest.mark.parametrize(
    ("key", "readable"),
    [
        ("a/b.jpg", "a_b.jpg"),
        ("shards/x.tar::img 01.jpg", "shards_x.tar_img_01.jpg"),
        ("../up/./café.png", "up_._caf_.png"),
        ("C:\\photos\\a-1_b.JPG", "C_photos_a-1_b.JPG"),
        ("Xmas/tree X.jpg", "Xmas_tree_X.jpg"),
    ],
)
def test_file_name_is_the_flattened_key_then_its_hash(key, readable):
    assert attention_file_name(key) == f"{readable}-{sha8(key)}.png"


def test_a_key_with_nothing_readable_is_named_image():
    for key in ("", "///", "..", "日本.", "._."):
        assert attention_file_name(key) == f"image-{sha8(key)}.png"


def test_a_long_key_keeps_its_last_80_readable_characters():
    key = "dir/" + "".join(chr(ord("a") + i % 26) for i in range(200)) + ".jpg"
    name = attention_file_name(key)
    assert name == f"{key[-80:]}-{sha8(key)}.png"
    assert len(name) == 80 + 1 + 8 + 4


def test_keys_that_flatten_alike_still_get_different_files():
    keys = ["a/b.jpg", "a_b.jpg", "a b.jpg", "a//b.jpg"]
    names = {attention_file_name(key) for key in keys}
    assert len(names) == len(keys)


def test_a_non_utf8_file_name_key_gets_a_name_and_a_file(tmp_path):
    # os.fsdecode turns undecodable bytes of a Linux file name into lone surrogates.
    key = "photos/caf\udce9.jpg"
    name = attention_file_name(key)
    assert name == f"photos_caf_.jpg-{sha8(key)}.png"
    assert name != attention_file_name("photos/caf\udce8.jpg")
    saved = save_attention_map(tmp_path, key, black(), ["a"], uniform(1))
    assert saved == tmp_path / name and saved.is_file()


# -- the sheet's layout: what `capbatch report` cuts panels out of ----------------------------


@pytest.mark.parametrize(
    ("steps", "columns", "rows"), [(1, 1, 1), (2, 2, 1), (5, 5, 1), (6, 5, 2), (11, 5, 3)]
)
def test_sheet_has_up_to_five_panels_per_row_each_under_a_label(steps, columns, rows):
    sheet = render_attention(black(), ["w"] * steps, uniform(steps))
    assert sheet.mode == "RGB"
    assert sheet.size == (columns * SIZE, rows * (SIZE + LABEL_HEIGHT))
    for index in range(steps):
        tinted = panel(sheet, index)
        assert (tinted == (PEAK_RED, 0, 0)).all(), index


def test_slots_after_the_last_panel_and_label_backgrounds_are_white():
    sheet = render_attention(black(), [""] * 7, uniform(7))
    for index in (7, 8, 9):
        assert (panel(sheet, index) == WHITE).all()
        assert (label_strip(sheet, index) == WHITE).all()
    for index in range(7):
        assert (label_strip(sheet, index) == WHITE).all()  # empty words: nothing drawn


def test_panel_i_shows_step_i_attention_over_the_row_major_region_grid():
    steps = 7  # two rows of panels
    sheet = render_attention(black(), ["w"] * steps, one_hot(steps))
    half = SIZE // 2
    for index in range(steps):
        red = panel(sheet, index)[..., 0].astype(int)
        row, col = divmod(index % 4, 2)
        hot = red[row * half : (row + 1) * half, col * half : (col + 1) * half]
        # Past the centre of the region diagonally opposite, bilinear heat is zero.
        far = red[beyond(1 - row), beyond(1 - col)]
        assert hot.max() == PEAK_RED and red.max() == PEAK_RED
        assert (far == 0).all()


def test_each_panel_is_labelled_with_its_word_and_steps_past_the_words_with_end():
    words = ["a", "dog", "runs", "on", "the", "big"]
    sheet = render_attention(black(), words[:4], uniform(5))
    for index, text in enumerate(["a", "dog", "runs", "on", "<end>"]):
        assert np.array_equal(label_strip(sheet, index), written_label(text)), text
    # More words than steps: only as many panels as steps, labelled with the first words.
    sheet = render_attention(black(), words, uniform(2))
    assert sheet.size == (2 * SIZE, SIZE + LABEL_HEIGHT)
    assert np.array_equal(label_strip(sheet, 1), written_label("dog"))


# -- the heatmap --------------------------------------------------------------------------------


def test_where_attention_is_zero_the_image_is_unchanged():
    image = gradient()
    alphas = np.array([[1.0, 0.0, 0.0, 0.0]], np.float32)
    shown = panel(render_attention(image, ["w"], alphas), 0)
    cold = beyond(1)  # past the centre of the far region, no heat reaches
    assert np.array_equal(shown[cold, cold], image[cold, cold])
    assert (panel(render_attention(black(), ["w"], alphas), 0)[cold, cold] == 0).all()


def test_the_peak_of_each_step_is_sixty_percent_pure_red_over_the_image():
    image = gradient().astype(np.float64)
    # Uniform attention is its own peak everywhere, whatever the weights sum to.
    for weight in (0.25, 0.01, 3.0):
        shown = panel(render_attention(gradient(), ["w"], uniform(1, weight=weight)), 0)
        ideal = 0.4 * image + np.array([PEAK_RED, 0, 0])
        error = shown.astype(np.float64) - ideal
        # Within the truncation to uint8 of the ideal blend: only red is added, and
        # never more than 60 % of full red.
        assert (error > -1.0 - 1e-6).all() and (error <= 1e-3).all(), weight


def test_the_heat_fades_from_the_attended_region_without_reversing():
    alphas = np.array([[0.0, 0.0, 0.0, 0.5]], np.float32)
    red = panel(render_attention(black(), ["w"], alphas), 0)[..., 0].astype(int)
    diagonal = np.diagonal(red)
    assert diagonal[-1] == PEAK_RED and diagonal[0] == 0
    assert (np.diff(diagonal) >= 0).all()


def test_between_region_centres_the_heat_falls_in_a_straight_line():
    # Bilinear: a pixel halfway between a region that got all the attention and one
    # that got none shows half the heat, not more (no plateau or ringing of a cubic).
    alphas = np.array([[1.0, 0.0, 0.0, 0.0]], np.float32)
    red = panel(render_attention(black(), ["w"], alphas), 0)[5, :, 0].astype(int)
    hot, cold = SIZE // 4, 3 * SIZE // 4  # the two regions' centres along the top row
    assert red[hot - 1] == PEAK_RED and red[cold] == 0
    ramp = red[hot:cold]
    assert (np.diff(ramp) <= 0).all()
    assert np.abs(np.diff(ramp, 2)).max() <= 1  # only uint8 truncation bends it
    assert abs(int(red[SIZE // 2 - 1]) + int(red[SIZE // 2]) - PEAK_RED) <= 1


def test_all_zero_attention_draws_no_heat():
    image = gradient()
    shown = panel(render_attention(image, ["w"], np.zeros((1, 4), np.float32)), 0)
    assert np.array_equal(shown, image)


def test_attention_that_is_not_over_a_square_grid_is_refused_with_the_count():
    with pytest.raises(ValueError, match=r"attention over 6 regions is not a square grid"):
        render_attention(black(), ["w"], np.full((1, 6), 1 / 6, np.float32))


def test_a_nine_region_grid_is_drawn_as_three_by_three():
    alphas = np.zeros((1, 9), np.float32)
    alphas[0, 8] = 1.0  # bottom right
    red = panel(render_attention(black(), ["w"], alphas), 0)[..., 0]
    assert red[-1, -1] == PEAK_RED and red[: SIZE // 2, :].max() == 0


# -- saving -------------------------------------------------------------------------------------


def test_save_creates_missing_parent_folders_and_returns_the_png(tmp_path):
    directory = tmp_path / "runs" / "today" / "maps"
    saved = save_attention_map(str(directory), "a/b.jpg", black(), ["a", "b"], uniform(3))
    assert saved == directory / attention_file_name("a/b.jpg")
    with Image.open(saved) as sheet:
        assert sheet.format == "PNG" and sheet.size == (3 * SIZE, SIZE + LABEL_HEIGHT)
    # A second image into the same (now existing) folder.
    again = save_attention_map(directory, "c.jpg", black(), ["c"], uniform(2))
    assert sorted(p.name for p in directory.iterdir()) == sorted([saved.name, again.name])


# -- end to end through `capbatch caption --attention-dir` ------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


def test_caption_attention_dir_writes_one_sheet_per_captioned_image(capsys, bundle, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    for seed in range(2):
        rng = np.random.default_rng(seed)
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(
            images / f"img{seed}.png"
        )
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    maps = tmp_path / "not" / "yet" / "maps"
    out = tmp_path / "o.jsonl"
    code, _, _ = run_cli(
        capsys, "caption", images, "--out", out, "--model", bundle, "--attention-dir", maps
    )
    assert code == ExitCode.SOME_FAILED  # the broken one
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    ok = [row for row in rows if row["status"] == "ok"]
    assert len(ok) == 2 and all(row["attention"] is None for row in rows if row not in ok)
    assert sorted(p.name for p in maps.iterdir()) == sorted(row["attention"] for row in ok)
    size = 32  # the fake bundle's input size
    for row in ok:
        assert row["attention"] == attention_file_name(row["key"])
        with Image.open(maps / row["attention"]) as sheet:
            steps = len(row["caption"].split()) + 1  # the words, then <end>
            steps = min(steps, 8)  # the fake bundle's max_len
            columns = min(PANELS_PER_ROW, steps)
            rows_of_panels = -(-steps // PANELS_PER_ROW)
            assert sheet.size == (columns * size, rows_of_panels * (size + LABEL_HEIGHT))
