"""Writing that survives a crash: fsync, atomic replace, fsynced appends.

Each helper returns only once the bytes (and, where a name changed, the
directory entry) are on disk, so a killed run leaves the old file or the new
one, never half of either.

Nothing capbatch creates follows a link: temporary files get a random name and
are created with O_CREAT | O_EXCL | O_NOFOLLOW (a link planted under any name
makes the create fail, never write through), and renames replace directory
entries, not what they point at.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from ..errors import OutputError

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def output_error(out: Path, exc: OSError) -> OutputError:
    return OutputError(f"cannot write {out}: {exc.strerror or exc}")


def fsync_directory(directory: Path) -> None:
    # Makes a rename or a new file's directory entry durable too.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def rename_durably(tmp: Path, target: Path) -> None:
    """os.replace(tmp, target) after tmp's bytes, then the directory entry, are on disk."""
    fsync_file(tmp)
    os.replace(tmp, target)
    fsync_directory(target.parent)


def replace_atomically(target: Path, content: bytes) -> None:
    with temporary_file(target) as (tmp, handle):
        handle.write(content)
        handle.close()
        rename_durably(tmp, target)


def temporary_name(target: Path) -> Path:
    """A fresh sibling name for writing `target`'s next version: unpredictable, so no
    one can plant a link under it in advance (created exclusively all the same)."""
    return target.with_name(f"{target.name}.tmp-{os.getpid()}-{secrets.token_hex(6)}")


def create_exclusive(path: Path | str, *, dir_fd: int | None = None) -> int:
    """A new file's descriptor; FileExistsError if anything (a link too) has the name."""
    return os.open(path, _CREATE_FLAGS, 0o644, dir_fd=dir_fd)


@contextlib.contextmanager
def temporary_file(target: Path) -> Iterator[tuple[Path, object]]:
    """(name, binary file) of a new sibling of `target`, created exclusively; the file
    is removed on the way out unless it was renamed (a failed write leaves nothing)."""
    while True:
        tmp = temporary_name(target)
        try:
            fd = create_exclusive(tmp)
            break
        except FileExistsError:
            continue
    handle = os.fdopen(fd, "wb")
    try:
        yield tmp, handle
    finally:
        with contextlib.suppress(OSError):
            handle.close()  # a full disk fails the flush too: the file still goes
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # gone already once renamed


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
    """Append one text line and fsync it (a crash can at worst tear this line)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def truncate(path: Path, size: int) -> None:
    """Cut `path` to `size` bytes (a torn tail) and fsync."""
    with open(path, "r+b") as handle:
        handle.truncate(size)
        os.fsync(handle.fileno())


def link_new(text: str, target: str, *, replace: bool) -> None:
    """Write `text` to `target` through an fsynced temporary file in the same folder.

    The folder is opened once and every name is taken relative to it, so a folder
    swapped for a link mid-way cannot redirect the write; the temporary name is
    random and created exclusively (O_EXCL | O_NOFOLLOW). Without `replace`, an
    existing target (a link too) raises FileExistsError and is left as it is
    (link() never overwrites); with it, rename() replaces the entry, never writing
    through it. The temporary file is removed either way.
    """
    folder, name = os.path.split(target)
    dir_fd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        while True:
            tmp = f".{name}.tmp-{secrets.token_hex(8)}"
            try:
                fd = create_exclusive(tmp, dir_fd=dir_fd)
                break
            except FileExistsError:
                continue
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
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
