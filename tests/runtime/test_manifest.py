"""capbatch/manifest.py's promises: every schema problem is one line naming the
field and what is wrong, defaults of older manifests are filled the documented
way, and a bundle is verified file by file with every problem listed once.

Written from the surviving mutants of the mutation job (docs/testing.md). The
same refusals through the CLI are in tests/reliability/test_model_integrity.py; here the exact
words and the values read are pinned, without sessions.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from capbatch.errors import BundleError
from capbatch.integrity import BundleDir
from capbatch.manifest import (
    MAX_MANIFEST_BYTES,
    MAX_NESTING,
    DomainEntry,
    GraphEntry,
    SpecialTokens,
    VocabEntry,
    manifest_from_bytes,
    open_verified,
    parse_manifest,
    read_manifest,
    verify_bundle,
)
from tests import onnx_proto
from tests.runtime_fakes import make_fake_bundle, read_manifest_json, rehash, write_manifest

LINK = "is a symbolic link (a bundle holds plain files only)"
DIGEST = "ab" * 32


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


@pytest.fixture
def raw(pristine):
    """The fake bundle's manifest as parsed JSON, a fresh copy per test."""
    return copy.deepcopy(read_manifest_json(pristine))


@pytest.fixture
def bundle(pristine, tmp_path):
    return Path(shutil.copytree(pristine, tmp_path / "bundle"))


def refusal(raw) -> str:
    with pytest.raises(ValueError) as caught:
        parse_manifest(raw)
    return str(caught.value)


def _nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


# --------------------------------------------------------------------------- values read


def test_the_values_read_are_those_of_the_json(raw):
    raw["graphs"]["decoder_step"]["top_k"] = 5
    raw["special_tokens"] = {"pad": 0, "start": 7, "end": 9, "unk": 11}
    manifest = parse_manifest(raw)
    assert manifest.encoder == GraphEntry(
        "encoder", "encoder.onnx", ("images",), ("features", "projected", "h0", "c0"), 0
    )
    assert manifest.decoder_step.key == "decoder_step"
    assert manifest.decoder_step.top_k == 5
    assert manifest.graphs == (manifest.encoder, manifest.decoder_step)
    assert manifest.special_tokens.items() == [("pad", 0), ("start", 7), ("end", 9), ("unk", 11)]
    assert manifest.special_tokens.ids == frozenset({0, 7, 9, 11})
    assert manifest.variant == "fp32" and manifest.model_id == "fake-0"
    assert dict(manifest.files) == raw["files"]
    assert manifest.raw == raw and manifest.domain is None
    assert manifest.model_card == {}


def test_defaults_of_older_manifests(raw):
    for key in ("variant", "vocab"):
        del raw[key]
    del raw["graphs"]["decoder_step"]["top_k"]
    manifest = parse_manifest(raw)
    assert manifest.variant == "fp32"
    assert manifest.vocab == VocabEntry("vocab.json", "word")
    assert manifest.decoder_step.top_k == 0
    raw["vocab"] = {"file": "vocab.json"}
    assert parse_manifest(raw).vocab == VocabEntry("vocab.json", "word")
    raw["vocab"] = {"style": "wordpiece"}
    assert parse_manifest(raw).vocab == VocabEntry("vocab.json", "wordpiece")


def test_max_len_at_the_top_wins_over_the_config_one(raw):
    raw["max_len"], raw["config"]["max_len"] = 3, 99
    assert parse_manifest(raw).max_len == 3
    del raw["max_len"]
    assert parse_manifest(raw).max_len == 99
    raw["config"]["max_len"] = 1  # the smallest allowed
    assert parse_manifest(raw).max_len == 1
    raw["config"]["max_len"] = 0
    assert refusal(raw) == "config.max_len must be an integer >= 1, got 0"
    del raw["config"]["max_len"]
    assert refusal(raw) == "manifest has no 'max_len'"
    del raw["config"]
    assert refusal(raw) == "manifest has no 'max_len'"


def test_a_domain_entry_is_read_when_listed(raw):
    raw["files"]["domain.json"] = DIGEST
    raw["domain"] = {"file": "domain.json", "method": "mahalanobis"}
    assert parse_manifest(raw).domain == DomainEntry("domain.json", "mahalanobis")
    raw["domain"] = None
    assert parse_manifest(raw).domain is None


