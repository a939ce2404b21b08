"""Find tensors an ONNX graph keeps in external data files, without the onnx package.

The runtime hands onnxruntime the verified BYTES of a graph (capbatch/manifest.py),
and a graph loaded from bytes resolves external-data locations against the current
directory, outside every hash. So bundles must be self-contained: this scanner
walks the serialised ModelProto (protobuf wire format, onnx/onnx.proto field
numbers) and lists every tensor stored outside it. Only the messages that can
hold tensors are entered; weights (raw_data) are skipped by length, so a 100 MB
graph is scanned in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

# Messages nested deeper than this (graphs inside If/Loop attributes) are refused:
# no exported captioning graph comes close, and the walk stays bounded.
MAX_DEPTH = 64

# message kind -> {field number: kind of the sub-message it holds}
_CHILDREN: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {},
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class MalformedGraph(ValueError):
    """The bytes are not a well-formed protobuf message."""


@dataclass(frozen=True)
class ExternalTensor:
    name: str
    location: str  # as written in the graph ("" when the graph names none)


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise MalformedGraph("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: memoryview):
    """(field number, wire type, value) for each field; value is an int or a memoryview."""
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise MalformedGraph("field runs past the end of its message")
            value, pos = data[pos : pos + length], pos + length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            value = 0
        else:
            raise MalformedGraph(f"unsupported wire type {wire}")
        if pos > len(data):
            raise MalformedGraph("field runs past the end of its message")
        yield number, wire, value


def _text(value: memoryview) -> str:
    return bytes(value).decode("utf-8", errors="replace")


def _external_tensor(tensor: memoryview) -> ExternalTensor | None:
    name, location, external = "", "", False
    for number, wire, value in _fields(tensor):
        if number == _TENSOR_NAME and wire == 2:
            name = _text(value)
        elif number == _TENSOR_DATA_LOCATION and wire == 0:
            external = external or value == _EXTERNAL
        elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
            external = True
            entry = {n: _text(v) for n, w, v in _fields(value) if w == 2}
            if entry.get(_ENTRY_KEY) == "location":
                location = entry.get(_ENTRY_VALUE, "")
    return ExternalTensor(name, location) if external else None


def external_tensors(model: bytes) -> list[ExternalTensor]:
    """Every tensor of the serialised ModelProto whose data lives outside it.

    Raises MalformedGraph when the bytes are not a protobuf message or nest
    graphs deeper than MAX_DEPTH.
    """
    found: list[ExternalTensor] = []
    stack: list[tuple[str, memoryview, int]] = [("model", memoryview(model), 0)]
    while stack:  # iterative: a hostile graph must not exhaust the Python stack
        kind, message, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise MalformedGraph(f"graphs nested deeper than {MAX_DEPTH} levels")
        if kind == "tensor":
            tensor = _external_tensor(message)
            if tensor is not None:
                found.append(tensor)
            continue
        children = _CHILDREN[kind]
        for number, wire, value in _fields(message):
            if wire == 2 and number in children:
                stack.append((children[number], value, depth + 1))
    return found


def escapes_directory(location: str) -> bool:
    """True when an external-data location would resolve outside the graph's folder."""
    parts = location.replace("\\", "/").split("/")
    return location.startswith(("/", "\\")) or ":" in parts[0] or ".." in parts
