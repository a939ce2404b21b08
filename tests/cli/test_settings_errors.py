"""Two small modules every run goes through: capbatch/output/settings.py (the sidecar
and CSV options, refused where they do not apply, docs/inputs-outputs.md) and
capbatch/errors.py (exit codes, and the one-line reasons in a row's `error` column)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from capbatch.errors import (
    BundleError,
    CapbatchError,
    CheckpointError,
    ExitCode,
    ExportError,
    InputDecodeError,
    MissingDependencyError,
    OutputError,
    UsageError,
    describe_os_error,
    short_message,
)
from capbatch.output.settings import OutputSettings

# -- OutputSettings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "kept"), [(".txt", ".txt"), ("md", ".md"), (".caption", ".caption")]
)
def test_the_caption_extension_gets_its_dot(given, kept):
    assert OutputSettings(caption_extension=given).caption_extension == kept


@pytest.mark.parametrize("given", ["", ".", "/", "a/b", ".x\0", ".."])
def test_an_extension_that_is_no_file_ending_is_refused_as_typed(given):
    with pytest.raises(ValueError) as raised:
        OutputSettings(caption_extension=given)
    assert str(raised.value) == f"--caption-extension {given!r} is not a file ending"


@pytest.mark.parametrize("field", ["sidecar_prefix", "sidecar_suffix"])
def test_nul_in_the_text_around_a_caption_is_refused(field):
    with pytest.raises(ValueError) as raised:
        OutputSettings(**{field: "a\0b"})
    assert str(raised.value) == f"--{field.replace('_', '-')} must not contain NUL"
    assert getattr(OutputSettings(**{field: "[a] "}), field) == "[a] "


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "txt"])
def test_the_defaults_apply_to_every_format(fmt):
    OutputSettings().check_format(fmt)


@pytest.mark.parametrize(
    ("settings", "flag"),
    [
        ({"caption_extension": ".md"}, "--caption-extension"),
        ({"sidecar_prefix": "> "}, "--sidecar-prefix"),
        ({"sidecar_suffix": " <"}, "--sidecar-suffix"),
        ({"sidecar_dir": Path("side")}, "--sidecar-dir"),
    ],
)
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_sidecar_options_apply_to_txt_only(settings, flag, fmt):
    with pytest.raises(UsageError) as raised:
        OutputSettings(**settings).check_format(fmt)
    assert str(raised.value) == f"{flag} applies to --format txt (sidecars) only"
    OutputSettings(**settings).check_format("txt")


def test_csv_raw_applies_to_csv_only():
    OutputSettings(csv_raw=True).check_format("csv")
    for fmt in ("jsonl", "parquet", "txt"):
        with pytest.raises(UsageError) as raised:
            OutputSettings(csv_raw=True).check_format(fmt)
        assert str(raised.value) == "--csv-raw applies to --format csv only"


# -- errors -----------------------------------------------------------------------------


def test_exit_codes_are_the_documented_numbers():
    assert [(code.name, int(code)) for code in ExitCode] == [
        ("OK", 0), ("SOME_FAILED", 1), ("FATAL", 2), ("INTERRUPTED", 3)
    ]  # fmt: skip
    for error in (UsageError, MissingDependencyError, BundleError, CheckpointError,
                  ExportError, OutputError):  # fmt: skip
        assert issubclass(error, CapbatchError) and error("x").exit_code == ExitCode.FATAL
    assert not issubclass(InputDecodeError, CapbatchError)  # a row, never the run's end


def test_short_message_is_the_first_line_or_the_type_and_at_most_the_limit():
    assert short_message(ValueError("  bad header\nmore detail\n")) == "bad header"
    assert short_message(ValueError("   ")) == "ValueError"
    assert short_message(KeyError()) == "KeyError"
    exact = "x" * 120
    assert short_message(OSError(exact)) == exact
    assert short_message(OSError(exact + "y")) == "x" * 117 + "..."
    assert short_message(OSError("abcdefgh"), limit=5) == "ab..."


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        (errno.ELOOP, "symlink loop"),
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "permission denied"),
        (errno.ENOENT, "no such file or directory"),
        (errno.ENAMETOOLONG, "file name too long"),
        (errno.EIO, "cannot read: Input/output error"),
    ],
)
def test_os_errors_in_the_words_of_the_error_column(number, reason):
    assert describe_os_error(OSError(number, "system words")) == (
        reason if not reason.startswith("cannot read") else "cannot read: system words"
    )


def test_an_os_error_without_system_words_is_described_by_its_text():
    assert describe_os_error(OSError("a plain message")) == "cannot read: a plain message"
