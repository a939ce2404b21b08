"""Just enough of onnx.helper to write small ONNX models without the `onnx` package.

The runtime tests' fake bundles (tests/runtime_fakes.py) must build where only the
runtime is installed (onnxruntime, no `onnx`, no torch: the export extra brings
those), so the few protobuf messages they need are encoded here by hand, field
numbers from onnx.proto. Repeated integers are written unpacked, which every
protobuf parser accepts. Where `onnx` is installed, runtime_fakes also runs its
checker over the result.
"""

from __future__ import annotations

import struct

import numpy as np

# TensorProto.DataType
FLOAT, UINT8, INT64 = 1, 2, 7
_DTYPES = {np.dtype(np.float32): FLOAT, np.dtype(np.uint8): UINT8, np.dtype(np.int64): INT64}
# AttributeProto.AttributeType
_ATTR_FLOAT, _ATTR_INT, _ATTR_INTS = 1, 2, 7


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negatives
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _str(field: int, text: str) -> bytes:
    return _bytes(field, text.encode("utf-8"))


def _attribute(name: str, value) -> bytes:
    if isinstance(value, (list, tuple)):
        body = b"".join(_int(8, int(v)) for v in value)
        return _str(1, name) + body + _int(20, _ATTR_INTS)
    if isinstance(value, float):
        return (
            _str(1, name) + _varint(2 << 3 | 5) + struct.pack("<f", value) + _int(20, _ATTR_FLOAT)
        )
    return _str(1, name) + _int(3, int(value)) + _int(20, _ATTR_INT)


def make_node(op_type: str, inputs: list[str], outputs: list[str], **attributes) -> bytes:
    """NodeProto: input=1, output=2, op_type=4, attribute=5."""
    body = b"".join(_str(1, name) for name in inputs)
    body += b"".join(_str(2, name) for name in outputs)
    body += _str(4, op_type)
    body += b"".join(_bytes(5, _attribute(k, v)) for k, v in sorted(attributes.items()))
    return body


def from_array(array: np.ndarray, name: str) -> bytes:
    """TensorProto: dims=1, data_type=2, name=8, raw_data=9 (little-endian)."""
    array = np.asarray(array)
    body = b"".join(_int(1, d) for d in array.shape)
    body += _int(2, _DTYPES[array.dtype]) + _str(8, name)
    return body + _bytes(9, array.astype(array.dtype.newbyteorder("<")).tobytes())


def make_tensor_value_info(name: str, elem_type: int, shape: list[int | str]) -> bytes:
    """ValueInfoProto{name=1, type=2: TypeProto{tensor_type=1: {elem_type=1, shape=2}}}."""
    dims = b"".join(
        _bytes(1, _str(2, d) if isinstance(d, str) else _int(1, d)) for d in shape
    )  # Dimension: dim_value=1, dim_param=2
    tensor = _int(1, elem_type) + _bytes(2, dims)
    return _str(1, name) + _bytes(2, _bytes(1, tensor))


def make_graph(nodes, name: str, inputs, outputs, initializers) -> bytes:
    """GraphProto: node=1, name=2, initializer=5, input=11, output=12."""
    body = b"".join(_bytes(1, n) for n in nodes) + _str(2, name)
    body += b"".join(_bytes(5, t) for t in initializers)
    body += b"".join(_bytes(11, v) for v in inputs)
    return body + b"".join(_bytes(12, v) for v in outputs)


def make_model(graph: bytes, *, opset: int = 17, ir_version: int = 8) -> bytes:
    """ModelProto (serialised): ir_version=1, producer_name=2, graph=7, opset_import=8."""
    opset_id = _str(1, "") + _int(2, opset)
    return _int(1, ir_version) + _str(2, "capbatch-tests") + _bytes(7, graph) + _bytes(8, opset_id)
