"""The bad-input corpus through `capbatch caption`: one row per input, clear reasons, run goes on."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from capbatch.cli import main
from capbatch.errors import ExitCode
from capbatch.image_decode import decode_image
from capbatch.preprocess import PreprocessSpec
from tests.badinputs import (
    HOSTILE_MEMBERS,
    OK,
    deny_unreadable,
    exif_rotated_jpeg,
    expected_error,
    make_corpus,
    upright_copy_png,
)
from tests.runtime_fakes import make_fake_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


def run_cli(capsys, *args) -> tuple[int, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # pragma: no cover - main returns codes
        code = exc.code
    return int(code or 0), capsys.readouterr().err


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def tree(root: Path) -> set[str]:
    return {
        os.path.relpath(os.path.join(d, n), root)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
    }


def test_corpus_covers_at_least_20_kinds(tmp_path):
    entries = make_corpus(tmp_path / "corpus")
    kinds = {e.kind for e in entries}
    assert len(kinds) >= 20 and len(kinds) == len(entries)
    assert len({e.relative for e in entries}) == len(entries)
    assert {e.expected == OK for e in entries} == {True, False}


@pytest.mark.filterwarnings("ignore")  # Pillow's notes on the odd files it repairs
def test_every_corpus_input_gets_exactly_one_clear_row(capsys, bundle, tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    entries = make_corpus(corpus)
    for hostile in HOSTILE_MEMBERS:
        if hostile.startswith("/"):
            Path(hostile).unlink(missing_ok=True)
    deny_unreadable(monkeypatch)  # root reads chmod-000 files: inject the EACCES
    work = tmp_path / "a" / "b"  # "../../x.png" from here stays inside tmp_path
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    before = tree(tmp_path)
    out = tmp_path / "out" / "rows.csv"

    code, err = run_cli(
        capsys, "caption", corpus, "--out", out, "--model", bundle, "--device", "cpu",
        "--batch-size", "4", "--workers", "2",
    )  # fmt: skip

    assert code == ExitCode.SOME_FAILED, err
    assert "Traceback" not in err and "internal error" not in err
    rows = read_rows(out)
    keys = [row["key"] for row in rows]
    assert len(keys) == len(set(keys)), "a key was written twice"
    expected = {f"{corpus}/{e.relative}": e for e in entries}
    assert set(keys) == set(expected)
    for row in rows:
        entry = expected[row["key"]]
        reason = expected_error(entry)
        if reason is None:
            assert row["status"] == "ok" and row["caption"], (entry.kind, row["error"])
            assert int(row["width"]) >= 1 and int(row["height"]) >= 1
        else:
            assert row["status"] == "error" and not row["caption"], entry.kind
            assert row["error"].startswith(reason), (entry.kind, row["error"])
            # An unexpected exception shows up as "decode failed: <Type>": never wanted.
            assert "decode failed" not in row["error"] and "\n" not in row["error"]
    by_name = {row["key"].rsplit("/", 1)[-1]: row for row in rows}
    assert (by_name["wide-20000x10.png"]["width"], by_name["wide-20000x10.png"]["height"]) == (
        "20000",
        "10",
    )
    assert (by_name["rotated.jpg"]["width"], by_name["rotated.jpg"]["height"]) == ("40", "80")
    assert "caf\\xe9.png" in by_name  # escaped key, the file itself was read
    # Archives are never extracted: nothing new anywhere but the output folder.
    assert tree(tmp_path) - before == {"out", "out/rows.csv"}
    assert not any(Path(h).exists() for h in HOSTILE_MEMBERS if h.startswith("/"))


def test_exif_rotated_jpeg_is_captioned_upright(capsys, bundle, tmp_path):
    rotated = exif_rotated_jpeg()
    (tmp_path / "rotated.jpg").write_bytes(rotated)
    (tmp_path / "upright.png").write_bytes(upright_copy_png(rotated))
    spec = PreprocessSpec(size=32)
    from_rotated = decode_image(rotated, spec)
    from_upright = decode_image((tmp_path / "upright.png").read_bytes(), spec)
    assert (from_rotated.width, from_rotated.height) == (40, 80)
    np.testing.assert_array_equal(from_rotated.pixels, from_upright.pixels)
    # The marker block is top-left as stored; upright (90 degrees clockwise) it is top-right.
    upright = np.asarray(from_rotated.pixels, np.int16)  # (32, 32, 3)
    assert upright[2, -3, 1] < 100 and upright[2, 2, 1] > 200  # red: low green channel

    out = tmp_path / "rows.csv"
    code, err = run_cli(
        capsys, "caption", tmp_path / "rotated.jpg", tmp_path / "upright.png",
        "--out", out, "--model", bundle, "-q",
    )  # fmt: skip
    assert code == ExitCode.OK, err
    first, second = read_rows(out)
    assert first["caption"] == second["caption"] and first["score"] == second["score"]
