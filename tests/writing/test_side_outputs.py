"""Every file a caption run writes besides --out (--stats-json, --report,
--attention-dir, Parquet parts, --sidecar-dir) and `capbatch report --out`: checked
before the model loads (capbatch/write_targets.py, called by capbatch/preflight.py)
and written through the one writer (capbatch/output/durable.py write_file), so a
planted link is never followed and nothing but the run's targets changes."""

# ruff: noqa: F811 (the fixtures bundle and photos are imported by name, then requested)

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from capbatch import captioner as captioner_module
from capbatch.errors import ExitCode
from tests.cli.test_caption import bundle, photos, read_csv, run_cli  # noqa: F401 (fixtures)

SECRET = "the victim's own bytes\n"


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file outside the run that a planted link points at: it must never change."""
    path = tmp_path / "elsewhere" / "victim.txt"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the model is loaded: refusals must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(captioner_module.Captioner, "from_args", classmethod(refuse))


def caption(capsys, bundle, photos, out, *args):
    return run_cli(capsys, "caption", photos, "--out", out, "--model", bundle, "-q", *args)


# -- links ------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--stats-json", "--report"])
def test_a_link_as_a_side_output_is_refused_before_the_model_and_its_target_kept(
    capsys, bundle, photos, tmp_path, victim, no_model, flag
):
    target = tmp_path / "side.out"
    target.symlink_to(victim)
    code, _, err = caption(capsys, bundle, photos, tmp_path / "c.csv", flag, target)
    assert code == ExitCode.FATAL
    assert err == (
        f"capbatch: error: {flag} {target} is a symbolic link (to {victim}); capbatch does "
        "not write through links: name the file itself\n"
    )
    assert victim.read_text() == SECRET and target.is_symlink()
    assert not (tmp_path / "c.csv").exists()


def test_a_link_to_the_processs_stdout_is_refused_not_replaced_by_a_file(
    capsys, bundle, photos, tmp_path
):
    # What /dev/stdout is, planted in tmp_path: a regression must not replace the
    # machine's own /dev/stdout with a regular file (as root it could).
    stdout = tmp_path / "stdout"
    stdout.symlink_to("/proc/self/fd/1")
    code, _, err = caption(capsys, bundle, photos, tmp_path / "c.csv", "--stats-json", stdout)
    assert code == ExitCode.FATAL and f"--stats-json {stdout} is a symbolic link" in err
    assert stdout.is_symlink()


def test_links_planted_at_the_old_fixed_temporary_names_are_never_followed(
    capsys, bundle, photos, tmp_path, victim
):
    # Earlier versions wrote ".stats.json.tmp" and ".report.html.<random>.tmp" there.
    (tmp_path / ".stats.json.tmp").symlink_to(victim)
    code, _, _ = caption(
        capsys, bundle, photos, tmp_path / "c.csv", "--stats-json", tmp_path / "stats.json",
        "--report", tmp_path / "report.html",
    )  # fmt: skip
    assert code == ExitCode.SOME_FAILED  # photos/broken.jpg
    assert victim.read_text() == SECRET
    stats = tmp_path / "stats.json"
    assert not stats.is_symlink() and json.loads(stats.read_text())["rows"] == 4
    assert (tmp_path / ".stats.json.tmp").is_symlink()  # left as it was
    leftovers = [p.name for p in tmp_path.iterdir() if ".tmp" in p.name and not p.is_symlink()]
    assert leftovers == []


def test_a_link_at_an_attention_map_name_is_replaced_never_written_through(
    capsys, bundle, photos, tmp_path, victim
):
    maps = tmp_path / "maps"
    code, _, _ = caption(capsys, bundle, photos, tmp_path / "c1.csv", "--attention-dir", maps)
    assert code == ExitCode.SOME_FAILED
    names = sorted(p.name for p in maps.iterdir())
    for name in names:  # every predictable name now a link to the victim
        (maps / name).unlink()
        (maps / name).symlink_to(victim)
    code, _, _ = caption(capsys, bundle, photos, tmp_path / "c2.csv", "--attention-dir", maps)
    assert code == ExitCode.SOME_FAILED
    assert victim.read_text() == SECRET
    assert sorted(p.name for p in maps.iterdir()) == names
    assert all(not (maps / name).is_symlink() for name in names)
    assert all((maps / name).read_bytes().startswith(b"\x89PNG") for name in names)


def test_an_attention_dir_that_is_a_link_is_refused(capsys, bundle, photos, tmp_path, no_model):
    real = tmp_path / "real-maps"
    real.mkdir()
    link = tmp_path / "maps"
    link.symlink_to(real)
    code, _, err = caption(capsys, bundle, photos, tmp_path / "c.csv", "--attention-dir", link)
    assert code == ExitCode.FATAL
    assert err.startswith(f"capbatch: error: --attention-dir {link} is a symbolic link")
    assert list(real.iterdir()) == []


def test_a_parquet_parts_folder_planted_as_a_link_is_refused_and_its_target_untouched(
    capsys, bundle, photos, tmp_path
):
    pytest.importorskip("pyarrow")
    elsewhere = tmp_path / "elsewhere-parts"
    elsewhere.mkdir()
    out = tmp_path / "c.parquet"
    (tmp_path / "c.parquet.parts").symlink_to(elsewhere)
    code, _, err = caption(capsys, bundle, photos, out)
    assert code == ExitCode.FATAL
    assert "the Parquet parts folder" in err and "is a symbolic link" in err
    assert list(elsewhere.iterdir()) == []


def test_a_sidecar_dir_that_is_a_link_is_refused(capsys, bundle, photos, tmp_path, no_model):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "side"
    link.symlink_to(real)
    code, _, err = caption(
        capsys, bundle, photos, tmp_path / "j.jsonl", "--format", "txt", "--sidecar-dir", link
    )
    assert code == ExitCode.FATAL
    assert err.startswith(f"capbatch: error: --sidecar-dir {link} is a symbolic link")


# -- existing files and inputs -----------------------------------------------------------


@pytest.mark.parametrize("flag", ["--stats-json", "--report"])
def test_an_existing_foreign_file_is_refused_without_overwrite(
    capsys, bundle, photos, tmp_path, no_model, flag
):
    target = tmp_path / "notes.txt"
    target.write_text("mine\n")
    code, _, err = caption(capsys, bundle, photos, tmp_path / "c.csv", flag, target)
    assert (code, err) == (
        ExitCode.FATAL,
        f"capbatch: error: {flag} {target} exists and was not written by capbatch; "
        "pass --overwrite to replace it, or name another file\n",
    )
    assert target.read_text() == "mine\n"


def test_overwrite_replaces_a_foreign_side_output(capsys, bundle, photos, tmp_path):
    target = tmp_path / "notes.json"
    target.write_text("mine\n")
    code, _, _ = caption(
        capsys, bundle, photos, tmp_path / "c.csv", "--stats-json", target, "--overwrite"
    )
    assert code == ExitCode.SOME_FAILED
    assert json.loads(target.read_text())["rows"] == 4


def test_an_earlier_runs_stats_and_report_are_replaced_without_overwrite(
    capsys, bundle, photos, tmp_path
):
    stats, report = tmp_path / "stats.json", tmp_path / "report.html"
    side = ("--stats-json", stats, "--report", report)
    assert caption(capsys, bundle, photos, tmp_path / "c.csv", *side)[0] == ExitCode.SOME_FAILED
    report.write_bytes(report.read_bytes().replace(b"</html>", b"<!-- first run --></html>"))
    code, _, err = caption(capsys, bundle, photos, tmp_path / "c.csv", "--resume", *side)
    assert code == ExitCode.OK, err  # nothing new
    assert json.loads(stats.read_text())["skipped"] == 4
    assert b"first run" not in report.read_bytes()  # written again, whole


@pytest.mark.parametrize("flag", ["--stats-json", "--report"])
def test_an_input_image_is_never_a_side_output_even_with_overwrite(
    capsys, bundle, photos, tmp_path, no_model, flag
):
    image = photos / "a.png"
    before = image.read_bytes()
    code, _, err = caption(capsys, bundle, photos, tmp_path / "c.csv", flag, image, "--overwrite")
    assert (code, err) == (
        ExitCode.FATAL,
        f"capbatch: error: {flag} {image} is an input of this run; name another file\n",
    )
    assert image.read_bytes() == before


def test_an_attention_dir_inside_an_input_folder_is_refused(
    capsys, bundle, photos, tmp_path, no_model
):
    code, _, err = caption(
        capsys, bundle, photos, tmp_path / "c.csv", "--attention-dir", photos / "maps"
    )
    assert code == ExitCode.FATAL
    assert "is inside an input folder: its files would be captioned by the next run" in err
    assert not (photos / "maps").exists()


def test_two_side_outputs_on_one_file_are_refused(capsys, bundle, photos, tmp_path, no_model):
    same = tmp_path / "same.json"
    code, _, err = caption(
        capsys, bundle, photos, tmp_path / "c.csv", "--stats-json", same, "--report", same
    )
    assert (code, err) == (
        ExitCode.FATAL,
        f"capbatch: error: --report {same} is the same file as --stats-json\n",
    )


# -- unwritable places, found before the model loads ------------------------------------


@pytest.mark.parametrize("flag", ["--stats-json", "--report"])
def test_a_side_output_in_proc_is_refused_before_the_model(
    capsys, bundle, photos, tmp_path, no_model, flag
):
    code, _, err = caption(capsys, bundle, photos, tmp_path / "c.csv", flag, "/proc/x.json")
    assert code == ExitCode.FATAL
    assert err.startswith(f"capbatch: error: {flag} /proc/x.json: cannot write in /proc: ")
    assert not (tmp_path / "c.csv").exists()


def test_an_output_in_an_unwritable_place_is_named_as_the_output(
    capsys, bundle, photos, no_model
):
    code, _, err = run_cli(
        capsys, "caption", photos, "--out", "/proc/c.csv", "--model", bundle, "-q"
    )
    assert code == ExitCode.FATAL
    assert err.startswith("capbatch: error: --out /proc/c.csv: cannot write in /proc: "), err


def test_dry_run_checks_the_targets_without_writing_a_probe(capsys, bundle, photos, tmp_path):
    before = sorted(os.listdir(tmp_path))
    code, out, err = run_cli(
        capsys, "caption", photos, "--out", tmp_path / "c.csv", "--model", bundle,
        "--stats-json", tmp_path / "s.json", "--dry-run",
    )  # fmt: skip
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == before


# -- capbatch report --out ---------------------------------------------------------------


@pytest.fixture
def run_output(capsys, bundle, photos, tmp_path) -> Path:
    out = tmp_path / "c.csv"
    assert caption(capsys, bundle, photos, out)[0] == ExitCode.SOME_FAILED
    return out


def test_report_out_onto_a_foreign_file_needs_overwrite(capsys, run_output, tmp_path):
    target = tmp_path / "index.html"
    target.write_text("<p>my page</p>")
    code, _, err = run_cli(capsys, "report", run_output, "--out", target, "-q")
    assert (code, err) == (
        ExitCode.FATAL,
        f"capbatch: error: --out {target} exists and was not written by capbatch; "
        "pass --overwrite to replace it, or name another file\n",
    )
    assert target.read_text() == "<p>my page</p>"
    assert run_cli(capsys, "report", run_output, "--out", target, "-q", "--overwrite")[0] == 0
    assert "capbatch report" in target.read_text()
    assert run_cli(capsys, "report", run_output, "--out", target, "-q")[0] == 0  # ours now


def test_report_out_naming_a_folder_or_an_input_is_refused(capsys, run_output, tmp_path, photos):
    code, _, err = run_cli(capsys, "report", run_output, "--out", tmp_path, "--overwrite")
    assert (code, err) == (
        ExitCode.FATAL,
        f"capbatch: error: --out {tmp_path} is a directory; name the HTML file to write\n",
    )
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "a.png").write_bytes(b"png")
    code, _, err = run_cli(capsys, "report", run_output, "--out", maps / "a.png",
                           "--attention-dir", maps, "--overwrite")  # fmt: skip
    assert (code, err) == (
        ExitCode.FATAL,
        f"capbatch: error: --out {maps / 'a.png'} is an input of this run; name another file\n",
    )


def test_report_out_as_a_link_is_refused(capsys, run_output, tmp_path, victim):
    link = tmp_path / "r.html"
    link.symlink_to(victim)
    code, _, err = run_cli(capsys, "report", run_output, "--out", link, "--overwrite")
    assert code == ExitCode.FATAL and "is a symbolic link" in err
    assert victim.read_text() == SECRET


def test_report_of_a_file_that_is_not_a_run_output_is_one_line(capsys, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# capbatch\n\nBatch image captioning.\n")
    code, _, err = run_cli(capsys, "report", readme, "--out", tmp_path / "r.html")
    assert (code, err) == (
        ExitCode.FATAL,
        f"capbatch: error: {readme} is not a capbatch run output (no key column); give the "
        "CSV, JSONL or Parquet file `capbatch caption` wrote\n",
    )
    assert not (tmp_path / "r.html").exists()


def test_report_of_jsonl_records_without_keys_is_refused(capsys, tmp_path):
    other = tmp_path / "events.jsonl"
    other.write_text('{"event": "start"}\n{"event": "stop"}\n')
    code, _, err = run_cli(capsys, "report", other, "--out", tmp_path / "r.html")
    assert code == ExitCode.FATAL and "is not a capbatch run output" in err
