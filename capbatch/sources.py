"""Inputs -> keyed image bytes, one item at a time, in a deterministic order.

Files, directories (walked recursively, entries sorted), list files ("-" for
stdin) and tar / tar.gz / tgz / tar.bz2 / tar.xz / zip archives, including
webdataset shards. Archives are streamed member by member (archives.py) and NEVER extracted:
a member named "/etc/x.jpg" or "../x.jpg" is only ever a key. Every input that
cannot be read becomes a SourceItem with an `error` instead of stopping the run.

Keys are text that any output format can hold: file names that are not valid
UTF-8 keep their undecodable bytes as backslash escapes ("caf\\xe9.jpg"); the
`path` field keeps the real (surrogate-escaped) name so the file can still be
opened and a sidecar written beside it.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .archives import read_archive
from .errors import UsageError, describe_os_error
from .image_decode import SNIFF_BYTES, sniff_image_format

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".tif", ".tiff",
        ".webp", ".avif", ".heic", ".heif", ".jxl", ".jp2", ".j2k", ".jpx", ".ppm", ".pgm",
        ".pbm", ".pnm", ".tga", ".ico", ".psd", ".qoi", ".dds",
    }
)  # fmt: skip
# Longest first, so "x.tar.gz" is not taken for a ".gz" of something else.
TAR_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".tbz", ".txz", ".tar")
ZIP_SUFFIXES = (".zip",)
# Members and files above this are refused unread, so a hostile archive cannot
# make one item take unbounded memory.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
KEY_SEPARATOR = "::"

_COLON_RUN = re.compile(r":{2,}")
_BRACE_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_BRACE_LIST = re.compile(r"\{([^{}]*,[^{}]*)\}")


@dataclass(frozen=True)
class SourceItem:
    key: str  # unique, stable row key: the path as given, or "<archive>::<member>"
    path: str | None  # filesystem path of the image file (None for archive members)
    data: bytes | None  # raw bytes; None when reading failed
    error: str | None  # why reading failed (permission denied, symlink loop, ...)


def escape_undecodable(text: str) -> str:
    """Text safe for UTF-8 outputs: undecodable bytes become "\\xNN" escapes."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # Surrogates that do not stand for bytes (e.g. from a broken zip name).
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def path_key(path: str) -> str:
    """The row key of a file-system path: undecodable bytes escaped, "::" runs escaped too.

    "::" separates an archive's key from its member's name, so a plain file named
    "a.tar::x.jpg" must not take the key of member x.jpg of a.tar: each colon of
    a run of two or more is written "\\x3a", as undecodable bytes are.
    """
    return _COLON_RUN.sub(lambda run: "\\x3a" * len(run.group()), escape_undecodable(path))


def archive_kind(name: str) -> str | None:
    """ "tar" or "zip" when the name says the file is an archive we stream."""
    lower = name.lower()
    if lower.endswith(TAR_SUFFIXES):
        return "tar"
    if lower.endswith(ZIP_SUFFIXES):
        return "zip"
    return None


