"""capbatch.archives on small real tar and zip files: what each member and each
broken archive becomes, reason word for word (docs/inputs-outputs.md and
docs/reliability.md), the size limit at its boundary, and where a cut or a
damaged header lands. Written from the survivors of the archives.py mutation
run (docs/testing.md)."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import stat
import tarfile
import zipfile

import pytest

from capbatch.archives import Member, read_archive
from capbatch.sources import iter_sources


def _everything(name: str) -> bool:
    return True


def _read(path, kind: str = "tar", max_bytes: int = 1_000_000, wanted=_everything):
    return list(read_archive(str(path), kind, wanted, max_bytes))


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def _tar_bytes(entries, mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _zip_bytes(entries) -> bytes:
    """entries: (name or ZipInfo, data) in central-directory order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


# ---------------------------------------------------------------------------- tar members


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_tar_gives_wanted_members_whole_in_archive_order(tmp_path, mode):
    folder = tarfile.TarInfo("b")
    folder.type = tarfile.DIRTYPE
    path = tmp_path / "shard.tar"
    path.write_bytes(
        _tar_bytes(
            [_file("z.png", b"zz"), (folder, None), _file("b/a.png", b"a" * 3000),
             _file("b/notes.txt", b"skip me"), _file("a.png", b"")],
            mode,
        )
    )  # fmt: skip
    asked = []

    def wanted(name):
        asked.append(name)
        return name.endswith(".png")

    assert _read(path, wanted=wanted) == [
        Member("z.png", b"zz", None),
        Member("b/a.png", b"a" * 3000, None),
        Member("a.png", b"", None),
    ]
    assert asked == ["z.png", "b/a.png", "b/notes.txt", "a.png"]  # never a directory


def test_tar_links_and_special_members_are_refused_by_kind(tmp_path):
    path = tmp_path / "links.tar"
    path.write_bytes(
        _tar_bytes(
            [_file("real.png", b"real"),
             _special("soft.png", tarfile.SYMTYPE, "/etc/passwd"),
             _special("hard.png", tarfile.LNKTYPE, "real.png"),
             _special("pipe.png", tarfile.FIFOTYPE),
             _special("tty.png", tarfile.CHRTYPE),
             _file("after.png", b"after")]
        )
    )  # fmt: skip
    assert _read(path) == [
        Member("real.png", b"real", None),
        Member("soft.png", None, "archive member is a link, not a file"),
        Member("hard.png", None, "archive member is a link, not a file"),
        Member("pipe.png", None, "archive member is not a regular file"),
        Member("tty.png", None, "archive member is not a regular file"),
        Member("after.png", b"after", None),
    ]


def test_tar_member_at_the_limit_is_read_and_one_byte_over_is_refused(tmp_path):
    path = tmp_path / "sizes.tar.gz"
    path.write_bytes(
        _tar_bytes(
            [_file("at.png", b"a" * 10), _file("over.png", b"o" * 11), _file("next.png", b"n")],
            "w:gz",
        )
    )
    assert _read(path, max_bytes=10) == [
        Member("at.png", b"a" * 10, None),
        Member("over.png", None, "archive member too large: 11 bytes > limit 10"),
        Member("next.png", b"n", None),  # the refused member's data was skipped, not lost
    ]


# ------------------------------------------------------------------ cut and damaged tars


def _two_members() -> bytes:
    # 512-byte header + 700 bytes (padded to 1024) each: a.png 0..1535, b.png 1536..3071.
    return _tar_bytes([_file("a.png", b"A" * 700), _file("b.png", b"B" * 700)])


@pytest.mark.parametrize("cut", [1536, 1600, 2047])
def test_tar_cut_at_or_inside_a_header_says_so_after_the_members_before_it(tmp_path, cut):
    path = tmp_path / "cut.tar"
    path.write_bytes(_two_members()[:cut])
    assert _read(path) == [
        Member("a.png", b"A" * 700, None),
        Member(None, None, "corrupt tar archive: truncated (no end-of-archive marker)"),
    ]


