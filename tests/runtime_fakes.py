"""A torch-free fake model bundle for runtime tests.

Builds real (tiny, random-weight) encoder.onnx and decoder_step.onnx graphs
with tests/onnx_proto.py that honour the bundle-format I/O contract, plus vocab and
manifest with real sha256s. The captions are nonsense but deterministic, so
the runtime, pipeline and CLI can be tested end to end in milliseconds.
The real-model comparison with PyTorch lives in tests that use tests/bundles.py.

Needs neither torch nor the `onnx` package (both come with the export extra):
tests/onnx_proto.py writes the protobuf, so the runtime tests run wherever the
runtime is installed. Where `onnx` is installed its checker runs over each graph.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np

from tests import onnx_proto as helper
from tests.onnx_proto import from_array

HAS_ONNX = importlib.util.find_spec("onnx") is not None


class TensorProto:  # the element types the graphs use, as onnx.TensorProto names them
    FLOAT, UINT8, INT64 = helper.FLOAT, helper.UINT8, helper.INT64

WORDS = ["red", "green", "blue", "cube", "ball", "on", "left", "of", "two", "a"]
TOKENS = ["<pad>", "<start>", "<end>", "<unk>", *WORDS]


def _init(name: str, array: np.ndarray):
    return from_array(np.asarray(array), name)


def _encoder_graph(rng, size: int, regions: int, dim: int, att: int, hidden: int):
    band = size // regions
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["x", "bands_shape"], ["bands"]),  # (B, L, band*S, 3)
        helper.make_node("ReduceMean", ["bands"], ["colour"], axes=[2], keepdims=0),  # (B, L, 3)
        helper.make_node("Div", ["colour", "c255"], ["colour01"]),
        helper.make_node("MatMul", ["colour01", "w_feat"], ["feat_lin"]),  # (B, L, D)
        helper.make_node("Tanh", ["feat_lin"], ["features"]),
        helper.make_node("MatMul", ["features", "w_proj"], ["projected"]),  # (B, L, A)
        helper.make_node("ReduceMean", ["features"], ["mean"], axes=[1], keepdims=0),  # (B, D)
        helper.make_node("MatMul", ["mean", "w_h0"], ["h0_lin"]),
        helper.make_node("Tanh", ["h0_lin"], ["h0"]),
        helper.make_node("MatMul", ["mean", "w_c0"], ["c0"]),
    ]
    inits = [
        _init("bands_shape", np.array([-1, regions, band * size, 3], np.int64)),
        _init("c255", np.array(255.0, np.float32)),
        _init("w_feat", rng.normal(size=(3, dim)).astype(np.float32) * 2.0),
        _init("w_proj", rng.normal(size=(dim, att)).astype(np.float32)),
        _init("w_h0", rng.normal(size=(dim, hidden)).astype(np.float32)),
        _init("w_c0", rng.normal(size=(dim, hidden)).astype(np.float32)),
    ]
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", size, size, 3])]
    outputs = [
        helper.make_tensor_value_info("features", f, ["batch", regions, dim]),
        helper.make_tensor_value_info("projected", f, ["batch", regions, att]),
        helper.make_tensor_value_info("h0", f, ["batch", hidden]),
        helper.make_tensor_value_info("c0", f, ["batch", hidden]),
    ]
    return helper.make_graph(nodes, "encoder", inputs, outputs, inits)


def _step_graph(rng, vocab: int, regions: int, dim: int, att: int, hidden: int, end_bias: float):
    embed = 4
    w_out = rng.normal(size=(hidden, vocab)).astype(np.float32) * 3.0
    b_out = np.zeros(vocab, np.float32)
    b_out[2] = end_bias  # <end>: makes captions finish at varying lengths
    b_out[:2] = -30.0  # <pad>/<start> are never sensible outputs
    nodes = [
        helper.make_node("Gather", ["embedding", "tokens"], ["emb"]),  # (B, E)
        helper.make_node("MatMul", ["h", "w_att_h"], ["wh"]),  # (B, A)
        helper.make_node("Unsqueeze", ["wh", "axis1"], ["wh3"]),  # (B, 1, A)
        helper.make_node("Add", ["projected", "wh3"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["act"]),
        helper.make_node("MatMul", ["act", "v_att"], ["scores3"]),  # (B, L, 1)
        helper.make_node("Squeeze", ["scores3", "axis2"], ["scores"]),  # (B, L)
        helper.make_node("Softmax", ["scores"], ["alpha"], axis=1),
        helper.make_node("Unsqueeze", ["alpha", "axis2"], ["alpha3"]),  # (B, L, 1)
        helper.make_node("Mul", ["alpha3", "features"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "axis1"], ["context"], keepdims=0),  # (B, D)
        helper.make_node("Concat", ["emb", "context", "h"], ["x"], axis=1),
        helper.make_node("MatMul", ["x", "w_rec"], ["z"]),  # (B, H)
        helper.make_node("Tanh", ["z"], ["h_out"]),
        helper.make_node("Add", ["c", "z"], ["c_out"]),
        helper.make_node("MatMul", ["h_out", "w_out"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b_out"], ["logits"]),  # (B, V)
        helper.make_node("LogSoftmax", ["logits"], ["log_probs"], axis=1),
    ]
    inits = [
        _init("embedding", rng.normal(size=(vocab, embed)).astype(np.float32)),
        _init("w_att_h", rng.normal(size=(hidden, att)).astype(np.float32)),
        _init("v_att", rng.normal(size=(att, 1)).astype(np.float32)),
        _init("axis1", np.array([1], np.int64)),
        _init("axis2", np.array([2], np.int64)),
        _init("w_rec", rng.normal(size=(embed + dim + hidden, hidden)).astype(np.float32)),
        _init("w_out", w_out),
        _init("b_out", b_out),
    ]
    f = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch"]),
        helper.make_tensor_value_info("h", f, ["batch", hidden]),
        helper.make_tensor_value_info("c", f, ["batch", hidden]),
        helper.make_tensor_value_info("features", f, ["batch", regions, dim]),
        helper.make_tensor_value_info("projected", f, ["batch", regions, att]),
    ]
    outputs = [
        helper.make_tensor_value_info("log_probs", f, ["batch", vocab]),
        helper.make_tensor_value_info("h_out", f, ["batch", hidden]),
        helper.make_tensor_value_info("c_out", f, ["batch", hidden]),
        helper.make_tensor_value_info("alpha", f, ["batch", regions]),
    ]
    return helper.make_graph(nodes, "decoder_step", inputs, outputs, inits)


def _save(graph: bytes, path: Path) -> None:
    model = helper.make_model(graph, opset=17, ir_version=8)
    if HAS_ONNX:
        import onnx

        onnx.checker.check_model(onnx.load_from_string(model), full_check=True)
    path.write_bytes(model)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_fake_bundle(
    directory: Path,
    *,
    size: int = 32,
    regions: int = 4,
    seed: int = 0,
    end_bias: float = 2.0,
    max_len: int = 8,
    style: str = "word",
    tokens: list[str] | None = None,
) -> Path:
    """Write a complete, verifiable bundle into `directory` and return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokens = list(tokens or TOKENS)
    rng = np.random.default_rng(seed)
    dim, att, hidden = 6, 5, 7
    _save(_encoder_graph(rng, size, regions, dim, att, hidden), directory / "encoder.onnx")
    _save(
        _step_graph(rng, len(tokens), regions, dim, att, hidden, end_bias),
        directory / "decoder_step.onnx",
    )
    (directory / "vocab.json").write_text(json.dumps(tokens), encoding="utf-8")
    (directory / "tokenizer.json").write_text("{}", encoding="utf-8")
    files = ["encoder.onnx", "decoder_step.onnx", "vocab.json", "tokenizer.json"]
    manifest = {
        "format": "capbatch-bundle",
        "format_version": 1,
        "model_id": f"fake-{seed}",
        "variant": "fp32",
        "config": {"vocab_size": len(tokens), "encoder": "fake", "max_len": max_len},
        "preprocess": {"size": size, "resize": "stretch", "interpolation": "bilinear"},
        "special_tokens": {"pad": 0, "start": 1, "end": 2, "unk": 3},
        "max_len": max_len,
        "vocab": {"file": "vocab.json", "style": style},
        "graphs": {
            "encoder": {
                "file": "encoder.onnx",
                "inputs": ["images"],
                "outputs": ["features", "projected", "h0", "c0"],
            },
            "decoder_step": {
                "file": "decoder_step.onnx",
                "inputs": ["tokens", "h", "c", "features", "projected"],
                "outputs": ["log_probs", "h_out", "c_out", "alpha"],
                "top_k": 0,
            },
        },
        "opset": 17,
        "files": {name: _sha256(directory / name) for name in files},
        "metrics": {"bleu4": 0.0},
    }
    write_manifest(directory, manifest)
    return directory


def read_manifest_json(directory: Path) -> dict:
    return json.loads((Path(directory) / "manifest.json").read_text(encoding="utf-8"))


def write_manifest(directory: Path, manifest: dict) -> None:
    (Path(directory) / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def edit_manifest(directory: Path, **changes) -> Path:
    """Set top-level manifest fields (None removes one); manifest.json is not hashed,
    so the bundle still verifies. Returns the directory."""
    manifest = read_manifest_json(directory)
    for key, value in changes.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    write_manifest(directory, manifest)
    return Path(directory)


def rehash(directory: Path, name: str) -> None:
    """Update one file's sha256 in the manifest (to get past verification on purpose)."""
    manifest = read_manifest_json(directory)
    manifest["files"][name] = _sha256(Path(directory) / name)
    write_manifest(directory, manifest)
