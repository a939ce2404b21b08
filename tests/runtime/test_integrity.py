"""capbatch/integrity.py's promises, file by file: what is hashed is what is loaded,
nothing in a bundle may be a link or anything but a regular file, a graph must
hold its own weights, and each refusal is one line naming the file and why.

Written from the surviving mutants of the mutation job (docs/testing.md). The
CLI outcome of the same refusals is in tests/reliability/test_model_integrity.py.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from capbatch import integrity
from capbatch.errors import BundleError
from capbatch.integrity import (
    BundleDir,
    FileProblem,
    check_self_contained,
    sha256_bytes,
    sha256_file,
)
from tests import onnx_proto
from tests.onnx_proto import from_array

LINK = "is a symbolic link (a bundle holds plain files only)"


@pytest.fixture(params=["dir_fd", "by_path"])
def opened(request, monkeypatch):
    """BundleDir both ways: through a directory handle (Linux) and by path (no dir_fd)."""
    if request.param == "by_path":
        monkeypatch.setattr(integrity, "_DIR_FD", False)

    def open_bundle(path: Path) -> BundleDir:
        return BundleDir(path)

    return open_bundle


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_path_that_is_not_a_directory_is_one_bundle_error(tmp_path):
    plain = tmp_path / "model.onnx"
    plain.write_bytes(b"x")
    for path in (plain, tmp_path / "absent"):
        with pytest.raises(BundleError) as caught:
            BundleDir(path)
        assert str(caught.value) == f"model bundle not found: {path} is not a directory"


def test_a_directory_that_cannot_be_opened_is_one_bundle_error(tmp_path, monkeypatch):
    real_open = os.open

    def refuse_directories(path, flags, *args, **kwargs):
        if flags & os.O_DIRECTORY:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_directories)
    with pytest.raises(BundleError) as caught:
        BundleDir(tmp_path)
    assert str(caught.value) == f"cannot open model bundle {tmp_path}: Permission denied"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_the_directory_handle_is_closed_on_exit_even_twice(tmp_path):
    before = _open_fds()
    directory = BundleDir(tmp_path)
    assert len(_open_fds() - before) == 1  # one handle, opened once
    with directory:
        pass
    assert _open_fds() == before
    directory.__exit__(None, None, None)  # a second exit closes nothing else
    assert _open_fds() == before


def test_reads_return_the_bytes_and_none_for_an_absent_file(tmp_path, opened):
    data = bytes(range(256)) * 5
    (tmp_path / "vocab.json").write_bytes(data)
    with opened(tmp_path) as directory:
        assert directory.path == tmp_path
        assert directory.read("vocab.json") == data
        assert directory.read("vocab.json", limit=len(data)) == data  # the limit itself is fine
        assert directory.read("absent.json") is None
        assert directory.sha256("vocab.json") == hashlib.sha256(data).hexdigest()
        assert directory.sha256("absent.json") is None


def test_a_file_over_the_limit_is_refused_by_size(tmp_path, opened):
    (tmp_path / "manifest.json").write_bytes(b"{}" * 6)
    with opened(tmp_path) as directory, pytest.raises(FileProblem) as caught:
        directory.read("manifest.json", limit=11)
    assert str(caught.value) == "manifest.json: larger than 11 bytes"


def test_links_lists_only_the_symbolic_links_sorted(tmp_path, opened):
    (tmp_path / "plain.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "z-link").symlink_to(tmp_path / "plain.txt")
    (tmp_path / "a-dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "m-folder-link").symlink_to(tmp_path / "sub", target_is_directory=True)
    with opened(tmp_path) as directory:
        assert directory.links() == ["a-dangling", "m-folder-link", "z-link"]


@pytest.mark.skipif(not integrity._DIR_FD, reason="needs open(dir_fd=...)")
def test_a_bundle_directory_swapped_after_opening_is_not_read(tmp_path):
    # Every read and the scan for links go through the handle opened first.
    first = tmp_path / "bundle"
    first.mkdir()
    (first / "vocab.json").write_text("original")
    with BundleDir(first) as directory:
        first.rename(tmp_path / "moved")
        first.mkdir()
        (first / "vocab.json").symlink_to(tmp_path / "moved" / "vocab.json")
        (first / "planted").symlink_to(tmp_path)
        assert directory.links() == []
        assert directory.read("vocab.json") == b"original"
        assert directory.sha256("vocab.json") == sha256_bytes(b"original")


@pytest.mark.parametrize("target", ["plain.txt", "nowhere"], ids=["to-a-file", "dangling"])
def test_a_link_is_refused_for_reading_and_hashing(tmp_path, opened, target):
    (tmp_path / "plain.txt").write_text("the hashed bytes")
    (tmp_path / "encoder.onnx").symlink_to(tmp_path / target)
    with opened(tmp_path) as directory:
        for method in (directory.read, directory.sha256):
            with pytest.raises(FileProblem) as caught:
                method("encoder.onnx")
            assert str(caught.value) == f"encoder.onnx: {LINK}"


def test_without_o_nofollow_a_link_is_still_refused_before_opening(tmp_path, monkeypatch):
    # Windows has no O_NOFOLLOW: the loader looks at the name first.
    monkeypatch.setattr(integrity, "_NOFOLLOW", 0)
    (tmp_path / "plain.txt").write_text("x")
    (tmp_path / "vocab.json").symlink_to(tmp_path / "plain.txt")
    with BundleDir(tmp_path) as directory:
        with pytest.raises(FileProblem) as caught:
            directory.read("vocab.json")
        assert str(caught.value) == f"vocab.json: {LINK}"
        assert directory.read("plain.txt") == b"x"


def test_an_emlink_from_the_open_means_a_link_too(tmp_path, monkeypatch):
    # FreeBSD answers O_NOFOLLOW on a link with EMLINK, Linux with ELOOP.
    (tmp_path / "vocab.json").write_text("x")

    def emlink(*args, **kwargs):
        raise OSError(errno.EMLINK, os.strerror(errno.EMLINK))

    with BundleDir(tmp_path) as directory:
        monkeypatch.setattr(os, "open", emlink)
        with pytest.raises(FileProblem) as caught:
            directory.read("vocab.json")
    assert str(caught.value) == f"vocab.json: {LINK}"


@pytest.mark.parametrize("method", ["read", "sha256"])
def test_an_open_that_fails_otherwise_says_unreadable_with_the_reason(
    tmp_path, monkeypatch, method
):
    (tmp_path / "vocab.json").write_text("x")

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    with BundleDir(tmp_path) as directory:
        monkeypatch.setattr(os, "open", denied)
        with pytest.raises(FileProblem) as caught:
            getattr(directory, method)("vocab.json")
    assert str(caught.value) == "vocab.json: unreadable (Permission denied)"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.parametrize("method", ["read", "sha256"])
def test_a_read_that_fails_says_unreadable_with_the_reason(tmp_path, monkeypatch, method):
    (tmp_path / "vocab.json").write_text("x")
    real_fdopen = os.fdopen

    class FailingHandle:
        def __init__(self, fd):
            self._handle = real_fdopen(fd, "rb")

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self._handle.close()

        def fileno(self):
            return self._handle.fileno()

        def read(self, *size):
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: FailingHandle(fd))
    with BundleDir(tmp_path) as directory, pytest.raises(FileProblem) as caught:
        getattr(directory, method)("vocab.json")
    assert str(caught.value) == "vocab.json: unreadable (Input/output error)"
    assert caught.value.__suppress_context__


@pytest.mark.parametrize("method", ["read", "sha256"])
def test_a_folder_or_fifo_under_a_listed_name_is_not_a_regular_file(tmp_path, opened, method):
    (tmp_path / "encoder.onnx").mkdir()
    names = ["encoder.onnx"]
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "tokenizer.json")  # opened non-blocking: no hang
        names.append("tokenizer.json")
    with opened(tmp_path) as directory:
        before = _open_fds() if os.path.isdir("/proc/self/fd") else set()
        for name in names:
            with pytest.raises(FileProblem) as caught:
                getattr(directory, method)(name)
            assert str(caught.value) == f"{name}: not a regular file"
        if before:
            assert _open_fds() == before  # the descriptor of the refused file is closed


def test_hashes_of_files_bytes_and_chunks_agree(tmp_path):
    # Larger than one read chunk, not a multiple of it.
    data = os.urandom((1 << 20) + 12345)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(path) == expected
    assert sha256_file(str(path)) == expected
    assert sha256_bytes(data) == expected
    with BundleDir(tmp_path) as directory:
        assert directory.sha256("big.bin") == expected
    assert sha256_bytes(b"") == hashlib.sha256(b"").hexdigest()


# --------------------------------------------------------------------------- graphs


def _external_tensor(name: str, location: str | None) -> bytes:
    """TensorProto with data_location=EXTERNAL (14) and an external_data entry (13)."""
    entry = (
        b"" if location is None else onnx_proto._str(1, "location") + onnx_proto._str(2, location)
    )
    return onnx_proto._str(8, name) + onnx_proto._bytes(13, entry) + onnx_proto._int(14, 1)


def _model(*initializers: bytes) -> bytes:
    graph = onnx_proto.make_graph([], "g", [], [], list(initializers))
    return onnx_proto.make_model(graph)


def test_a_graph_that_holds_its_weights_passes():
    import numpy as np

    check_self_contained("encoder.onnx", _model(from_array(np.ones(3, np.float32), "w")))
    check_self_contained("encoder.onnx", _model())


def test_a_graph_with_external_tensors_is_refused_with_count_and_sorted_locations():
    model = _model(
        _external_tensor("a", "w2.bin"),
        _external_tensor("b", "w1.bin"),
        _external_tensor("c", "w2.bin"),
        _external_tensor("d", None),  # external without a location: ""
    )
    with pytest.raises(FileProblem) as caught:
        check_self_contained("decoder_step.onnx", model)
    assert str(caught.value) == (
        "decoder_step.onnx: keeps 4 tensors in external data ('', 'w1.bin', 'w2.bin'); "
        "bundle graphs must hold their own weights (docs/bundle-format.md)"
    )


def test_an_external_location_outside_the_bundle_names_the_first_such_location():
    model = _model(
        _external_tensor("a", "inside.bin"),
        _external_tensor("b", "/etc/shadow"),
        _external_tensor("c", "../up.bin"),
    )
    with pytest.raises(FileProblem) as caught:
        check_self_contained("encoder.onnx", model)
    # sorted: "../up.bin" < "/etc/shadow"
    assert (
        str(caught.value)
        == "encoder.onnx: external data location '../up.bin' points outside the bundle"
    )


def test_bytes_that_are_not_a_graph_are_refused_in_one_line():
    with pytest.raises(FileProblem) as caught:
        check_self_contained("encoder.onnx", b"\x3a\x10short")
    assert str(caught.value) == (
        "cannot load encoder.onnx: not a well-formed ONNX graph "
        "(field runs past the end of its message)"
    )
    assert caught.value.__suppress_context__
