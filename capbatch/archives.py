"""Tar and zip archives read member by member, in one pass, never extracted.

`read_archive` yields a Member per wanted image member (its bytes, or why they
could not be read) and a Member with name None for a problem with the archive
itself. Member names are only ever names: nothing is written to disk, so
"/etc/x.jpg" or "../x.jpg" cannot escape anywhere. sources.py turns members
into keyed SourceItems.
"""

from __future__ import annotations

import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .errors import describe_os_error, short_message

# Compressed tar streams by their first bytes: (magic, name, header size).
_COMPRESSED_MAGIC = (
    (b"\x1f\x8b", "gzip", 10),
    (b"BZh", "bz2", 4),
    (b"\xfd7zXZ\x00", "xz", 12),
    # LZMA-alone (.lzma): tarfile's "r|*" reads it as xz. Properties byte 0x5d (the
    # only one encoders write), then a dictionary size that is a multiple of 64 KiB.
    (b"\x5d\x00\x00", "lzma", 13),
)


class _HeaderNotingTarInfo(tarfile.TarInfo):
    """TarInfo that notes a header failing its checks on the TarFile reading it.

    tarfile ends the archive quietly (next() returns None, as at the zero blocks
    that end every tar) when a header after the first one is damaged: without the
    note the members after it would vanish without a row.
    """

    @classmethod
    def fromtarfile(cls, tarfile_):
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.InvalidHeaderError as exc:  # not zeros, not cut: a damaged header
            tarfile_.capbatch_damaged_header = str(exc) or "invalid header"
            raise


@dataclass(frozen=True)
class Member:
    name: str | None  # the member's name; None: the row is about the archive itself
    data: bytes | None
    error: str | None


def read_archive(
    path: str, kind: str, wanted: Callable[[str], bool], max_bytes: int
) -> Iterator[Member]:
    """Members of a "tar" (any compression) or "zip" archive whose name `wanted` accepts.

    `wanted` is asked before a member's bytes are read; members over `max_bytes`
    are refused unread. Never raises for a broken archive.
    """
    read = _zip if kind == "zip" else _tar
    try:
        yield from read(path, wanted, max_bytes)
    except Exception as exc:
        # Hostile headers reach parser code paths nobody foresaw (fuzzing found
        # an empty zip member name crashing zipfile's is_dir); whatever breaks
        # ends this archive with an error row, never the run.
        yield Member(None, None, f"corrupt archive: {short_message(exc)}")


def _tar(path: str, wanted: Callable[[str], bool], max_bytes: int) -> Iterator[Member]:
    # Stream mode ("r|*"): one pass, members in archive order, nothing seekable
    # kept in memory, compressed or not. Member bytes are read only when wanted.
    try:
        archive = tarfile.open(name=path, mode="r|*", tarinfo=_HeaderNotingTarInfo)
    except OSError as exc:
        yield Member(None, None, describe_os_error(exc))
        return
    except Exception as exc:
        yield Member(None, None, f"not a readable tar archive: {_tar_open_failure(exc, path)}")
        return
    with archive:
        while True:
            try:
                member = archive.next()
            except Exception as exc:
                yield Member(None, None, f"corrupt tar archive: {short_message(exc)}")
                return
            # tarfile appends every header it reads to `members`, even in stream
            # mode: 1,000,000 members held 579 MB. Nothing here looks back at them.
            archive.members.clear()
            if member is None:
                damaged = getattr(archive, "capbatch_damaged_header", None)
                if damaged:
                    yield Member(None, None, f"corrupt tar archive: {damaged}")
                elif _ended_without_marker(archive):
                    # tarfile takes a cut inside (or right before) a header for the
                    # end: without this row the members after the cut vanish silently.
                    reason = "corrupt tar archive: truncated (no end-of-archive marker)"
                    yield Member(None, None, reason)
                return
            if member.isdir() or not wanted(member.name):
                continue
            yield _tar_member(archive, member, max_bytes)


def _tar_member(archive: tarfile.TarFile, member: tarfile.TarInfo, max_bytes: int) -> Member:
    name = member.name
    if member.issym() or member.islnk():
        return Member(name, None, "archive member is a link, not a file")
    if not member.isreg():
        return Member(name, None, "archive member is not a regular file")
    if member.size > max_bytes:
        return Member(
            name, None, f"archive member too large: {member.size} bytes > limit {max_bytes}"
        )
    try:
        reader = archive.extractfile(member)
        data = reader.read() if reader is not None else b""
    except Exception as exc:
        return Member(name, None, f"cannot read archive member: {short_message(exc)}")
    return Member(name, data, None)


def _zip(path: str, wanted: Callable[[str], bool], max_bytes: int) -> Iterator[Member]:
    try:
        archive = zipfile.ZipFile(path)
    except OSError as exc:
        yield Member(None, None, describe_os_error(exc))
        return
    except Exception as exc:
        yield Member(None, None, f"not a readable zip archive: {short_message(exc)}")
        return
    with archive:
        for info in archive.infolist():  # central-directory order
            # Not info.is_dir(): it raises IndexError on an empty member name.
            if info.filename.endswith("/") or not wanted(info.filename):
                continue
            yield _zip_member(archive, info, max_bytes)


def _zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int) -> Member:
    name = info.filename
    if stat.S_ISLNK(info.external_attr >> 16):
        return Member(name, None, "archive member is a link, not a file")
    if info.flag_bits & 0x1:
        return Member(name, None, "archive member is encrypted")
    if info.file_size > max_bytes:
        return Member(
            name, None, f"archive member too large: {info.file_size} bytes > limit {max_bytes}"
        )
    try:
        with archive.open(info) as reader:
            data = reader.read(max_bytes + 1)  # the declared size can lie
    except Exception as exc:
        return Member(name, None, f"corrupt archive member: {short_message(exc)}")
    if len(data) > max_bytes:
        return Member(name, None, f"archive member too large: over limit {max_bytes} bytes")
    return Member(name, data, None)


def _tar_open_failure(exc: Exception, path: str) -> str:
    """Why tarfile could not read a first header, in words about the file.

    tarfile says "empty file" or "truncated header" both for a 0-byte file and
    for compressed data cut before a whole tar header came out of it.
    """
    message = short_message(exc)
    if message not in ("empty file", "truncated header"):
        return message
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return message
    if not head:
        return "empty file (0 bytes)"
    for magic, name, header_size in _COMPRESSED_MAGIC:
        if head.startswith(magic):
            if len(head) < header_size:
                return f"truncated {name} stream (cut inside its header)"
            return f"truncated {name} stream (no tar data in it)"
    return "empty tar archive (no members)" if message == "empty file" else message


def _ended_without_marker(archive: tarfile.TarFile) -> bool:
    """Whether a finished tar stream lacked the zero block that ends every tar.

    tarfile reads a whole 512-byte block for each header; at a proper end that
    block is zeros and the stream stands a full block past the last member.
    Short of that, the file was cut at or inside a header.
    """
    try:
        position = archive.fileobj.tell()  # decompressed position in stream mode
        return position - archive.offset < tarfile.BLOCKSIZE
    except (AttributeError, OSError, ValueError):
        return False  # cannot tell: do not invent an error
