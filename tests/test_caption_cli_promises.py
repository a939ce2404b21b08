"""What `capbatch caption`'s command body promises (capbatch/caption_cli.py), in-process
so that mutation testing sees it: Pillow's warnings are silenced and nothing else is,
and every engine-only option is refused by name on the wrong engine."""

from __future__ import annotations

import io
import warnings

import pytest
from PIL import Image

from capbatch.errors import ExitCode
from tests.test_cli_caption import bundle, read_csv, run_cli  # noqa: F401 (fixture)

CORRUPT_EXIF = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00\x12\x01\x03\x00\x01\x00"


def test_pillow_warnings_are_silenced_and_no_others(capsys, bundle, tmp_path):  # noqa: F811
    photos = tmp_path / "photos"
    photos.mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buffer, "JPEG", exif=CORRUPT_EXIF)
    (photos / "exif.jpg").write_bytes(buffer.getvalue())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        # Without capbatch's filter this file warns (the test would be empty otherwise).
        with Image.open(photos / "exif.jpg") as image:
            image.getexif()
        assert [w for w in seen if "PIL" in w.filename], "the image no longer makes Pillow warn"
        seen.clear()
        code, _, err = run_cli(capsys, "caption", photos, "--out", tmp_path / "o.csv",
                               "--model", bundle, "-q")  # fmt: skip
        assert (code, err) == (ExitCode.OK, "")
        assert read_csv(tmp_path / "o.csv")[0]["status"] == "ok"
        assert [str(w.message) for w in seen if "PIL" in w.filename] == []
        warnings.warn("a warning from elsewhere", UserWarning, stacklevel=1)
        assert [str(w.message) for w in seen] == ["a warning from elsewhere"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ray-address", "auto"], "--ray-address needs --engine ray"),
        (["--actors", "2"], "--actors needs --engine ray"),
        (["--threads", "2", "--engine", "ray"],
         "--threads applies to the local engine only (Ray actors use one CPU each)"),
    ],  # fmt: skip
)
def test_engine_only_options_are_refused_by_name(capsys, bundle, tmp_path, args, message):  # noqa: F811
    photos = tmp_path / "photos"
    photos.mkdir()
    code, _, err = run_cli(capsys, "caption", photos, "--out", tmp_path / "o.csv",
                           "--model", bundle, *args)  # fmt: skip
    assert (code, err) == (ExitCode.FATAL, f"capbatch: error: {message}\n")
