"""Writing that survives a crash: fsync, atomic replace, fsynced appends.

Each helper returns only once the bytes (and, where a name changed, the
directory entry) are on disk, so a killed run leaves the old file or the new
one, never half of either.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import OutputError


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
    tmp = temporary_name(target)
    with open(tmp, "wb") as handle:
        handle.write(content)
    rename_durably(tmp, target)


def temporary_name(target: Path) -> Path:
    """A sibling name for writing `target`'s next version (per process)."""
    return target.with_name(f"{target.name}.tmp-{os.getpid()}")


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
    """Write `text` to `target` through an fsynced temporary file. Without `replace`,
    an existing target raises FileExistsError and is left as it is (os.link never
    overwrites); the temporary file is removed either way."""
    tmp = f"{target}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