def test_model_card_and_its_notice(raw):
    raw["model_card"] = {"notice": "research only", "data": "synthetic"}
    assert parse_manifest(raw).model_card == {"notice": "research only", "data": "synthetic"}
    raw["model_card"] = None  # as absent
    assert parse_manifest(raw).model_card == {}
    raw["model_card"] = {"notice": 3}
    assert refusal(raw) == "model_card.notice must be a non-empty string, not a number"
    raw["model_card"] = {"notice": ""}
    assert refusal(raw) == "model_card.notice must be a non-empty string, not a string"


def test_special_token_id_zero_and_top_k_zero_are_allowed(raw):
    raw["special_tokens"] = {"pad": 0, "start": 0, "end": 0, "unk": 0}
    raw["graphs"]["decoder_step"]["top_k"] = 0
    manifest = parse_manifest(raw)
    assert manifest.special_tokens == SpecialTokens(0, 0, 0, 0)


# --------------------------------------------------------------------------- refusals


def _set(path: str, value):
    def change(raw):
        *parents, last = path.split("/")
        for key in parents:
            raw = raw[key]
        raw[last] = value

    return change


def _delete(path: str):
    def change(raw):
        *parents, last = path.split("/")
        for key in parents:
            raw = raw[key]
        del raw[last]

    return change


