"""Sidecars as dataset-prep users expect (issue 14, item 6), through the CLI:
--caption-extension, --sidecar-prefix/--sidecar-suffix, archive members (an error
row, or --sidecar-dir), the a.jpg/a.png collision, and the `attention` column."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import pytest

from capbatch.cli import main
from capbatch.errors import ExitCode
from capbatch.output.sidecars import member_sidecar_name
from tests.io_fixtures import jpeg_bytes, png_bytes, tar_file
from tests.runtime_fakes import make_fake_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return int(code or 0), capsys.readouterr().err


def journal_rows(path: Path) -> dict[str, dict]:
    return {r["key"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_caption_extension_prefix_and_suffix(capsys, bundle, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(png_bytes())
    journal = tmp_path / "run.jsonl"
    code, err = run_cli(
        capsys, "caption", images, "--format", "txt", "--out", journal, "--model", bundle,
        "--caption-extension", "caption", "--sidecar-prefix", "photo, ",
        "--sidecar-suffix", ", high quality",
    )  # fmt: skip
    assert code == ExitCode.OK, err
    caption = journal_rows(journal)[str(images / "a.png")]["caption"]
    assert (images / "a.caption").read_text() == f"photo, {caption}, high quality\n"
    assert not (images / "a.txt").exists()
    # A rerun finds the same text there (a killed run's sidecar): not a conflict.
    code, err = run_cli(
        capsys, "caption", images, "--format", "txt", "--out", tmp_path / "again.jsonl",
        "--model", bundle, "--caption-extension", ".caption", "--sidecar-prefix", "photo, ",
        "--sidecar-suffix", ", high quality",
    )  # fmt: skip
    assert code == ExitCode.OK, err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--caption-extension", ".caption"], "--caption-extension applies to --format txt"),
        (["--sidecar-dir", "x"], "--sidecar-dir applies to --format txt"),
        (["--format", "txt", "--caption-extension", "a/b"], "is not a file ending"),
        (["--format", "jsonl", "--csv-raw"], "--csv-raw applies to --format csv only"),
    ],
)
def test_sidecar_options_out_of_place_are_usage_errors(capsys, bundle, tmp_path, args, message):
    (tmp_path / "a.png").write_bytes(png_bytes())
    code, err = run_cli(
        capsys, "caption", tmp_path / "a.png", "--out", tmp_path / "o.jsonl", "--model", bundle,
        *args,
    )  # fmt: skip
    assert code == ExitCode.FATAL and message in err, err
    assert not (tmp_path / "o.jsonl").exists()


def test_archive_members_get_an_error_row_or_a_sidecar_in_sidecar_dir(capsys, bundle, tmp_path):
    shard = tmp_path / "shard.tar"
    tar_file(shard, {"000001.png": png_bytes(), "../../escape.png": png_bytes()})
    journal = tmp_path / "run.jsonl"
    base = ("caption", shard, "--format", "txt", "--model", bundle)
    code, err = run_cli(capsys, *base, "--out", journal)
    assert code == ExitCode.SOME_FAILED, err
    for record in journal_rows(journal).values():
        assert record["status"] == "error"
        assert record["error"] == (
            "archive member: no folder of its own for a sidecar (use --sidecar-dir DIR)"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.jsonl", "shard.tar"]

    sidecars = tmp_path / "captions"
    code, err = run_cli(
        capsys, *base, "--out", journal, "--retry-errors", "--sidecar-dir", sidecars
    )
    assert code == ExitCode.OK, err
    rows = journal_rows(journal)
    names = sorted(p.name for p in sidecars.iterdir())
    assert names == sorted(member_sidecar_name(key) for key in rows)
    assert all("/" not in n and not n.startswith(".") for n in names)
    for key, record in rows.items():
        assert (sidecars / member_sidecar_name(key)).read_text() == record["caption"] + "\n"
    assert not (tmp_path.parent / "escape.txt").exists()


def test_same_stem_collision_is_reported_without_advice_to_overwrite(capsys, bundle, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(jpeg_bytes())
    (images / "a.png").write_bytes(png_bytes())
    for overwrite in ([], ["--overwrite-sidecars"]):
        journal = tmp_path / f"run{len(overwrite)}.jsonl"
        code, err = run_cli(
            capsys, "caption", images, "--format", "txt", "--out", journal, "--model", bundle,
            *overwrite,
        )  # fmt: skip
        assert code == ExitCode.SOME_FAILED, err
        rows = journal_rows(journal)
        first, second = rows[str(images / "a.jpg")], rows[str(images / "a.png")]
        assert first["status"] == "ok"
        assert second["status"] == "error"
        assert second["error"].startswith("sidecar a.txt is also the sidecar of a.jpg")
        assert "--overwrite-sidecars" not in second["error"]
        assert (images / "a.txt").read_text() == first["caption"] + "\n"


def test_attention_column_names_each_rows_heatmap(capsys, bundle, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(png_bytes())
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    maps = tmp_path / "maps"
    out = tmp_path / "rows.csv"
    code, err = run_cli(
        capsys, "caption", images, "--out", out, "--model", bundle, "--attention-dir", maps
    )
    assert code == ExitCode.SOME_FAILED, err
    with open(out, newline="", encoding="utf-8") as handle:
        rows = {r["key"]: r for r in csv.DictReader(handle)}
    named = rows[str(images / "a.png")]["attention"]
    assert named and (maps / named).is_file()
    assert rows[str(images / "broken.jpg")]["attention"] == ""
    assert sorted(p.name for p in maps.iterdir()) == [named]
    # Without --attention-dir the column is there, empty.
    plain = tmp_path / "plain.jsonl"
    run_cli(capsys, "caption", images, "--out", plain, "--model", bundle)
    assert all(json.loads(line)["attention"] is None for line in plain.read_text().splitlines())


def test_a_resumed_run_still_refuses_a_sidecar_written_for_another_image(
    capsys, bundle, tmp_path
):
    # Run 1 wrote a.txt for a.jpg; a.png, added before the resumed run, must not
    # take it over: the journal tells the resumed writer who owns a.txt.
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(jpeg_bytes())
    journal = tmp_path / "run.jsonl"
    base = ["caption", images, "--format", "txt", "--out", journal, "--model", bundle]
    code, err = run_cli(capsys, *base, "--overwrite-sidecars")
    assert code == ExitCode.OK, err
    caption = (images / "a.txt").read_text()
    (images / "a.png").write_bytes(png_bytes())
    code, err = run_cli(capsys, *base, "--resume", "--overwrite-sidecars")
    assert code == ExitCode.SOME_FAILED, err
    second = journal_rows(journal)[str(images / "a.png")]
    assert second["status"] == "error"
    assert second["error"].startswith("sidecar a.txt is also the sidecar of a.jpg")
    assert (images / "a.txt").read_text() == caption


@pytest.mark.parametrize(
    "key, name",
    [
        # readable part: the key without its extension, unsafe runs as "_", edges stripped
        ("shard.tar::x/../y z.jpg", "shard.tar_x_.._y_z-{}.txt"),
        ("a.zip::.hidden.png", "a.zip_.hidden-{}.txt"),
        ("::/@@@.jpg", "member-{}.txt"),  # nothing readable left
        ("b.tar::" + "k" * 100 + ".jpg", "k" * 80 + "-{}.txt"),  # the last 80 characters
    ],
)
def test_member_sidecar_names_are_flat_readable_and_keyed_by_a_hash(key, name):
    import hashlib

    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:8]
    assert member_sidecar_name(key) == name.format(digest)
    assert member_sidecar_name(key, ".caption") == name.format(digest)[: -len(".txt")] + ".caption"
    # Undecodable bytes in a member name (surrogate escapes) still hash.
    odd = "c.tar::\udcff.jpg"
    expected = hashlib.sha1(odd.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    assert member_sidecar_name(odd) == f"c.tar-{expected}.txt"


def test_sidecar_dir_is_created_with_its_parents_and_reused(capsys, bundle, tmp_path):
    archive = tmp_path / "shard.tar"
    with tarfile.open(archive, "w") as tar:
        data = png_bytes()
        info = tarfile.TarInfo("inner/a.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    sidecars = tmp_path / "deep" / "er" / "captions"
    journal = tmp_path / "run.jsonl"
    base = ["caption", archive, "--format", "txt", "--out", journal, "--model", bundle]
    code, err = run_cli(capsys, *base, "--sidecar-dir", sidecars)
    assert code == ExitCode.OK, err
    assert [p.name for p in sidecars.iterdir()] == [member_sidecar_name(f"{archive}::inner/a.png")]
    # An existing --sidecar-dir is used as it is (a rerun over the same output).
    code, err = run_cli(capsys, *base, "--sidecar-dir", sidecars, "--overwrite")
    assert code == ExitCode.OK, err


def test_an_existing_sidecar_of_a_sibling_image_is_named_and_kept(capsys, bundle, tmp_path):
    # a.txt was written before (by hand or by a run whose journal is gone): for a.png
    # it is a collision with a.JPG, named as such; for b.png, whose b.txt says
    # something else and has no sibling, the advice is --overwrite-sidecars.
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.JPG").write_bytes(jpeg_bytes())
    (images / "a.png").write_bytes(png_bytes())
    (images / "b.png").write_bytes(png_bytes())
    (images / "a.txt").write_text("someone's caption of a.JPG\n")
    (images / "b.txt").write_text("an older caption\n")
    journal = tmp_path / "run.jsonl"
    code, err = run_cli(
        capsys, "caption", images, "--glob", "*.png", "--format", "txt", "--out", journal,
        "--model", bundle,
    )  # fmt: skip
    assert code == ExitCode.SOME_FAILED, err
    rows = journal_rows(journal)
    assert rows[str(images / "a.png")]["error"] == (
        "sidecar a.txt is also the sidecar of a.JPG (same name, another extension); "
        "rename one of the images"
    )
    assert rows[str(images / "b.png")]["error"] == "sidecar b.txt exists (use --overwrite-sidecars)"
    assert (images / "a.txt").read_text() == "someone's caption of a.JPG\n"
    assert (images / "b.txt").read_text() == "an older caption\n"