def test_tar_cut_inside_member_data_names_the_member_and_the_archive(tmp_path):
    path = tmp_path / "cut.tar"
    path.write_bytes(_two_members()[:2100])
    assert _read(path) == [
        Member("a.png", b"A" * 700, None),
        Member("b.png", None, "cannot read archive member: unexpected end of data"),
        Member(None, None, "corrupt tar archive: unexpected end of data"),
    ]


@pytest.mark.parametrize("cut", [3584, 4096, 10239])
def test_tar_cut_inside_the_trailing_zeros_loses_nothing_and_says_nothing(tmp_path, cut):
    path = tmp_path / "short-end.tar"
    path.write_bytes(_two_members()[:cut])
    assert _read(path) == [Member("a.png", b"A" * 700, None), Member("b.png", b"B" * 700, None)]


@pytest.mark.parametrize("cut", [3072, 3583])
def test_tar_cut_before_a_whole_end_block_cannot_say_nothing_followed(tmp_path, cut):
    path = tmp_path / "no-end.tar"
    path.write_bytes(_two_members()[:cut])
    assert _read(path) == [
        Member("a.png", b"A" * 700, None),
        Member("b.png", b"B" * 700, None),
        Member(None, None, "corrupt tar archive: truncated (no end-of-archive marker)"),
    ]


def test_a_damaged_header_after_the_first_member_is_not_a_silent_end(tmp_path):
    raw = bytearray(_tar_bytes([_file(n, b"abc") for n in ("a.png", "b.png", "c.png")]))
    raw[1024] ^= 0xFF  # first byte of b.png's name: its header checksum no longer matches
    path = tmp_path / "damaged.tar"
    path.write_bytes(bytes(raw))
    members = _read(path)
    # As for a cut (docs/inputs-outputs.md): the members before it, then the archive's row.
    assert members[0] == Member("a.png", b"abc", None)
    assert members[-1].name is None and members[-1].error.startswith("corrupt tar archive: ")
    assert members[-1].error == "corrupt tar archive: bad checksum" and len(members) == 2


# ------------------------------------------------------------ archives that cannot open


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_an_archive_that_cannot_be_opened_is_one_row_in_os_words(tmp_path, kind):
    assert _read(tmp_path / f"gone.{kind}", kind) == [
        Member(None, None, "no such file or directory")
    ]
    assert _read(tmp_path, kind) == [Member(None, None, "cannot read: Is a directory")]


def test_files_that_are_not_archives_say_why(tmp_path):
    (tmp_path / "short.tar").write_bytes(b"x" * 100)
    (tmp_path / "junk.tar").write_bytes(b"x" * 600)
    (tmp_path / "zero.tar").write_bytes(b"")
    (tmp_path / "junk.zip").write_bytes(b"definitely not a zip")
    found = {path.name: _read(path, path.suffix[1:]) for path in sorted(tmp_path.iterdir())}
    assert found == {
        "short.tar": [Member(None, None, "not a readable tar archive: truncated header")],
        "junk.tar": [Member(None, None, "not a readable tar archive: invalid header")],
        "zero.tar": [Member(None, None, "not a readable tar archive: empty file (0 bytes)")],
        "junk.zip": [Member(None, None, "not a readable zip archive: File is not a zip file")],
    }


@pytest.mark.parametrize(
    ("compress", "name", "header_size"),
    [(gzip.compress, "gzip", 10), (bz2.compress, "bz2", 4), (lzma.compress, "xz", 12)],
)
def test_a_compressed_tar_cut_before_tar_data_names_its_compression(
    tmp_path, compress, name, header_size
):
    whole = compress(_two_members())
    found = {}
    for cut in (header_size - 1, header_size):
        path = tmp_path / f"cut-{cut}.tar"
        path.write_bytes(whole[:cut])
        found[cut] = _read(path)
    prefix = f"not a readable tar archive: truncated {name} stream"
    assert found == {
        header_size - 1: [Member(None, None, f"{prefix} (cut inside its header)")],
        header_size: [Member(None, None, f"{prefix} (no tar data in it)")],
    }


