"""Every path a run will write, checked before the model loads.

`--out`, `--stats-json`, `--report`, `--attention-dir` and `--sidecar-dir` are
each refused in one line (UsageError, exit 2) when the run could not write
them at the end, or should not: a link, a folder or a special file where a file
goes, a file that is an input of the run, an existing file that capbatch did
not write there itself (unless --overwrite), two targets on one path, or a
folder that cannot be written (found by creating and removing a probe file,
so /proc, read-only mounts and root-squashed shares answer as they will).

The writes themselves go through capbatch.output.durable.write_file, which
never follows a link at the name it writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .output.durable import create_exclusive

_SPECIAL = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)
REPORT_MARK = b'<meta name="generator" content="capbatch report">'


@dataclass(frozen=True)
class RunInputs:
    """The run's inputs as real paths: files (list files too) and folders."""

    files: frozenset[str]
    folders: tuple[str, ...]

    @classmethod
    def of(cls, paths: Iterable[str | os.PathLike | None]) -> RunInputs:
        files: set[str] = set()
        folders: list[str] = []
        for raw in paths:
            if raw is None or os.fspath(raw) in ("", "-"):
                continue
            real = os.path.realpath(os.fspath(raw))
            if os.path.isdir(real):
                folders.append(real)
            elif os.path.exists(real):
                files.add(real)
        return cls(frozenset(files), tuple(folders))

    def holds(self, path: Path) -> bool:
        """Whether `path` is an input or lies in an input folder (where the walk, or
        the next run's, would read it)."""
        real = os.path.realpath(path)
        if real in self.files:
            return True
        return any(real == folder or real.startswith(folder + os.sep) for folder in self.folders)


def is_stats_file(path: Path) -> bool:
    """A --stats-json document written by an earlier run (replaced without --overwrite)."""
    try:
        with open(path, "rb") as handle:
            record = json.loads(handle.read(1 << 20))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "stats_version" in record


def is_report_file(path: Path) -> bool:
    """An HTML report written by `capbatch report` (replaced without --overwrite)."""
    try:
        with open(path, "rb") as handle:
            return REPORT_MARK in handle.read(4096)
    except OSError:
        return False


def check_file_target(
    flag: str,
    path: Path,
    *,
    inputs: RunInputs,
    overwrite: bool,
    ours: Callable[[Path], bool],
    what: str,
    probe: bool = True,
) -> None:
    """UsageError unless `path` can take a file written whole at the end of a run
    (`what`: the file as the message names it, "the JSON file")."""
    shown = f"{flag} {path}"
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise UsageError(f"{shown}: {exc.strerror or exc}") from None
    if info is not None:
        if stat.S_ISLNK(info.st_mode):
            raise UsageError(
                f"{shown} is a symbolic link (to {os.path.realpath(path)}); capbatch does "
                "not write through links: name the file itself"
            )
        if stat.S_ISDIR(info.st_mode):
            raise UsageError(f"{shown} is a directory; name {what} to write")
        for test, kind in _SPECIAL:
            if test(info.st_mode):
                raise UsageError(f"{shown} is {kind}; name a regular file")
        if inputs.holds(path):
            raise UsageError(f"{shown} is an input of this run; name another file")
        if not overwrite and not ours(path):
            raise UsageError(
                f"{shown} exists and was not written by capbatch; "
                "pass --overwrite to replace it, or name another file"
            )
    check_folder_writable(path.absolute().parent, shown, probe=probe)


def check_folder_target(
    flag: str, folder: Path, *, inputs: RunInputs | None = None, probe: bool = True
) -> None:
    """UsageError unless `folder` is (or can become) a real folder capbatch can write
    in; with `inputs`, also when it lies in an input folder (its files would be read
    as inputs by the next run)."""
    shown = f"{flag} {folder}"
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        info = None
    except OSError as exc:  # a parent that is a file, a name too long
        raise UsageError(f"{shown}: {exc.strerror or exc}") from None
    if info is not None:
        if stat.S_ISLNK(info.st_mode):
            raise UsageError(
                f"{shown} is a symbolic link (to {os.path.realpath(folder)}); capbatch does "
                "not write through links: name the folder itself"
            )
        if not stat.S_ISDIR(info.st_mode):
            raise UsageError(f"{shown} exists and is not a folder")
    if inputs is not None and inputs.holds(folder):
        raise UsageError(
            f"{shown} is inside an input folder: its files would be captioned by the "
            "next run; name a folder outside the inputs"
        )
    check_folder_writable(folder.absolute(), shown, probe=probe)  # or the folder above


def check_folder_writable(folder: Path, shown: str, *, probe: bool = True) -> None:
    """The nearest existing folder at or above `folder` must take a new file.

    os.access answers first; with `probe`, a file is then created and removed there
    (the only answer /proc, a read-only mount or a root-squashed share give
    truthfully, and root's answer at all); --dry-run, which writes nothing, does
    without."""
    while not os.path.lexists(folder) and folder != folder.parent:  # made at the end
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{shown}: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{shown}: no permission to write in {folder}")
    if not probe:
        return
    name = folder / f".capbatch-probe-{secrets.token_hex(8)}"
    try:
        os.close(create_exclusive(name))
    except OSError as exc:
        raise UsageError(f"{shown}: cannot write in {folder}: {exc.strerror or exc}") from None
    with contextlib.suppress(OSError):
        os.unlink(name)


def check_distinct(targets: dict[str, Path | None]) -> None:
    """UsageError when two of the run's targets (flag -> path) are one file."""
    seen: dict[str, str] = {}
    for flag, path in targets.items():
        if path is None or str(path) == "-":
            continue
        real = os.path.realpath(path)
        if real in seen:
            if seen[real] == "--out":
                raise UsageError(f"{flag} {path} would overwrite the output itself")
            raise UsageError(f"{flag} {path} is the same file as {seen[real]}")
        seen[real] = flag
