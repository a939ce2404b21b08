"""Per-row trust signals through `capbatch caption` with the shipped bundle:
domain_distance / in_domain, truncated and repeated, and the summary's warnings."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from capbatch.captioner import repeats_back_to_back
from capbatch.rows import ROW_FIELDS, Row
from tests.cli.test_caption import run_cli
from tests.runtime.test_domain_shipped import CAT, SAMPLES, bundle_copy


@pytest.fixture
def photo_and_scenes(tmp_path):
    """The shipped cat photo beside four held-out scenes (from samples/)."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(CAT, folder / "photo_cat.jpg")
    for path in SAMPLES[:4]:
        shutil.copy(path, folder / path.name)
    return folder


def rows_of(path):
    return {row["key"].rsplit("/", 1)[-1]: row for row in map(json.loads, path.open())}


def test_a_real_photo_is_flagged_and_held_out_scenes_are_not(capsys, tmp_path, photo_and_scenes):
    out = tmp_path / "rows.jsonl"
    code, _, err = run_cli(capsys, "caption", photo_and_scenes, "--out", out, "-q")
    assert code == 0
    rows = rows_of(out)
    assert rows["photo_cat.jpg"]["in_domain"] is False
    scenes = [row for name, row in rows.items() if name.startswith("scene_")]
    assert len(scenes) == 4 and all(row["in_domain"] is True for row in scenes)
    # The distance is the number behind the flag: the photo is far beyond every scene.
    assert rows["photo_cat.jpg"]["domain_distance"] > max(r["domain_distance"] for r in scenes)


def test_the_summary_says_how_many_images_look_unlike_the_training_data(
    capsys, tmp_path, photo_and_scenes
):
    code, _, err = run_cli(capsys, "caption", photo_and_scenes, "--out", tmp_path / "r.csv")
    assert code == 0
    assert "1 of 5 images look unlike the model's training data" in err


def test_a_caption_cut_at_the_length_limit_is_flagged_truncated(capsys, tmp_path):
    out = tmp_path / "rows.jsonl"
    # Every sample's caption is longer than two words, so two tokens never reach <end>.
    code, _, err = run_cli(capsys, "caption", SAMPLES[0], "--out", out, "--max-len", "2")
    assert code == 0
    (row,) = rows_of(out).values()
    assert row["truncated"] is True and len(row["caption"].split()) == 2
    assert "1 caption(s) stopped at the length limit" in err

    full = tmp_path / "full.jsonl"
    assert run_cli(capsys, "caption", SAMPLES[0], "--out", full)[0] == 0
    assert next(iter(rows_of(full).values()))["truncated"] is False


def test_a_bundle_without_statistics_leaves_the_domain_columns_empty(capsys, tmp_path):
    bundle = bundle_copy(tmp_path, with_stats=False)
    out = tmp_path / "rows.csv"
    code, _, err = run_cli(capsys, "caption", CAT, "--out", out, "--model", bundle)
    assert code == 0
    with out.open(newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert tuple(row) == ROW_FIELDS
    assert row["domain_distance"] == "" and row["in_domain"] == ""
    assert row["status"] == "ok" and "unlike the model's training data" not in err


def test_error_rows_carry_no_signals(capsys, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    out = tmp_path / "rows.jsonl"
    assert run_cli(capsys, "caption", broken, "--out", out)[0] == 1
    (row,) = rows_of(out).values()
    assert row["status"] == "error"
    assert [row[name] for name in ("domain_distance", "in_domain", "truncated", "repeated")] == [
        None
    ] * 4


@pytest.mark.parametrize(
    "caption, repeated",
    [
        ("three small white circles circles circles", True),
        ("a red circle to the left of a red circle to the left of", False),  # 6 words: too long
        ("a red circle above a blue square", False),
        ("two green stars", False),
        ("a man and a woman and a dog", False),
        ("of the of the park", True),
    ],
)
def test_back_to_back_repetition(caption, repeated):
    assert repeats_back_to_back(caption.split()) is repeated


def test_rows_of_older_runs_read_without_the_new_columns():
    record = {name: None for name in ROW_FIELDS[:9]} | {"key": "k", "status": "ok", "model_id": "m"}
    row = Row.from_record(record)
    assert (row.in_domain, row.truncated, row.domain_distance) == (None, None, None)


# -- caption --report: the run's HTML report at the end ----------------------------------


def test_caption_report_writes_the_runs_page(capsys, tmp_path, photo_and_scenes):
    out, page = tmp_path / "rows.csv", tmp_path / "run.html"
    code, _, err = run_cli(capsys, "caption", photo_and_scenes, "--out", out, "--report", page)
    assert code == 0
    html = page.read_text(encoding="utf-8")
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5
    for row in rows:  # every caption and key of the run is on the page
        assert json.dumps(row["caption"])[1:-1] in html and row["key"].rsplit("/", 1)[-1] in html
    assert f"report of 5 rows -> {page}" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "-"], "--report needs the rows in a file"),
        (["--out", "{report}"], "would overwrite the output itself"),
    ],
)
def test_caption_report_target_is_checked_before_the_model_loads(capsys, tmp_path, extra, message):
    page = tmp_path / "run.jsonl"
    extra = [str(page) if arg == "{report}" else arg for arg in extra]
    code, _, err = run_cli(
        capsys, "caption", SAMPLES[0], *extra, "--report", page, "--model", tmp_path / "nope"
    )
    assert code == 2 and message in err and not page.exists()


# -- --encoder-runtime / --precision: checked before the model loads ---------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--precision", "bf16"], "precision bf16 needs the openvino encoder runtime"),
        (["--encoder-runtime", "openvino", "--device", "cuda"], "openvino"),
        (["--encoder-runtime", "tpu"], "--encoder-runtime"),
    ],
)
def test_encoder_runtime_options_are_checked_before_the_model_loads(capsys, tmp_path, extra, message):
    out = tmp_path / "rows.jsonl"
    code, _, err = run_cli(
        capsys, "caption", SAMPLES[0], "--out", out, *extra, "--model", tmp_path / "nope"
    )
    assert code == 2 and message in err and "nope" not in err and not out.exists()


def test_openvino_on_a_bundle_without_an_agreement_record_is_one_line(capsys, tmp_path):
    bundle = bundle_copy(tmp_path)
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest.pop("runtime_agreement", None)
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    code, _, err = run_cli(
        capsys, "caption", SAMPLES[0], "--out", tmp_path / "r.jsonl", "--model", bundle,
        "--encoder-runtime", "openvino",
    )  # fmt: skip
    assert code == 2 and "records no caption agreement for the openvino-f32 encoder" in err
