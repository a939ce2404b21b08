"""Typed errors and the exit codes schedulers see.

The library raises these; the CLI maps each to one line on stderr and its exit
code (a traceback only with --debug).
"""

from __future__ import annotations

import errno
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # every input captioned
    SOME_FAILED = 1  # the run finished, some inputs got error rows
    FATAL = 2  # nothing usable: bad option, model, checkpoint or output
    INTERRUPTED = 3  # SIGINT/SIGTERM: finished rows were flushed


class CapbatchError(Exception):
    """Base: a problem the user can fix, reported as one line."""

    exit_code = ExitCode.FATAL


class UsageError(CapbatchError):
    """Bad option or option combination."""


class MissingDependencyError(CapbatchError):
    """An optional extra is not installed (the message says which)."""


class BundleError(CapbatchError):
    """A model bundle is missing, malformed, tampered with or incompatible."""


class CheckpointError(CapbatchError):
    """A training checkpoint is missing, truncated, foreign or unsafe."""


class ExportError(CapbatchError):
    """Export or its validation failed."""


class OutputError(CapbatchError):
    """The output cannot be written (locked, unwritable, disk full)."""


class InputDecodeError(Exception):
    """One input could not be turned into a model input; becomes an error row."""


def short_message(exc: BaseException, limit: int = 120) -> str:
    """The first line of an exception's message (its type name when empty), at most `limit` chars.

    Library messages (zipfile, tarfile, Pillow) can be long or multi-line; a row's
    `error` column holds one short line.
    """
    text = str(exc).strip()
    message = text.splitlines()[0] if text else type(exc).__name__
    return message if len(message) <= limit else message[: limit - 3] + "..."


def describe_os_error(exc: OSError) -> str:
    """An OSError in the words of a row's `error` column."""
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENOENT:
        return "no such file or directory"
    if exc.errno == errno.ENAMETOOLONG:
        return "file name too long"
    return f"cannot read: {exc.strerror or exc}"
