"""Model integrity through the CLI: tampered, truncated or mismatched bundles and
unsafe checkpoints are refused with one line, exit code 2, and nothing written.

(Library-level checks live in test_bundle.py / test_export.py; these cover the
CLI outcome and the cases those do not.)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from capbatch.cli import main
from capbatch.errors import ExitCode
from capbatch.output_lock import lock_path_for
from tests.conftest import needs_torch
from tests.io_fixtures import png_bytes
from tests.runtime_fakes import make_fake_bundle, read_manifest_json, rehash, write_manifest


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


@pytest.fixture
def bundle(pristine, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(pristine, copy)
    return copy


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes())
    return path


def refused(capsys, image: Path, bundle: Path, out: Path) -> str:
    """Run caption; assert the fatal one-liner contract; return the message."""
    code = main(["caption", str(image), "--out", str(out), "--model", str(bundle), "-q"])
    err = capsys.readouterr().err
    assert code == ExitCode.FATAL, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capbatch: error: "), err
    assert not out.exists() and not lock_path_for(out).exists()
    return lines[0]


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def edit_manifest(bundle: Path, change) -> None:
    manifest = read_manifest_json(bundle)
    change(manifest)
    write_manifest(bundle, manifest)


def test_the_untampered_bundle_works(capsys, bundle, image, tmp_path):
    out = tmp_path / "o.csv"
    assert main(["caption", str(image), "--out", str(out), "--model", str(bundle), "-q"]) == 0
    assert out.exists()


@pytest.mark.parametrize("name", ["encoder.onnx", "decoder_step.onnx", "vocab.json"])
def test_one_flipped_byte_is_refused(capsys, bundle, image, tmp_path, name):
    flip_one_byte(bundle / name)
    message = refused(capsys, image, bundle, tmp_path / "o.csv")
    assert f"{name}: sha256 mismatch" in message


def test_truncated_graph_is_refused(capsys, bundle, image, tmp_path):
    graph = bundle / "decoder_step.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    assert "decoder_step.onnx: sha256 mismatch" in refused(
        capsys, image, bundle, tmp_path / "o.csv"
    )


def test_truncated_graph_with_a_matching_hash_still_fails_cleanly(capsys, bundle, image, tmp_path):
    # A broken export that hashed what it wrote: the hash passes, onnxruntime refuses.
    graph = bundle / "encoder.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    rehash(bundle, "encoder.onnx")
    assert "cannot load encoder.onnx" in refused(capsys, image, bundle, tmp_path / "o.csv")


def test_manifest_hash_that_does_not_match(capsys, bundle, image, tmp_path):
    edit_manifest(bundle, lambda m: m["files"].update({"encoder.onnx": "0" * 64}))
    assert "encoder.onnx: sha256 mismatch" in refused(capsys, image, bundle, tmp_path / "o.csv")


def test_missing_graph_file(capsys, bundle, image, tmp_path):
    (bundle / "encoder.onnx").unlink()
    assert "encoder.onnx: missing" in refused(capsys, image, bundle, tmp_path / "o.csv")


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_format_version_that_does_not_match(capsys, bundle, image, tmp_path, version):
    edit_manifest(bundle, lambda m: m.update(format_version=version))
    assert "format_version" in refused(capsys, image, bundle, tmp_path / "o.csv")


def test_manifest_that_is_not_json(capsys, bundle, image, tmp_path):
    (bundle / "manifest.json").write_text('{"format": "capbatch-bundle", ', encoding="utf-8")
    assert "not readable JSON" in refused(capsys, image, bundle, tmp_path / "o.csv")


def test_manifest_pointing_outside_the_bundle(capsys, bundle, image, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(bundle / "encoder.onnx", outside)

    def point_outside(manifest):
        digest = manifest["files"].pop("encoder.onnx")
        manifest["files"]["../elsewhere.onnx"] = digest
        manifest["graphs"]["encoder"]["file"] = "../elsewhere.onnx"

    edit_manifest(bundle, point_outside)
    assert "not a plain file name" in refused(capsys, image, bundle, tmp_path / "o.csv")


def test_vocab_that_does_not_fit_the_graph(capsys, bundle, image, tmp_path):
    tokens = json.loads((bundle / "vocab.json").read_text())
    (bundle / "vocab.json").write_text(json.dumps(tokens[:-2]))
    rehash(bundle, "vocab.json")
    message = refused(capsys, image, bundle, tmp_path / "o.csv")
    assert "vocab has 12 tokens but the step graph scores 14" in message


def test_vocab_that_is_not_a_token_list(capsys, bundle, image, tmp_path):
    (bundle / "vocab.json").write_text(json.dumps({"red": 4}))
    rehash(bundle, "vocab.json")
    assert "bundle vocab vocab.json" in refused(capsys, image, bundle, tmp_path / "o.csv")


def test_tampered_tokenizer_is_refused(capsys, bundle, image, tmp_path):
    # The runtime captions from vocab.json, but the tokenizer travels with the
    # bundle and is hashed like everything else.
    (bundle / "tokenizer.json").write_text('{"model": {"vocab": {"evil": 0}}}')
    assert "tokenizer.json: sha256 mismatch" in refused(capsys, image, bundle, tmp_path / "o.csv")


def test_preprocess_size_that_does_not_fit_the_encoder(capsys, bundle, image, tmp_path):
    edit_manifest(bundle, lambda m: m["preprocess"].update(size=64))
    message = refused(capsys, image, bundle, tmp_path / "o.csv")
    assert "encoder expects 32x32 images but the manifest's preprocess size is 64" in message


@pytest.mark.parametrize("token,value", [("end", 99), ("start", -5)])
def test_special_token_ids_outside_the_vocab(capsys, bundle, image, tmp_path, token, value):
    edit_manifest(bundle, lambda m: m["special_tokens"].update({token: value}))
    assert "special" in refused(capsys, image, bundle, tmp_path / "o.csv")


class _RunsCodeWhenUnpickled:
    """Unpickling this calls os.system: the classic malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@needs_torch
def test_checkpoint_with_pickled_objects_is_refused_by_export(capsys, tmp_path):
    import torch

    marker = tmp_path / "code-ran"
    checkpoint = tmp_path / "evil.pt"
    torch.save(
        {
            "format": "capbatch-checkpoint",
            "version": 1,
            "model": {},
            "config": {},
            "tokenizer": "{}",
            "extra": {"payload": _RunsCodeWhenUnpickled(marker)},
        },
        checkpoint,
    )
    out = tmp_path / "bundle"
    code = main(["export", "--ckpt", str(checkpoint), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == ExitCode.FATAL, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "pickled Python objects, refused" in lines[0]
    assert not marker.exists(), "unpickling ran code"
    assert not out.exists() and not any(p.name.startswith("bundle") for p in tmp_path.iterdir())
