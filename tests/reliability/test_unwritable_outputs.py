"""Outputs that cannot be written are one clear fatal line, never an internal error."""

from __future__ import annotations

import pytest

from capbatch.cli import main
from capbatch.errors import ExitCode
from capbatch.output_lock import lock_path_for
from tests.io_fixtures import png_bytes
from tests.runtime_fakes import make_fake_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


def fatal_line(capsys, *args) -> str:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == ExitCode.FATAL, err
    assert "internal error" not in err and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capbatch: error: "), err
    return lines[0]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_output_that_is_a_directory(capsys, bundle, tmp_path, fmt):
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes())
    out = tmp_path / f"taken.{fmt}"
    out.mkdir()
    message = fatal_line(capsys, "caption", image, "--out", out, "--model", bundle, "-q")
    assert f"{out} is a directory; --out must name a file" in message
    assert list(out.iterdir()) == [] and not lock_path_for(out).exists()


def test_output_below_a_plain_file(capsys, bundle, tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes())
    (tmp_path / "afile").write_text("not a folder")
    out = tmp_path / "afile" / "sub" / "rows.csv"
    message = fatal_line(capsys, "caption", image, "--out", out, "--model", bundle, "-q")
    assert "a parent is a file" in message
    assert (tmp_path / "afile").read_text() == "not a folder"