def test_an_lzma_alone_tar_cut_before_tar_data_is_called_truncated(tmp_path):
    path = tmp_path / "cut.tar.xz"
    path.write_bytes(lzma.compress(_two_members(), format=lzma.FORMAT_ALONE)[:13])
    [member] = _read(path)
    assert member.name is None and "truncated" in member.error, member.error
    assert member.error == "not a readable tar archive: truncated lzma stream (no tar data in it)"


# ----------------------------------------------------------------------------- zip members


def test_zip_gives_members_in_central_directory_order_and_skips_folders(tmp_path):
    path = tmp_path / "shard.zip"
    path.write_bytes(
        _zip_bytes([("z.png", b"zz"), ("d/", b""), ("d/a.png", b"a" * 3000), ("n.txt", b"t")])
    )
    asked = []

    def wanted(name):
        asked.append(name)
        return name.endswith(".png")

    assert _read(path, "zip", wanted=wanted) == [
        Member("z.png", b"zz", None),
        Member("d/a.png", b"a" * 3000, None),
    ]
    assert asked == ["z.png", "d/a.png", "n.txt"]  # a folder entry is never offered


def test_zip_links_and_encrypted_members_are_refused_unread(tmp_path):
    link = zipfile.ZipInfo("link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    regular = zipfile.ZipInfo("regular.png")
    regular.external_attr = (stat.S_IFREG | 0o644) << 16
    raw = bytearray(
        _zip_bytes([(link, "/etc/passwd"), (regular, b"data"), ("secret.png", b"hidden")])
    )
    # zipfile writes no encrypted members: set the flag on the last member's headers.
    local = raw.rfind(b"PK\x03\x04")
    central = raw.rfind(b"PK\x01\x02")
    raw[local + 6] |= 0x1
    raw[central + 8] |= 0x1
    path = tmp_path / "odd.zip"
    path.write_bytes(bytes(raw))
    assert _read(path, "zip") == [
        Member("link.png", None, "archive member is a link, not a file"),
        Member("regular.png", b"data", None),
        Member("secret.png", None, "archive member is encrypted"),
    ]


def test_zip_member_at_the_limit_is_read_and_one_byte_over_is_refused(tmp_path):
    path = tmp_path / "sizes.zip"
    path.write_bytes(
        _zip_bytes([("at.png", b"a" * 10), ("over.png", b"o" * 11), ("next.png", b"n")])
    )
    assert _read(path, "zip", max_bytes=10) == [
        Member("at.png", b"a" * 10, None),
        Member("over.png", None, "archive member too large: 11 bytes > limit 10"),
        Member("next.png", b"n", None),
    ]


def test_a_damaged_zip_member_names_its_crc_and_its_neighbours_are_read(tmp_path):
    stored = io.BytesIO()
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("damaged.png", b"0123456789")
        archive.writestr("good.png", b"fine")
    raw = bytearray(stored.getvalue())
    raw[raw.find(b"0123456789")] ^= 0x01  # the stored bytes change, the CRC does not
    path = tmp_path / "bad.zip"
    path.write_bytes(bytes(raw))
    assert _read(path, "zip") == [
        Member("damaged.png", None, "corrupt archive member: Bad CRC-32 for file 'damaged.png'"),
        Member("good.png", b"fine", None),
    ]


# ----------------------------------------------------------------- as sources.py keys them


def test_member_rows_are_keyed_under_the_archive_and_archive_rows_on_its_own_key(tmp_path):
    path = tmp_path / "cut.tar"
    path.write_bytes(
        _tar_bytes(
            [_file("a.png", b"A" * 700), _special("l.png", tarfile.SYMTYPE, "a.png"),
             _file("b.png", b"B" * 700)]
        )[:2048]
    )  # fmt: skip
    items = [(i.key, i.path, i.data, i.error) for i in iter_sources([str(path)])]
    assert items == [
        (f"{path}::a.png", None, b"A" * 700, None),
        (f"{path}::l.png", None, None, "archive member is a link, not a file"),
        (str(path), str(path), None, "corrupt tar archive: truncated (no end-of-archive marker)"),
    ]