FORMAT = "not a capbatch bundle manifest (format != 'capbatch-bundle')"
REFUSALS = {
    "format-other": (_set("format", "capbatch-bundles"), FORMAT),
    "format-missing": (_delete("format"), FORMAT),
    "version-2": (_set("format_version", 2), "bundle format_version 2; this capbatch reads 1"),
    "version-true": (_set("format_version", True), "bundle format_version True; this capbatch reads 1"),
    "version-float": (_set("format_version", 1.0), "bundle format_version 1.0; this capbatch reads 1"),
    "version-missing": (_delete("format_version"), "bundle format_version None; this capbatch reads 1"),
    "config-list": (_set("config", []), "config must be an object, not a list"),
    "metrics-string": (_set("metrics", "x"), "metrics must be an object, not a string"),
    "tools-number": (_set("tools", 1.5), "tools must be an object, not a number"),
    "validation-bool": (_set("validation", False), "validation must be an object, not a boolean"),
    "model-card-list": (_set("model_card", []), "model_card must be an object, not a list"),
    "files-missing": (_delete("files"), "manifest has no 'files'"),
    "files-list": (_set("files", []), "files must be an object, not a list"),
    "files-empty": (_set("files", {}), "files lists no files"),
    "files-manifest": (_set("files/manifest.json", DIGEST), "files lists manifest.json, which cannot hash itself"),
    "files-upper": (_set("files/vocab.json", DIGEST.upper()), "files['vocab.json'] must be a lowercase hex sha256"),
    "files-short": (_set("files/vocab.json", DIGEST[:-1]), "files['vocab.json'] must be a lowercase hex sha256"),
    "files-long": (_set("files/vocab.json", DIGEST + "a"), "files['vocab.json'] must be a lowercase hex sha256"),
    "files-number": (_set("files/vocab.json", 5), "files['vocab.json'] must be a lowercase hex sha256"),
    "graphs-missing": (_delete("graphs"), "manifest has no 'graphs'"),
    "graphs-list": (_set("graphs", []), "graphs must be an object, not a list"),
    "no-encoder": (_delete("graphs/encoder"), "graphs has no 'encoder'"),
    "encoder-null": (_set("graphs/encoder", None), "graphs.encoder must be an object, not null"),
    "no-step-file": (_delete("graphs/decoder_step/file"), "graphs.decoder_step has no 'file'"),
    "step-file-unlisted": (
        _set("graphs/decoder_step/file", "other.onnx"),
        "graphs.decoder_step.file 'other.onnx' is not listed (and hashed) in files",
    ),
    "step-file-path": (
        _set("graphs/decoder_step/file", "sub/step.onnx"),
        "graphs.decoder_step.file 'sub/step.onnx': not a plain file name",
    ),
    "no-inputs": (_delete("graphs/encoder/inputs"), "graphs.encoder has no 'inputs'"),
    "no-outputs": (_delete("graphs/encoder/outputs"), "graphs.encoder has no 'outputs'"),
    "inputs-string": (_set("graphs/encoder/inputs", "images"), "graphs.encoder.inputs must be a list of names, not a string"),
    "outputs-empty-name": (_set("graphs/encoder/outputs", ["h0", ""]), "graphs.encoder.outputs must be a list of names, not a list"),
    "outputs-number": (_set("graphs/encoder/outputs", ["h0", 3]), "graphs.encoder.outputs must be a list of names, not a list"),
    "top-k-negative": (_set("graphs/decoder_step/top_k", -1), "graphs.decoder_step.top_k must be an integer >= 0, got -1"),
    "top-k-bool": (_set("graphs/decoder_step/top_k", True), "graphs.decoder_step.top_k must be an integer >= 0, got True"),
    "model-id-missing": (_delete("model_id"), "manifest has no 'model_id'"),
    "model-id-number": (_set("model_id", 5), "model_id must be a non-empty string, not a number"),
    "model-id-empty": (_set("model_id", ""), "model_id must be a non-empty string, not a string"),
    "model-id-dict": (_set("model_id", {}), "model_id must be a non-empty string, not an object"),
    "variant-null": (_set("variant", None), "variant must be a non-empty string, not null"),
    "variant-bool": (_set("variant", True), "variant must be a non-empty string, not a boolean"),
    "preprocess-missing": (_delete("preprocess"), "manifest has no 'preprocess'"),
    "preprocess-list": (_set("preprocess", []), "preprocess must be an object, not a list"),
    "preprocess-small": (_set("preprocess/size", 16), "preprocess: preprocess size must be an integer >= 32, got 16"),
    "preprocess-key": (
        _set("preprocess/mean", [0.5]),
        "preprocess: PreprocessSpec.__init__() got an unexpected keyword argument 'mean'",
    ),
    "special-missing": (_delete("special_tokens"), "manifest has no 'special_tokens'"),
    "special-list": (_set("special_tokens", [0, 1, 2, 3]), "special_tokens must be an object, not a list"),
    "special-no-unk": (_delete("special_tokens/unk"), "special_tokens has no 'unk'"),
    "special-negative": (_set("special_tokens/pad", -1), "special_tokens.pad must be an integer >= 0, got -1"),
    "special-string": (_set("special_tokens/start", "1"), "special_tokens.start must be an integer >= 0, got '1'"),
    "max-len-zero": (_set("max_len", 0), "max_len must be an integer >= 1, got 0"),
    "max-len-float": (_set("max_len", 8.0), "max_len must be an integer >= 1, got 8.0"),
    "vocab-string": (_set("vocab", "vocab.json"), "vocab must be an object, not a string"),
    "vocab-style": (_set("vocab/style", "bpe"), "vocab.style must be one of word, wordpiece, got 'bpe'"),
    "vocab-style-list": (_set("vocab/style", ["word"]), "vocab.style must be one of word, wordpiece, got ['word']"),
    "vocab-unlisted": (_set("vocab/file", "tokens.json"), "vocab file 'tokens.json' is not listed (and hashed) in files"),
    "vocab-dotdot": (_set("vocab/file", ".."), "vocab.file '..': not a plain file name"),
    "domain-list": (_set("domain", []), "domain must be an object, not a list"),
    "domain-no-file": (_set("domain", {"method": "m"}), "domain has no 'file'"),
    "domain-unlisted": (
        _set("domain", {"file": "domain.json", "method": "m"}),
        "domain.file 'domain.json' is not listed (and hashed) in files",
    ),
    "domain-file-path": (
        _set("domain", {"file": "../domain.json", "method": "m"}),
        "domain.file '../domain.json': not a plain file name",
    ),
    "domain-no-method": (_set("domain", {"file": "vocab.json"}), "domain has no 'method'"),
    "domain-empty-method": (
        _set("domain", {"file": "vocab.json", "method": ""}),
        "domain.method must be a non-empty string, not a string",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", REFUSALS)
def test_each_schema_problem_is_named_in_one_line(raw, case):
    change, expected = REFUSALS[case]
    change(raw)
    assert refusal(raw) == expected


@pytest.mark.parametrize("value", [[], None, "capbatch-bundle", 1])
def test_a_manifest_that_is_not_an_object_is_not_a_manifest(value):
    assert refusal(value) == FORMAT


@pytest.mark.parametrize(
    "name",
    [".", "..", "sub/vocab.json", "/vocab.json", "a\\b.json", "a\0b.json"],
)
def test_file_names_must_be_plain_names_in_the_bundle(raw, name):
    raw["files"][name] = DIGEST
    assert refusal(raw) == f"files entry {name!r}: not a plain file name"


def test_an_empty_file_name_is_refused_as_such(raw):
    raw["files"][""] = DIGEST
    assert refusal(raw) == "files entry must be a non-empty string, not a string"


def test_nesting_up_to_the_cap_is_read_one_more_level_refused(raw):
    # manifest (1) -> metrics (2) -> list at depth 3, each wrapping adds one level
    raw["metrics"] = {"deep": _nested(MAX_NESTING - 3)}
    parse_manifest(raw)
    raw["metrics"] = {"deep": _nested(MAX_NESTING - 2)}
    assert refusal(raw) == f"nests deeper than {MAX_NESTING} levels"
    deep_objects: dict = {}
    for _ in range(MAX_NESTING):
        deep_objects = {"x": deep_objects}
    raw["metrics"] = deep_objects
    assert refusal(raw) == f"nests deeper than {MAX_NESTING} levels"


# --------------------------------------------------------------------------- bytes


def test_manifest_bytes_problems_name_the_file(raw):
    where = Path("/models/m/manifest.json")
    with pytest.raises(BundleError) as caught:
        manifest_from_bytes(b"{", where)
    assert str(caught.value) == (
        f"{where} is not readable JSON: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)"
    )
    raw["model_id"] = ""
    with pytest.raises(BundleError) as caught:
        manifest_from_bytes(json.dumps(raw).encode(), "bundle/manifest.json")
    assert str(caught.value) == (
        "bundle/manifest.json: model_id must be a non-empty string, not a string"
    )
    assert caught.value.__suppress_context__


def test_manifest_bytes_up_to_the_size_cap_are_read(raw):
    text = json.dumps(raw).encode()
    at_cap = text + b" " * (MAX_MANIFEST_BYTES - len(text))
    assert manifest_from_bytes(at_cap, "m.json").model_id == "fake-0"
    with pytest.raises(BundleError) as caught:
        manifest_from_bytes(at_cap + b" ", "m.json")
    assert str(caught.value) == "m.json is larger than 4 MiB"


def test_read_manifest_refusals_name_the_bundle(bundle, tmp_path):
    (bundle / "manifest.json").unlink()
    with pytest.raises(BundleError) as caught:
        read_manifest(bundle)
    assert str(caught.value) == f"{bundle} is not a model bundle: no manifest.json"
    elsewhere = tmp_path / "manifest.json"
    elsewhere.write_text("{}")
    (bundle / "manifest.json").symlink_to(elsewhere)
    with pytest.raises(BundleError) as caught:
        read_manifest(bundle)
    assert str(caught.value) == f"{bundle}: manifest.json: {LINK}"
    (bundle / "manifest.json").unlink()
    (bundle / "manifest.json").write_bytes(b" " * (MAX_MANIFEST_BYTES + 1))
    with pytest.raises(BundleError) as caught:
        read_manifest(bundle)
    assert str(caught.value) == f"{bundle}: manifest.json: larger than {MAX_MANIFEST_BYTES} bytes"


def test_read_manifest_names_the_manifest_path_in_schema_errors(bundle):
    edited = read_manifest_json(bundle)
    edited["max_len"] = 0
    write_manifest(bundle, edited)
    with pytest.raises(BundleError) as caught:
        read_manifest(bundle)
    assert (
        str(caught.value) == f"{bundle / 'manifest.json'}: max_len must be an integer >= 1, got 0"
    )


# --------------------------------------------------------------------------- verification


def test_the_verified_contents_are_the_graphs_and_vocab_bytes(bundle):
    verified = open_verified(str(bundle))
    assert verified.path == bundle
    names = ["decoder_step.onnx", "encoder.onnx", "vocab.json"]
    assert sorted(verified.contents) == names  # not tokenizer.json
    for name in names:
        assert verified.contents[name] == (bundle / name).read_bytes()
    assert verified.manifest == read_manifest(bundle)
    with pytest.raises(TypeError):
        verified.contents["vocab.json"] = b"[]"  # read-only


def test_without_load_nothing_is_kept_and_everything_is_still_checked(bundle):
    assert dict(open_verified(bundle, load=False).contents) == {}
    shown = verify_bundle(bundle)
    assert type(shown) is dict and shown == read_manifest_json(bundle)
    with open(bundle / "tokenizer.json", "ab") as handle:
        handle.write(b" ")
    for check in (lambda: open_verified(bundle, load=False), lambda: verify_bundle(bundle)):
        with pytest.raises(BundleError) as caught:
            check()
        assert str(caught.value) == (
            f"bundle {bundle} failed verification: "
            "tokenizer.json: sha256 mismatch (modified or corrupt)"
        )


def test_every_problem_is_listed_once_in_name_order(bundle, tmp_path):
    (bundle / "tokenizer.json").unlink()
    with open(bundle / "vocab.json", "ab") as handle:
        handle.write(b" ")
    target = tmp_path / "encoder.onnx"
    shutil.move(bundle / "encoder.onnx", target)
    (bundle / "encoder.onnx").symlink_to(target)  # listed in the scan of links and when read
    (bundle / "a-note.txt").symlink_to(target)  # not listed in files
    (bundle / "decoder_step.onnx").unlink()
    (bundle / "decoder_step.onnx").mkdir()
    with pytest.raises(BundleError) as caught:
        open_verified(bundle)
    assert str(caught.value) == (
        f"bundle {bundle} failed verification: "
        f"a-note.txt: {LINK}; encoder.onnx: {LINK}; "
        "decoder_step.onnx: not a regular file; tokenizer.json: missing; "
        "vocab.json: sha256 mismatch (modified or corrupt)"
    )


def _graph_with_external_weights(bundle: Path) -> None:
    tensor = (
        onnx_proto._str(8, "w")
        + onnx_proto._bytes(13, onnx_proto._str(1, "location") + onnx_proto._str(2, "w.bin"))
        + onnx_proto._int(14, 1)
    )
    graph = onnx_proto.make_graph([], "encoder", [], [], [tensor])
    (bundle / "encoder.onnx").write_bytes(onnx_proto.make_model(graph))


@pytest.mark.parametrize("load", [True, False])
def test_a_hashed_graph_with_external_weights_is_refused_loaded_or_not(bundle, load):
    _graph_with_external_weights(bundle)
    rehash(bundle, "encoder.onnx")
    with pytest.raises(BundleError) as caught:
        open_verified(bundle, load=load)
    assert str(caught.value) == (
        f"bundle {bundle} failed verification: encoder.onnx: keeps 1 tensors in external "
        "data ('w.bin'); bundle graphs must hold their own weights (docs/bundle-format.md)"
    )


def test_a_graph_that_does_not_match_its_hash_is_not_scanned(bundle):
    _graph_with_external_weights(bundle)  # not rehashed: the mismatch is the one problem
    with pytest.raises(BundleError) as caught:
        open_verified(bundle)
    assert str(caught.value) == (
        f"bundle {bundle} failed verification: encoder.onnx: sha256 mismatch (modified or corrupt)"
    )


def test_a_listed_file_outside_graphs_and_vocab_is_hashed_never_kept(bundle):
    (bundle / "extra.bin").write_bytes(b"\0" * 10)
    rehash(bundle, "extra.bin")
    verified = open_verified(bundle)
    assert "extra.bin" not in verified.contents
    (bundle / "extra.bin").write_bytes(b"\0" * 11)
    with pytest.raises(BundleError, match=r"extra.bin: sha256 mismatch \(modified or corrupt\)$"):
        open_verified(bundle)


def test_a_file_is_judged_by_the_bytes_read_not_by_a_later_look(bundle, monkeypatch):
    # A tampered vocab swapped back to the hashed bytes right after it was read:
    # the bytes read are what would be loaded, so they are what must match.
    good = (bundle / "vocab.json").read_bytes()
    (bundle / "vocab.json").write_bytes(good.replace(b"red", b"rot"))
    real_read = BundleDir.read

    def read_then_swap_back(self, name, limit=None):
        data = real_read(self, name, limit)
        if name == "vocab.json":
            (bundle / "vocab.json").write_bytes(good)
        return data

    monkeypatch.setattr(BundleDir, "read", read_then_swap_back)
    with pytest.raises(BundleError) as caught:
        open_verified(bundle)
    assert str(caught.value) == (
        f"bundle {bundle} failed verification: vocab.json: sha256 mismatch (modified or corrupt)"
    )
