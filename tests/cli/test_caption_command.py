"""What `capbatch caption`'s command body promises (capbatch/caption_cli.py), in-process
so that mutation testing sees it: Pillow's warnings are silenced and nothing else is,
every engine-only option is refused by name on the wrong engine, and --engine ray
gets what it needs (the local engine never imports Ray)."""

# ruff: noqa: F811 (the fixture bundle is imported by name, then requested)

from __future__ import annotations

import io
import warnings

import pytest
from PIL import Image

from capbatch import api
from capbatch.engines import ray_options
from capbatch.errors import ExitCode
from capbatch.job import RunSummary
from tests.cli.test_caption import bundle, read_csv, run_cli  # noqa: F401 (fixture)

CORRUPT_EXIF = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00\x12\x01\x03\x00\x01\x00"


def test_pillow_warnings_are_silenced_and_no_others(capsys, bundle, tmp_path):
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
        (
            ["--threads", "2", "--engine", "ray"],
            "--threads applies to the local engine only (Ray actors use one CPU each)",
        ),
    ],  # fmt: skip
)
def test_engine_only_options_are_refused_by_name(capsys, bundle, tmp_path, args, message):
    photos = tmp_path / "photos"
    photos.mkdir()
    code, _, err = run_cli(capsys, "caption", photos, "--out", tmp_path / "o.csv",
                           "--model", bundle, *args)  # fmt: skip
    assert (code, err) == (ExitCode.FATAL, f"capbatch: error: {message}\n")


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (40, 30), "red").save(folder / "red.png")
    return folder


def test_stats_json_naming_a_folder_is_refused_before_the_model(capsys, bundle, photos, tmp_path):
    code, _, err = run_cli(capsys, "caption", photos, "--out", tmp_path / "o.csv",
                           "--model", "/nonexistent/bundle", "--stats-json", tmp_path)  # fmt: skip
    assert (code, err) == (
        ExitCode.FATAL,
        f"capbatch: error: --stats-json {tmp_path} is a directory; name the JSON file to write\n",
    )


def test_engine_ray_gets_the_options_and_an_absolute_model_path(
    capsys,
    bundle,
    photos,
    tmp_path,
    monkeypatch,
):
    """Ray actors may start in another working directory, so a relative --model is
    resolved for them; the run itself is tests/engines/test_ray.py's (slow) business."""
    calls = []

    from capbatch.engines import ray_driver

    def fake_ray_run(options, args, ray, *, stop, on_progress, on_start):
        calls.append((options.out, options.inputs, args.model, args.batch_size,
                      ray.address, ray.actors))  # fmt: skip
        return RunSummary(out=options.out, fmt="jsonl", ok=1)

    monkeypatch.setattr(ray_driver, "run_on_ray", fake_ray_run)
    monkeypatch.setattr(ray_driver, "import_ray", lambda: None)
    monkeypatch.chdir(bundle.parent)
    code, _, err = run_cli(capsys, "caption", photos, "--out", tmp_path / "o.jsonl",
                           "--model", bundle.name, "--engine", "ray", "--ray-address", "auto",
                           "--actors", "3", "--batch-size", "5", "-q")  # fmt: skip
    assert (code, err) == (ExitCode.OK, "")
    assert calls == [
        (tmp_path / "o.jsonl", (str(photos),), str(bundle.resolve()), 5, "auto", 3)
    ]
    # Without --model the actors load the built-in model themselves: nothing to resolve.
    monkeypatch.setattr(api, "model_notice", lambda model: None)
    code, _, err = run_cli(capsys, "caption", photos, "--out", tmp_path / "p.jsonl",
                           "--engine", "ray", "-q")  # fmt: skip
    assert (code, err) == (ExitCode.OK, "")
    assert calls[-1][2] is None


def test_the_local_engine_needs_no_ray(capsys, bundle, photos, tmp_path, monkeypatch):
    def no_ray():
        raise AssertionError("the local engine imported ray")

    monkeypatch.setattr(ray_options, "import_ray", no_ray)
    code, _, err = run_cli(capsys, "caption", photos, "--out", tmp_path / "o.csv",
                           "--model", bundle, "-q")  # fmt: skip
    assert (code, err) == (ExitCode.OK, "")


def test_report_naming_a_folder_is_refused_before_the_model(capsys, photos, tmp_path):
    code, _, err = run_cli(capsys, "caption", photos, "--out", tmp_path / "o.csv",
                           "--model", "/nonexistent/bundle", "--report", tmp_path)  # fmt: skip
    assert (code, err) == (
        ExitCode.FATAL,
        f"capbatch: error: --report {tmp_path} is a directory; name the HTML file to write\n",
    )


def test_report_with_rows_on_stdout_is_refused_in_these_words(capsys, photos, tmp_path):
    code, out, err = run_cli(capsys, "caption", photos, "--out", "-", "--format", "csv",
                             "--model", "/nonexistent/bundle", "--report", tmp_path / "r.html")  # fmt: skip
    assert (code, out) == (ExitCode.FATAL, "")
    assert err == "capbatch: error: --report needs the rows in a file: not with --out -\n"