def expand_braces(pattern: str) -> list[str]:
    """Webdataset-style shard names: "shard-{000..002}.tar", "{a,b}.tar".

    Only used when no file has the literal name.
    """
    match = _BRACE_RANGE.search(pattern)
    if match:
        first, last = match.group(1), match.group(2)
        width = len(first) if first.startswith("0") else 0
        step = 1 if int(last) >= int(first) else -1
        names = [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    else:
        match = _BRACE_LIST.search(pattern)
        if not match:
            return [pattern]
        names = match.group(1).split(",")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [expanded for name in names for expanded in expand_braces(head + name + tail)]


def _open_readonly(path: str) -> int:
    # O_NONBLOCK: opening a FIFO that happens to be named x.jpg must not hang the run.
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _read_head(path: str) -> bytes:
    """The first bytes of a regular file, b"" when it cannot be read."""
    try:
        fd = _open_readonly(path)
    except OSError:
        return b""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        return os.read(fd, SNIFF_BYTES)
    except OSError:
        return b""
    finally:
        os.close(fd)


class _Reader:
    """One iter_sources call: its options and the keys it has already yielded."""

    def __init__(
        self,
        *,
        recursive: bool,
        glob: str | None,
        extensions: frozenset[str],
        sniff: bool,
        archives: bool,
        max_bytes: int,
    ) -> None:
        self.recursive = recursive
        self.glob = glob.lower() if glob else None
        self.extensions = extensions
        self.sniff = sniff
        self.archives = archives
        self.max_bytes = max_bytes
        # Keys already yielded: overlapping inputs ("photos photos/a.jpg") give each key once.
        self.seen: set[str] = set()

    # -- items ---------------------------------------------------------------------------

    def _item(
        self, key: str, path: str | None, data: bytes | None, error: str | None
    ) -> Iterator[SourceItem]:
        if key in self.seen:
            return
        self.seen.add(key)
        yield SourceItem(key=key, path=path, data=data, error=error)

    def _error(self, key: str, error: str, path: str | None = None) -> Iterator[SourceItem]:
        return self._item(key, path, None, error)

    def _file(self, key: str, path: str) -> Iterator[SourceItem]:
        if key in self.seen:
            return iter(())
        data, error = self._read_file(path)
        return self._item(key, path, data, error)

    def _read_file(self, path: str) -> tuple[bytes | None, str | None]:
        try:
            fd = _open_readonly(path)
        except OSError as exc:
            return None, describe_os_error(exc)
        try:
            mode_size = os.fstat(fd)
            if not stat.S_ISREG(mode_size.st_mode):
                return None, f"not a regular file ({_file_kind(mode_size.st_mode)})"
            if mode_size.st_size > self.max_bytes:
                return None, f"file too large: {mode_size.st_size} bytes > limit {self.max_bytes}"
            chunks, total = [], 0
            while True:
                chunk = os.read(fd, min(1 << 20, self.max_bytes + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > self.max_bytes:  # it grew while we read it
                    return None, f"file too large: over limit {self.max_bytes} bytes"
            return b"".join(chunks), None
        except OSError as exc:
            return None, describe_os_error(exc)
        finally:
            os.close(fd)

    # -- filters -------------------------------------------------------------------------

    def _matches_glob(self, relative: str) -> bool:
        if self.glob is None:
            return True
        # Patterns without "/" match the file name; with "/", the path below the input.
        target = relative if "/" in self.glob else relative.rsplit("/", 1)[-1]
        return fnmatch.fnmatchcase(target.lower(), self.glob)

    def _has_image_extension(self, name: str) -> bool:
        return os.path.splitext(name)[1].lower() in self.extensions

    def _wanted_file(self, name: str, relative: str, path: str) -> bool:
        if not self._matches_glob(relative):
            return False
        if self._has_image_extension(name):
            return True
        if not self.sniff:
            return False
        sniffed = sniff_image_format(_read_head(path))
        return sniffed is not None and sniffed != "SVG"

    # -- inputs --------------------------------------------------------------------------

    def from_input(self, raw: str) -> Iterator[SourceItem]:
        """One explicit input: a file (any extension), directory or archive."""
        candidates = [raw]
        if not os.path.lexists(raw) and "{" in raw:
            candidates = expand_braces(raw)
        for path in candidates:
            yield from self._explicit(path)

    def _explicit(self, path: str) -> Iterator[SourceItem]:
        key = path_key(str(Path(path)))
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            reason = describe_os_error(exc)
            if exc.errno == errno.ENOENT and os.path.islink(path):
                reason = "broken symlink"
            yield from self._error(key, reason, path)
            return
        if stat.S_ISDIR(mode):
            yield from self._walk(path, key)
        elif stat.S_ISREG(mode) and self.archives and archive_kind(path):
            yield from self._archive(path, key)
        else:
            # Named explicitly: no extension filter; decoding says what it is.
            yield from self._file(key, path)

    def _walk(self, top: str, top_key: str) -> Iterator[SourceItem]:
        try:
            top_stat = os.stat(top)
        except OSError as exc:
            yield from self._error(top_key, describe_os_error(exc), top)
            return
        # Depth-first over sorted names; `ancestors` catches symlinks back up the tree.
        root = {(top_stat.st_dev, top_stat.st_ino)}
        stack = [(top, "", iter(self._list(top, top_key)), root)]
        while stack:
            directory, relative_dir, entries, ancestors = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                continue
            if isinstance(entry, SourceItem):  # the directory could not be listed
                yield from self._item(entry.key, entry.path, entry.data, entry.error)
                continue
            path = os.path.join(directory, entry)
            relative = f"{relative_dir}{entry}"
            key = path_key(os.path.join(top_key, relative))
            try:
                entry_stat = os.stat(path)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    yield from self._error(key, "symlink loop", path)
                elif self._has_image_extension(entry) and self._matches_glob(relative):
                    broken = exc.errno == errno.ENOENT and os.path.islink(path)
                    yield from self._error(
                        key, "broken symlink" if broken else describe_os_error(exc), path
                    )
                continue
            mode = entry_stat.st_mode
            if stat.S_ISDIR(mode):
                # Also directories named like images ("x.jpg/"): walked, never read.
                if not self.recursive:
                    continue
                identity = (entry_stat.st_dev, entry_stat.st_ino)
                if identity in ancestors:
                    yield from self._error(key, "symlink loop (leads back to a parent)", path)
                    continue
                below = ancestors | {identity}
                stack.append((path, f"{relative}/", iter(self._list(path, key)), below))
            elif stat.S_ISREG(mode) and self.archives and archive_kind(entry):
                yield from self._archive(path, key)
            elif stat.S_ISREG(mode):
                if self._wanted_file(entry, relative, path):
                    yield from self._file(key, path)
            elif self._has_image_extension(entry) and self._matches_glob(relative):
                yield from self._error(key, f"not a regular file ({_file_kind(mode)})", path)

    def _list(self, directory: str, key: str) -> list[str | SourceItem]:
        try:
            return sorted(os.listdir(directory))
        except OSError as exc:
            return [
                SourceItem(key, directory, None, f"cannot list directory: {describe_os_error(exc)}")
            ]

    # -- archives ------------------------------------------------------------------------

    def _wanted_member(self, name: str) -> bool:
        return self._has_image_extension(name) and self._matches_glob(name)

    def _archive(self, path: str, key: str) -> Iterator[SourceItem]:
        def wanted(name: str) -> bool:
            # Checked before a member's bytes are read; a later copy of a name is skipped.
            return self._wanted_member(name) and _member_key(key, name) not in self.seen

        for member in read_archive(path, archive_kind(path) or "tar", wanted, self.max_bytes):
            if member.name is None:  # about the archive itself
                yield from self._error(key, member.error or "corrupt archive", path)
            else:
                yield from self._item(
                    _member_key(key, member.name), None, member.data, member.error
                )


def _member_key(archive_key: str, name: str) -> str:
    return f"{archive_key}{KEY_SEPARATOR}{escape_undecodable(name)}"


def read_list(from_list: str | Path) -> Iterator[str]:
    """Paths from a list file, one per line ("-": stdin), read lazily.

    Lines are bytes decoded like file names (os.fsdecode), so non-UTF-8 names
    survive. Blank lines are skipped; nothing else is interpreted.
    """
    if str(from_list) == "-":
        yield from _list_lines(sys.stdin.buffer)
        return
    try:
        stream = open(from_list, "rb")  # closed by the with below
    except OSError as exc:
        raise UsageError(f"cannot read list file {from_list}: {describe_os_error(exc)}") from None
    with stream:
        yield from _list_lines(stream)


def _list_lines(stream: Iterable[bytes]) -> Iterator[str]:
    for raw in stream:
        line = raw.rstrip(b"\r\n")
        if line.strip():
            yield os.fsdecode(line)


def _normalise_extensions(extensions: Iterable[str]) -> frozenset[str]:
    return frozenset(
        (ext if ext.startswith(".") else f".{ext}").lower() for ext in extensions if ext
    )


def iter_sources(
    inputs: Sequence[str | Path],
    *,
    recursive: bool = True,
    glob: str | None = None,
    from_list: str | Path | None = None,
    extensions: frozenset[str] | None = None,
    sniff: bool = True,
    archives: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Iterator[SourceItem]:
    """Every image of the inputs as a SourceItem, lazily, in a deterministic order.

    Order: `inputs` as given, then the entries of `from_list`; directory entries
    sorted by name (depth first); archive members in archive order. Explicit
    files are taken whatever their extension; files found by walking need an
    image extension (`extensions`, default IMAGE_EXTENSIONS) or, with `sniff`,
    image magic bytes. Archives found by walking are streamed when `archives`.
    A key is yielded at most once per call.
    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    reader = _Reader(
        recursive=recursive,
        glob=glob,
        extensions=_normalise_extensions(
            extensions if extensions is not None else IMAGE_EXTENSIONS
        ),
        sniff=sniff,
        archives=archives,
        max_bytes=max_bytes,
    )
    for raw in inputs:
        yield from reader.from_input(os.fspath(raw))
    if from_list is not None:
        for raw in read_list(from_list):
            yield from reader.from_input(raw)
