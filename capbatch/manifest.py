"""The bundle manifest, read and schema-checked once into frozen dataclasses (torch-free).

Shared by the exporter (which writes the hashes and re-verifies what it wrote)
and the runtime loader, so there is one implementation of "what a manifest
holds". Every problem is one BundleError line; nothing downstream reads the
manifest as a plain dict by key. Reading files safely (hashes, links, external
data) lives in capbatch/integrity.py; the functions at the end join the two:
read_manifest (schema only), open_verified (the verified bytes to load) and
verify_bundle (is this bundle intact, for `capbatch info` and the Ray driver).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import BundleError
from .integrity import (  # noqa: F401 - sha256_file is re-exported: export/ imports it here
    BundleDir,
    FileProblem,
    check_self_contained,
    sha256_bytes,
    sha256_file,
)
from .preprocess import PreprocessSpec
from .vocab import VOCAB_STYLES

FORMAT = "capbatch-bundle"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SPECIAL_TOKENS = ("pad", "start", "end", "unk")
DEFAULT_VOCAB_FILE = "vocab.json"
# Far above any real manifest (~4 KB), far below what could hurt to parse.
MAX_MANIFEST_BYTES = 4 << 20
# Real manifests nest 4 levels; a cap keeps printing and walking them off the recursion limit.
MAX_NESTING = 32
# Keys shown by `capbatch info` as key=value lists: objects when present.
# "model_card" (optional): what the model knows, for people (docs/bundle-format.md).
DISPLAY_OBJECTS = ("config", "metrics", "tools", "validation", "model_card")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class GraphEntry:
    """One graph of the bundle: its file and the I/O names it was exported with."""

    key: str  # "encoder" | "decoder_step"
    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    top_k: int = 0


@dataclass(frozen=True)
class VocabEntry:
    file: str = DEFAULT_VOCAB_FILE
    style: str = "word"


@dataclass(frozen=True)
class SpecialTokens:
    pad: int
    start: int
    end: int
    unk: int

    def items(self) -> list[tuple[str, int]]:
        return [(name, getattr(self, name)) for name in SPECIAL_TOKENS]

    @property
    def ids(self) -> frozenset[int]:
        return frozenset(getattr(self, name) for name in SPECIAL_TOKENS)


@dataclass(frozen=True)
class DomainEntry:
    """The optional domain-check statistics file (capbatch/domain.py reads it)."""

    file: str
    method: str


@dataclass(frozen=True)
class Manifest:
    """What the runtime uses from manifest.json, checked; `raw` keeps the JSON for display."""

    model_id: str
    variant: str
    preprocess: PreprocessSpec
    special_tokens: SpecialTokens
    max_len: int
    vocab: VocabEntry
    encoder: GraphEntry
    decoder_step: GraphEntry
    files: Mapping[str, str]  # plain file name -> sha256 hex; the manifest itself excluded
    raw: Mapping[str, Any] = field(repr=False, compare=False)
    domain: DomainEntry | None = None  # bundles exported before the domain check have none

    @property
    def graphs(self) -> tuple[GraphEntry, GraphEntry]:
        return (self.encoder, self.decoder_step)

    @property
    def model_card(self) -> Mapping[str, Any]:
        """The optional model card ({} when the bundle has none); "notice" is a string."""
        return self.raw.get("model_card") or {}


# --------------------------------------------------------------------------- schema


class _Invalid(ValueError):
    """One schema problem, phrased for the user; read_manifest adds the path."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else "null"
    )


def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise _Invalid(f"{where} must be an object, not {_kind(value)}")
    return value


def _required(mapping: dict, key: str, where: str) -> Any:
    if key not in mapping:
        raise _Invalid(f"{where} has no {key!r}")
    return mapping[key]


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _Invalid(f"{where} must be a non-empty string, not {_kind(value)}")
    return value


