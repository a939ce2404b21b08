"""Reading a bundle's files so that what is hashed is what is loaded (torch-free).

- Every file is read ONCE, through one open handle on the bundle directory, and
  the same bytes are hashed and handed on (onnxruntime accepts a graph as bytes),
  so a file swapped after the check is never loaded.
- Nothing inside a bundle may be a symbolic link or anything but a regular file
  (O_NOFOLLOW on the open itself, so a link planted after a listing is refused
  too). The bundle directory itself may be reached through a link.
- A graph must hold its own weights: one loaded from bytes resolves external-data
  locations against the current directory, outside every hash.

capbatch/manifest.py decides which files to read; this module knows no schema.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

from .errors import BundleError
from .onnx_scan import MalformedGraph, escapes_directory, external_tensors

_CHUNK = 1 << 20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# O_NONBLOCK: opening a FIFO planted under a listed name must not hang the loader.
_OPEN_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_DIR_FD = os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY")


class FileProblem(Exception):
    """One file of a bundle is unusable; the message names the file and why."""


class BundleDir:
    """An open bundle directory: every read goes through the same directory handle."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if not self.path.is_dir():
            raise BundleError(f"model bundle not found: {self.path} is not a directory")
        self._fd: int | None = None
        if _DIR_FD:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                raise BundleError(f"cannot open model bundle {self.path}: {exc.strerror}") from exc

    def __enter__(self) -> BundleDir:
        return self

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def links(self) -> list[str]:
        """Names of the symbolic links directly inside the bundle."""
        by_fd = self._fd is not None and os.scandir in os.supports_fd
        with os.scandir(self._fd if by_fd else self.path) as entries:
            return sorted(entry.name for entry in entries if entry.is_symlink())

    def _open(self, name: str) -> int | None:
        """A read-only descriptor of the regular file `name`, or None when it is absent."""
        if not _NOFOLLOW and (self.path / name).is_symlink():  # no O_NOFOLLOW (Windows)
            raise FileProblem(f"{name}: is a symbolic link (a bundle holds plain files only)")
        try:
            if self._fd is not None:
                fd = os.open(name, _OPEN_FLAGS, dir_fd=self._fd)
            else:
                fd = os.open(self.path / name, _OPEN_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK):  # Linux / BSD for "was a link"
                raise FileProblem(
                    f"{name}: is a symbolic link (a bundle holds plain files only)"
                ) from None
            raise FileProblem(f"{name}: unreadable ({exc.strerror})") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FileProblem(f"{name}: not a regular file")
        return fd

    def read(self, name: str, limit: int | None = None) -> bytes | None:
        """The whole file (None when absent); FileProblem for links, non-files, > limit bytes."""
        fd = self._open(name)
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as handle:
            if limit is not None and os.fstat(handle.fileno()).st_size > limit:
                raise FileProblem(f"{name}: larger than {limit} bytes")
            try:
                return handle.read()
            except OSError as exc:
                raise FileProblem(f"{name}: unreadable ({exc.strerror})") from None

    def sha256(self, name: str) -> str | None:
        """Hex sha256 of a file read in chunks (None when absent), for files not loaded."""
        fd = self._open(name)
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as handle:
            try:
                return _sha256_stream(handle)
            except OSError as exc:
                raise FileProblem(f"{name}: unreadable ({exc.strerror})") from None


def _sha256_stream(handle) -> str:
    """Hex sha256 read in chunks, so large files do not fill memory."""
    digest = hashlib.sha256()
    while chunk := handle.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of any file (the exporter hashes checkpoints and what it wrote)."""
    with open(path, "rb") as handle:
        return _sha256_stream(handle)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_self_contained(name: str, graph: bytes) -> None:
    """FileProblem unless the serialised ONNX graph holds every tensor's data itself."""
    try:
        tensors = external_tensors(graph)
    except MalformedGraph as exc:
        raise FileProblem(f"cannot load {name}: not a well-formed ONNX graph ({exc})") from None
    if not tensors:
        return
    locations = sorted({t.location for t in tensors})
    outside = [location for location in locations if escapes_directory(location)]
    if outside:
        raise FileProblem(
            f"{name}: external data location {outside[0]!r} points outside the bundle"
        )
    raise FileProblem(
        f"{name}: keeps {len(tensors)} tensors in external data ({', '.join(map(repr, locations))}); "
        "bundle graphs must hold their own weights (docs/bundle-format.md)"
    )
