"""The one way capbatch writes a file: fsync, atomic replace, fsynced appends.

Every file capbatch writes (outputs, Parquet parts, sidecars, stats, reports,
attention maps, precision records, domain statistics, checkpoints, feature
caches) goes through `write_file`; the row files capbatch appends to are opened
with O_NOFOLLOW and grow by fsynced appends (`append_line`, the line writers).
Each returns only once the bytes (and,
where a name changed, the directory entry) are on disk, so a killed run leaves
the old file or the new one, never half of either.

Nothing capbatch creates follows a link: the folder is opened once and every
name is taken relative to it; temporary files get a random name and are
created with O_CREAT | O_EXCL | O_NOFOLLOW (a link planted under any name makes
the create fail, never write through); renames replace directory entries, not
what they point at; a folder capbatch makes for itself (`make_folder`) is
refused when a link stands in its place.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..errors import OutputError

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def output_error(out: Path, exc: OSError) -> OutputError:
    return OutputError(f"cannot write {out}: {exc.strerror or exc}")


def create_exclusive(path: Path | str, *, dir_fd: int | None = None) -> int:
    """A new file's descriptor; FileExistsError if anything (a link too) has the name."""
    return os.open(path, _CREATE_FLAGS, 0o644, dir_fd=dir_fd)


_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def check_output_target(out: Path) -> Path:
    """The file an output path names, refused unless it is a regular file or a new path.

    Only stat() is used, never open(): a FIFO or a device is judged without blocking
    or writing. `--out` naming a symbolic link means the file the link names (the
    link stays); a link to nothing is refused rather than creating its target.
    """
    out = Path(out)
    try:
        info = os.stat(out)
    except FileNotFoundError:
        if os.path.islink(out):
            raise OutputError(
                f"{out} is a symbolic link to a missing file ({os.path.realpath(out)}); "
                "--out must name a regular file or a new path"
            ) from None
        return out
    except NotADirectoryError:
        raise OutputError(f"cannot create the output folder {out.parent}: a parent is a file") from None
    except OSError as exc:
        raise OutputError(f"cannot use {out} as the output: {exc.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise OutputError(f"{out} is a directory; --out must name a file")
    for test, kind in _KINDS:
        if test(info.st_mode):
            raise OutputError(f"{out} is {kind}; --out must name a regular file or a new path")
    return Path(os.path.realpath(out)) if os.path.islink(out) else out


def append_line(path: Path, line: str) -> None:
    """Append one text line and fsync it (a crash can at worst tear this line); a link
    at `path` is not followed (O_NOFOLLOW: the open fails)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def truncate(path: Path, size: int) -> None:
    """Cut `path` to `size` bytes (a torn tail) and fsync."""
    with open(path, "r+b") as handle:
        handle.truncate(size)
        os.fsync(handle.fileno())


Content = bytes | str | Callable[[BinaryIO], None]


def write_file(target: Path | str, content: Content, *, replace: bool = True) -> Path:
    """Write `target` whole: a random temporary name created exclusively in its folder,
    the bytes fsynced, then renamed over `target` (`replace`) or linked to it (not
    `replace`: an existing name, a link too, raises FileExistsError and stays as it
    is). `content` is bytes, text (UTF-8) or a function writing to a binary file.

    The folder (created when missing) is opened once and every name is relative to
    it, so a folder swapped for a link mid-way cannot redirect the write, and a link
    planted at `target` is replaced, never written through. A directory or special
    file at `target` is refused (IsADirectoryError / OutputError). The temporary file
    is removed whatever happens. OSError for the caller to word.
    """
    target = Path(target)
    folder, name = os.path.split(os.fspath(target))
    if folder:
        try:
            os.makedirs(folder)
        except FileExistsError:
            pass  # there already (or a file there: the open below says ENOTDIR)
    dir_fd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _refuse_non_file(name, dir_fd, target)
        while True:
            tmp = f".{name[:200]}.tmp-{secrets.token_hex(8)}"
            try:
                fd = create_exclusive(tmp, dir_fd=dir_fd)
                break
            except FileExistsError:
                continue
        try:
            with os.fdopen(fd, "wb") as handle:
                if callable(content):
                    content(handle)
                else:
                    handle.write(content.encode("utf-8") if isinstance(content, str) else content)
                handle.flush()
                os.fsync(handle.fileno())
            if replace:
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            else:
                os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
        with contextlib.suppress(OSError):
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def _refuse_non_file(name: str, dir_fd: int, target: Path) -> None:
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
    for test, kind in _KINDS:
        if test(info.st_mode):
            raise OutputError(f"{target} is {kind}; capbatch writes regular files only")


def make_folder(folder: Path | str, what: str) -> Path:
    """Create `folder` (and its parents) for capbatch's own files (Parquet parts, Ray
    shards, attention maps, sidecars); OutputError when a link or a non-folder stands
    there: capbatch never writes into a folder it did not expect to be a link."""
    folder = Path(folder)
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            pass  # made meanwhile by another run: checked again at its first write
        except OSError as exc:
            raise OutputError(f"cannot create {what} {folder}: {exc.strerror or exc}") from None
        return folder
    except OSError as exc:
        raise OutputError(f"cannot use {what} {folder}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(info.st_mode):
        raise OutputError(
            f"{what} {folder} is a symbolic link (to {os.path.realpath(folder)}); "
            "capbatch does not write through links: remove it or name another folder"
        )
    if not stat.S_ISDIR(info.st_mode):
        raise OutputError(f"{what} {folder} exists and is not a folder")
    return folder
