"""Model integrity through the CLI: tampered, truncated or mismatched bundles and
unsafe checkpoints are refused with one line, exit code 2, and nothing written.

(Library-level checks live in tests/runtime/test_bundle.py / tests/export/test_export.py; these cover the
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


@pytest.mark.parametrize("text", [json.dumps({"red": 4}), "[" * 100_000, "[]", "\udcff"])
def test_vocab_that_is_not_a_token_list(capsys, bundle, image, tmp_path, text):
    (bundle / "vocab.json").write_bytes(text.encode("utf-8", "surrogateescape"))
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


def info_refused(capsys, bundle: Path) -> str:
    """`capbatch info --model`: one error line, exit 2, and no "ok" for the bundle."""
    code = main(["info", "--model", str(bundle)])
    captured = capsys.readouterr()
    assert code == ExitCode.FATAL, captured.err
    assert "verified" not in captured.out and " ok" not in captured.out, captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capbatch: error: "), captured.err
    assert "internal error" not in lines[0]
    return lines[0]


def test_info_verifies_the_untampered_bundle(capsys, bundle):
    assert main(["info", "--model", str(bundle)]) == 0
    assert "sha256 of every file ok" in capsys.readouterr().out


# --------------------------------------------------------------------------- manifest schema

DEEP = 100_000


def _set(*keys: str, value):
    """An edit that sets manifest[k1][k2]... = value."""

    def change(manifest):
        *parents, last = keys
        for key in parents:
            manifest = manifest[key]
        manifest[last] = value

    return change


def _delete(*keys: str):
    def change(manifest):
        *parents, last = keys
        for key in parents:
            manifest = manifest[key]
        del manifest[last]

    return change


def _nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


MALFORMED = {
    "graphs-list": (_set("graphs", value=[]), "graphs must be an object"),
    "vocab-string": (_set("vocab", value="x"), "vocab must be an object"),
    "vocab-style-list": (_set("vocab", "style", value=["word"]), "vocab.style"),
    "encoder-string": (_set("graphs", "encoder", value="x"), "graphs.encoder must be an object"),
    "inputs-string": (_set("graphs", "encoder", "inputs", value="images"), "graphs.encoder.inputs"),
    "no-step-graph": (_delete("graphs", "decoder_step"), "'decoder_step'"),
    "top-k-negative": (_set("graphs", "decoder_step", "top_k", value=-1), "top_k"),
    "files-list": (_set("files", value=[]), "files must be an object"),
    "files-digest-number": (_set("files", "encoder.onnx", value=5), "sha256"),
    "files-lists-manifest": (_set("files", "manifest.json", value="0" * 64), "manifest.json"),
    "special-list": (
        _set("special_tokens", value=[0, 1, 2, 3]),
        "special_tokens must be an object",
    ),
    "special-string-id": (_set("special_tokens", "start", value="1"), "special_tokens.start"),
    "special-missing-unk": (_delete("special_tokens", "unk"), "'unk'"),
    "preprocess-string": (_set("preprocess", value="x"), "preprocess must be an object"),
    "preprocess-size-list": (_set("preprocess", "size", value=[224]), "preprocess"),
    "preprocess-unhashable": (
        _set("preprocess", "interpolation", value=["bilinear"]),
        "preprocess",
    ),
    "preprocess-unknown-key": (_set("preprocess", "mean", value=[0.5]), "preprocess"),
    "no-preprocess": (_delete("preprocess"), "'preprocess'"),
    "max-len-string": (_set("max_len", value="30"), "max_len"),
    "max-len-bool": (_set("max_len", value=True), "max_len"),
    "max-len-zero": (_set("max_len", value=0), "max_len"),
    "model-id-number": (_set("model_id", value=5), "model_id"),
    "no-model-id": (_delete("model_id"), "'model_id'"),
    "config-list": (_set("config", value=[]), "config must be an object"),
    "metrics-string": (_set("metrics", value="x"), "metrics must be an object"),
    "nested-lists": (_set("metrics", value={"bleu": _nested(500)}), "nests deeper"),
}
RAW_MALFORMED = {
    "top-level-list": ("[]", "not a capbatch bundle manifest"),
    "top-level-null": ("null", "not a capbatch bundle manifest"),
    "deep-json": ("[" * DEEP + "]" * DEEP, "not readable JSON"),
    "deep-json-in-metrics": (None, "not readable JSON"),
    "huge-integer": (None, "not readable JSON"),
    "not-utf8": (b"\xff\xfe{}", "not readable JSON"),
}


def _write_raw(bundle: Path, case: str, text) -> None:
    manifest_path = bundle / "manifest.json"
    original = manifest_path.read_text(encoding="utf-8")
    if case == "deep-json-in-metrics":
        text = original.replace('"metrics": {', f'"deep": {"[" * DEEP}{"]" * DEEP}, "metrics": {{')
    elif case == "huge-integer":
        text = original.replace('"max_len": 8', '"max_len": 1' + "0" * 5000)
    assert text != original
    if isinstance(text, bytes):
        manifest_path.write_bytes(text)
    else:
        manifest_path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_manifest_is_one_bundle_error(capsys, bundle, image, tmp_path, case):
    change, expected = MALFORMED[case]
    edit_manifest(bundle, change)
    assert expected in refused(capsys, image, bundle, tmp_path / "o.csv")
    assert expected in info_refused(capsys, bundle)


@pytest.mark.parametrize("case", sorted(RAW_MALFORMED))
def test_unparseable_manifest_is_one_bundle_error(capsys, bundle, image, tmp_path, case):
    text, expected = RAW_MALFORMED[case]
    _write_raw(bundle, case, text)
    assert expected in refused(capsys, image, bundle, tmp_path / "o.csv")
    assert expected in info_refused(capsys, bundle)


# --------------------------------------------------------------------------- links, files


@pytest.mark.parametrize("name", ["encoder.onnx", "vocab.json", "manifest.json"])
def test_a_symlink_inside_the_bundle_is_refused_even_with_the_right_bytes(
    capsys, bundle, image, tmp_path, name
):
    # The link's target has exactly the hashed bytes: it is the link that is refused,
    # because its target can change after the check.
    target = tmp_path / f"elsewhere-{name}"
    shutil.move(bundle / name, target)
    (bundle / name).symlink_to(target)
    message = refused(capsys, image, bundle, tmp_path / "o.csv")
    assert f"{name}: is a symbolic link" in message
    assert f"{name}: is a symbolic link" in info_refused(capsys, bundle)


def test_an_unlisted_symlink_in_the_bundle_is_refused(capsys, bundle, image, tmp_path):
    (bundle / "notes.txt").symlink_to(tmp_path / "anything")
    assert "notes.txt: is a symbolic link" in refused(capsys, image, bundle, tmp_path / "o.csv")


def test_the_bundle_directory_itself_may_be_a_link(capsys, bundle, image, tmp_path):
    alias = tmp_path / "current"
    alias.symlink_to(bundle, target_is_directory=True)
    out = tmp_path / "o.csv"
    assert main(["caption", str(image), "--out", str(out), "--model", str(alias), "-q"]) == 0


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_in_place_of_a_listed_file_does_not_hang(capsys, bundle, image, tmp_path):
    (bundle / "tokenizer.json").unlink()
    os.mkfifo(bundle / "tokenizer.json")
    assert "tokenizer.json: not a regular file" in refused(
        capsys, image, bundle, tmp_path / "o.csv"
    )


# --------------------------------------------------------------------------- external data


def _move_weights_outside_the_graph(bundle: Path, location: str = "weights.bin") -> Path:
    """Re-save encoder.onnx with its larger tensors in an external file, all hashed.

    Returns the external file. onnxruntime WOULD load such a graph from bytes,
    reading `location` relative to the current directory: outside every hash.
    """
    onnx = pytest.importorskip("onnx")  # re-saving with external data needs the real package
    from onnx.external_data_helper import convert_model_to_external_data

    model = onnx.load(str(bundle / "encoder.onnx"))
    convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=100
    )
    onnx.save_model(model, str(bundle / "encoder.onnx"))
    weights = bundle / "weights.bin"
    if location != "weights.bin":  # rewrite the location without onnx's own checks
        model = onnx.load(str(bundle / "encoder.onnx"), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        (bundle / "encoder.onnx").write_bytes(model.SerializeToString())
        if Path(location).is_absolute():
            weights.unlink()  # what lies there is outside the bundle either way
        else:
            weights = shutil.move(weights, bundle / location)
    rehash(bundle, "encoder.onnx")
    if weights.parent == bundle and weights.exists():
        rehash(bundle, weights.name)
    return weights


def test_graph_with_external_data_is_refused(capsys, bundle, image, tmp_path):
    _move_weights_outside_the_graph(bundle)
    message = refused(capsys, image, bundle, tmp_path / "o.csv")
    assert "encoder.onnx: keeps 4 tensors in external data ('weights.bin')" in message
    assert "external data" in info_refused(capsys, bundle)


def test_tampered_external_data_never_changes_captions(capsys, bundle, image, tmp_path):
    weights = _move_weights_outside_the_graph(bundle)
    flip_one_byte(weights)
    rehash(bundle, weights.name)  # even with a manifest that vouches for the new bytes
    assert "external data" in refused(capsys, image, bundle, tmp_path / "o.csv")
    assert "external data" in info_refused(capsys, bundle)


@pytest.mark.parametrize("location", ["../weights.bin", "/tmp/capbatch-absent/weights.bin"])
def test_external_data_outside_the_bundle_is_refused(capsys, bundle, image, tmp_path, location):
    _move_weights_outside_the_graph(bundle, location)
    message = refused(capsys, image, bundle, tmp_path / "o.csv")
    assert f"external data location {location!r} points outside the bundle" in message


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