def _count(value: Any, where: str, minimum: int) -> int:
    if not _is_int(value) or value < minimum:
        raise _Invalid(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _file_name(value: Any, where: str) -> str:
    name = _string(value, where)
    # Plain names inside the bundle only: a manifest must not point the loader elsewhere.
    if Path(name).name != name or name in (".", "..") or "\\" in name or "\0" in name:
        raise _Invalid(f"{where} {name!r}: not a plain file name")
    return name


def _names(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _Invalid(f"{where} must be a list of names, not {_kind(value)}")
    return tuple(value)


def _files(value: Any) -> Mapping[str, str]:
    files = _object(value, "files")
    if not files:
        raise _Invalid("files lists no files")
    for name, digest in files.items():
        _file_name(name, "files entry")
        if name == MANIFEST_FILE:
            raise _Invalid(f"files lists {MANIFEST_FILE}, which cannot hash itself")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise _Invalid(f"files[{name!r}] must be a lowercase hex sha256")
    return MappingProxyType(dict(files))


def _graph(graphs: dict, key: str, files: Mapping[str, str]) -> GraphEntry:
    where = f"graphs.{key}"
    entry = _object(_required(graphs, key, "graphs"), where)
    name = _file_name(_required(entry, "file", where), f"{where}.file")
    if name not in files:
        raise _Invalid(f"{where}.file {name!r} is not listed (and hashed) in files")
    return GraphEntry(
        key=key,
        file=name,
        inputs=_names(_required(entry, "inputs", where), f"{where}.inputs"),
        outputs=_names(_required(entry, "outputs", where), f"{where}.outputs"),
        top_k=_count(entry.get("top_k", 0), f"{where}.top_k", 0),
    )


def _vocab(value: Any, files: Mapping[str, str]) -> VocabEntry:
    entry = _object({} if value is None else value, "vocab")
    name = _file_name(entry.get("file", DEFAULT_VOCAB_FILE), "vocab.file")
    style = entry.get("style", "word")
    if not isinstance(style, str) or style not in VOCAB_STYLES:
        raise _Invalid(f"vocab.style must be one of {', '.join(VOCAB_STYLES)}, got {style!r}")
    if name not in files:
        raise _Invalid(f"vocab file {name!r} is not listed (and hashed) in files")
    return VocabEntry(name, style)


def _domain(value: Any, files: Mapping[str, str]) -> DomainEntry | None:
    if value is None:
        return None
    entry = _object(value, "domain")
    name = _file_name(_required(entry, "file", "domain"), "domain.file")
    if name not in files:
        raise _Invalid(f"domain.file {name!r} is not listed (and hashed) in files")
    return DomainEntry(name, _string(_required(entry, "method", "domain"), "domain.method"))


def _special_tokens(value: Any) -> SpecialTokens:
    entry = _object(value, "special_tokens")
    ids = {
        name: _count(_required(entry, name, "special_tokens"), f"special_tokens.{name}", 0)
        for name in SPECIAL_TOKENS
    }
    return SpecialTokens(**ids)


def _preprocess(value: Any) -> PreprocessSpec:
    entry = _object(value, "preprocess")
    try:
        return PreprocessSpec(**entry)
    except (TypeError, ValueError) as exc:  # unknown keys, wrong types or values
        raise _Invalid(f"preprocess: {exc}") from None


def _max_len(raw: dict) -> int:
    # Older manifests carried max_len only inside config.
    if "max_len" in raw:
        return _count(raw["max_len"], "max_len", 1)
    config = raw.get("config")
    if isinstance(config, dict) and "max_len" in config:
        return _count(config["max_len"], "config.max_len", 1)
    raise _Invalid("manifest has no 'max_len'")


def _nesting(value: Any) -> int:
    """How deep objects and lists nest (walked without recursion, stopping past the cap)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_NESTING:
            continue
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest


def parse_manifest(raw: Any) -> Manifest:
    """Check the parsed manifest.json against the schema of docs/bundle-format.md.

    Raises ValueError (one line, naming the first problem); read_manifest turns
    it into a BundleError naming the file.
    """
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise _Invalid(f"not a capbatch bundle manifest (format != {FORMAT!r})")
    version = raw.get("format_version")
    if version != FORMAT_VERSION or not _is_int(version):
        raise _Invalid(f"bundle format_version {version!r}; this capbatch reads {FORMAT_VERSION}")
    if _nesting(raw) > MAX_NESTING:
        raise _Invalid(f"nests deeper than {MAX_NESTING} levels")
    for key in DISPLAY_OBJECTS:
        if raw.get(key) is not None:
            _object(raw[key], key)
    notice = (raw.get("model_card") or {}).get("notice")
    if notice is not None:
        _string(notice, "model_card.notice")
    files = _files(_required(raw, "files", "manifest"))
    graphs = _object(_required(raw, "graphs", "manifest"), "graphs")
    variant = raw.get("variant", "fp32")
    return Manifest(
        model_id=_string(_required(raw, "model_id", "manifest"), "model_id"),
        variant=_string(variant, "variant"),
        preprocess=_preprocess(_required(raw, "preprocess", "manifest")),
        special_tokens=_special_tokens(_required(raw, "special_tokens", "manifest")),
        max_len=_max_len(raw),
        vocab=_vocab(raw.get("vocab"), files),
        encoder=_graph(graphs, "encoder", files),
        decoder_step=_graph(graphs, "decoder_step", files),
        files=files,
        raw=MappingProxyType(raw),
        domain=_domain(raw.get("domain"), files),
    )


def manifest_from_bytes(data: bytes, where: Path | str) -> Manifest:
    """Parse and check manifest.json's bytes; every problem is one BundleError line."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{where} is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        raw = json.loads(data.decode("utf-8"))
    except ValueError as exc:  # bad UTF-8, bad JSON, an integer too long to convert
        raise BundleError(f"{where} is not readable JSON: {exc}") from exc
    except RecursionError:  # "[[[[..." deeper than the parser's stack
        raise BundleError(f"{where} is not readable JSON: nested too deeply") from None
    try:
        return parse_manifest(raw)
    except _Invalid as exc:
        raise BundleError(f"{where}: {exc}") from None


# --------------------------------------------------------------------------- reading


def _read_manifest(directory: BundleDir) -> Manifest:
    where = directory.path / MANIFEST_FILE
    try:
        data = directory.read(MANIFEST_FILE, limit=MAX_MANIFEST_BYTES)
    except FileProblem as exc:
        raise BundleError(f"{directory.path}: {exc}") from None
    if data is None:
        raise BundleError(f"{directory.path} is not a model bundle: no {MANIFEST_FILE}")
    return manifest_from_bytes(data, where)


def read_manifest(bundle_dir: Path | str) -> Manifest:
    """The checked manifest of bundle_dir (its files are not hashed: see open_verified)."""
    with BundleDir(bundle_dir) as directory:
        return _read_manifest(directory)


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose every file matched its sha256; `contents` holds the verified
    bytes of the graphs and the vocab, which are what gets loaded."""

    path: Path
    manifest: Manifest
    contents: Mapping[str, bytes] = field(repr=False)


def _verify_files(directory: BundleDir, manifest: Manifest, load: bool) -> dict[str, bytes]:
    graphs = {graph.file for graph in manifest.graphs}
    loaded = (graphs | {manifest.vocab.file}) if load else set()
    contents: dict[str, bytes] = {}
    problems = [f"{name}: is a symbolic link (a bundle holds plain files only)"
                for name in directory.links()]  # fmt: skip
    for name, expected in sorted(manifest.files.items()):
        try:
            # Graphs are read whole even when not loaded: their bytes are scanned.
            data = directory.read(name) if name in graphs or name in loaded else None
            digest = sha256_bytes(data) if data is not None else directory.sha256(name)
            if digest is None:
                problems.append(f"{name}: missing")
            elif digest != expected:
                problems.append(f"{name}: sha256 mismatch (modified or corrupt)")
            elif data is not None:
                if name in graphs:
                    check_self_contained(name, data)
                if name in loaded:
                    contents[name] = data
        except FileProblem as exc:
            problems.append(str(exc))
    if problems:
        raise BundleError(
            f"bundle {directory.path} failed verification: " + "; ".join(dict.fromkeys(problems))
        )
    return contents


def open_verified(bundle_dir: Path | str, *, load: bool = True) -> VerifiedBundle:
    """Read, check and hash a bundle before any session exists.

    Symbolic links inside the bundle, missing or altered files and graphs with
    external data all fail, listed in one BundleError. With load=False nothing
    is kept in memory (contents is empty).
    """
    with BundleDir(bundle_dir) as directory:
        manifest = _read_manifest(directory)
        contents = _verify_files(directory, manifest, load)
    return VerifiedBundle(Path(bundle_dir), manifest, MappingProxyType(contents))


def verify_bundle(bundle_dir: Path | str) -> dict:
    """The manifest JSON of an intact bundle, for display (every check of open_verified)."""
    return dict(open_verified(bundle_dir, load=False).manifest.raw)
