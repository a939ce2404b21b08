"""capbatch/onnx_scan.py's promises: every tensor an ONNX graph keeps outside itself
is found wherever the format lets it sit, other fields are skipped by their wire
type, malformed or over-nested bytes are refused with a named reason, and external
locations that leave the bundle are recognised.

The protobuf is written by hand (tests/onnx_proto.py's encoders), so each message
path of onnx.proto is exercised without the `onnx` package. Written from the
surviving mutants of the mutation job (docs/testing.md).
"""

from __future__ import annotations

import struct

import pytest

from capbatch.onnx_scan import (
    MAX_DEPTH,
    ExternalTensor,
    MalformedGraph,
    escapes_directory,
    external_tensors,
)
from tests.onnx_proto import _bytes, _int, _str, _varint

EXTERNAL, DEFAULT = 1, 0


def _entry(key: str, value: str) -> bytes:
    """StringStringEntryProto: key=1, value=2."""
    return _str(1, key) + _str(2, value)


def tensor(name: str = "w", location: str = "w.bin") -> bytes:
    """TensorProto: name=8, external_data=13, data_location=14."""
    return _str(8, name) + _bytes(13, _entry("location", location)) + _int(14, EXTERNAL)


def nest(path: list[int], inner: bytes) -> bytes:
    """`inner` wrapped in length-delimited fields, outermost field number first."""
    for number in reversed(path):
        inner = _bytes(number, inner)
    return inner


# Every place onnx.proto lets a tensor sit, as field numbers from the ModelProto down.
PATHS = {
    "graph.initializer": [7, 5],
    "graph.sparse_initializer.values": [7, 15, 1],
    "graph.sparse_initializer.indices": [7, 15, 2],
    "node.attribute.t": [7, 1, 5, 5],
    "node.attribute.tensors": [7, 1, 5, 10],
    "node.attribute.sparse_tensor": [7, 1, 5, 22, 1],
    "node.attribute.sparse_tensors": [7, 1, 5, 23, 2],
    "attribute.g (If branch)": [7, 1, 5, 6, 5],
    "attribute.graphs (Scan body)": [7, 1, 5, 11, 5],
    "training.initialization": [20, 1, 5],
    "training.algorithm": [20, 2, 5],
    "function.node.attribute": [25, 7, 5, 5],
}


@pytest.mark.parametrize("path", PATHS.values(), ids=PATHS.keys())
def test_an_external_tensor_is_found_wherever_onnx_lets_it_sit(path):
    model = _int(1, 8) + nest(path, tensor("weight", "weights.bin"))
    assert external_tensors(model) == [ExternalTensor("weight", "weights.bin")]


@pytest.mark.parametrize(
    "path",
    [[7, 11], [7, 12], [7, 13], [8], [7, 1, 1], [7, 1, 5, 1], [25, 5], [20, 3]],
    ids=["graph.input", "graph.output", "graph.value_info", "opset_import", "node.input",
         "attribute.name", "function.input", "training.update_binding"],
)  # fmt: skip
def test_fields_that_hold_no_tensor_are_not_read_as_one(path):
    # The same bytes, where onnx.proto keeps names or value infos, are not tensors.
    assert external_tensors(nest(path, tensor())) == []


def test_a_tensor_is_external_by_its_location_flag_or_its_external_data():
    flag_only = _str(8, "a") + _int(14, EXTERNAL)
    data_only = _str(8, "b") + _bytes(13, _entry("location", "b.bin"))
    default = _str(8, "c") + _int(14, DEFAULT)
    # A later DEFAULT does not undo an earlier EXTERNAL (the scan errs towards refusing).
    flag_then_default = _str(8, "d") + _int(14, EXTERNAL) + _int(14, DEFAULT)
    plain = _str(8, "e") + _int(2, 1) + _bytes(9, b"\0\0\0\0")
    model = nest([7], b"".join(_bytes(5, t) for t in (flag_only, data_only, default, plain)))
    model += nest([7, 5], flag_then_default)
    assert sorted(external_tensors(model), key=lambda t: t.name) == [
        ExternalTensor("a", ""),
        ExternalTensor("b", "b.bin"),
        ExternalTensor("d", ""),
    ]


def test_only_the_location_entry_names_the_location():
    entries = (
        _bytes(13, _entry("offset", "4096"))
        + _bytes(13, _entry("location", "w.bin"))
        + _bytes(13, _entry("length", "16"))
    )
    assert external_tensors(nest([7, 5], _str(8, "w") + entries)) == [ExternalTensor("w", "w.bin")]
    keyless = _str(8, "k") + _bytes(13, _str(2, "value-without-key"))
    valueless = _str(8, "v") + _bytes(13, _str(1, "location"))
    found = external_tensors(nest([7, 5], keyless) + nest([7, 5], valueless))
    assert sorted(found, key=lambda t: t.name) == [
        ExternalTensor("k", ""),
        ExternalTensor("v", ""),
    ]


def test_fields_of_the_wrong_wire_type_are_skipped():
    # name (8) as a varint, data_location (14) length-delimited, an entry's key as a
    # varint: none of them is what onnx.proto means by that field.
    odd = _int(8, 5) + _bytes(14, b"\x01") + _bytes(13, _int(1, 7) + _str(2, "x.bin"))
    assert external_tensors(nest([7, 5], _str(8, "t") + odd)) == [ExternalTensor("t", "")]
    # A graph (7) written as a varint is not entered.
    assert external_tensors(_int(7, 150)) == []


def test_fixed_width_fields_are_stepped_over_by_their_width():
    # float_data (4, fixed32) and double_data (10, fixed64) before the name: a wrong
    # width would read the name from the middle of a number.
    fixed32 = _varint(4 << 3 | 5) + struct.pack("<f", 1.5)
    fixed64 = _varint(10 << 3 | 1) + struct.pack("<d", 2.5)
    body = fixed32 + fixed64 + fixed32 + tensor("after-numbers", "n.bin")
    assert external_tensors(nest([7, 5], body)) == [ExternalTensor("after-numbers", "n.bin")]


@pytest.mark.parametrize("length", [127, 128, 300])
def test_long_fields_and_ten_byte_varints_are_read_whole(length):
    name = "n" * length  # 128 is 0x80 0x01: a first byte of exactly 0x80 continues
    dims = _int(1, -1)  # int64 -1: the longest varint protobuf writes (ten bytes)
    assert len(dims) == 11
    found = external_tensors(nest([7, 5], dims + tensor(name, "long.bin")))
    assert found == [ExternalTensor(name, "long.bin")]


def test_a_tensor_without_a_name_is_listed_with_an_empty_one():
    unnamed = _bytes(13, _entry("location", "w.bin")) + _int(14, EXTERNAL)
    assert external_tensors(nest([7, 5], unnamed)) == [ExternalTensor("", "w.bin")]


def test_names_that_are_not_utf8_are_kept_with_replacement_characters():
    body = _bytes(8, b"w\xff") + _bytes(13, _str(1, "location") + _bytes(2, b"\xfe.bin"))
    body += _int(14, EXTERNAL)
    assert external_tensors(nest([7, 5], body)) == [ExternalTensor("w\ufffd", "\ufffd.bin")]


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"\x3a\x85", "truncated or overlong varint"),  # a length that stops mid-varint
        (b"\x3a\x05abc", "field runs past the end of its message"),
        (_varint(7 << 3 | 1) + b"1234567", "field runs past the end of its message"),
        (_varint(7 << 3 | 5) + b"123", "field runs past the end of its message"),
        (b"\x3b", "unsupported wire type 3"),
        (b"\x3c", "unsupported wire type 4"),
        (b"\x3e", "unsupported wire type 6"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "truncated or overlong varint"),
    ],
    ids=["varint-cut", "bytes-past-end", "fixed64-past-end", "fixed32-past-end",
         "start-group", "end-group", "wire-6", "eleven-byte-varint"],
)  # fmt: skip
def test_malformed_bytes_are_refused_with_the_reason(data, reason):
    with pytest.raises(MalformedGraph) as caught:
        external_tensors(data)
    assert str(caught.value) == reason


def test_malformed_bytes_deep_inside_are_refused_too():
    with pytest.raises(MalformedGraph, match="field runs past the end"):
        external_tensors(nest([7, 5], _str(8, "w") + b"\x6a\x09short"))


def _chain(graphs: int, leaf: bytes) -> bytes:
    """model -> graph -> (node -> attribute.g -> graph) x graphs -> leaf."""
    return nest([7] + [1, 5, 6] * graphs, leaf)


def test_nesting_up_to_max_depth_is_scanned_and_one_more_level_refused():
    # graph at depth 1 + 3k; attribute at 3 + 3k; its tensor at 4 + 3k.
    k = (MAX_DEPTH - 4) // 3
    assert 4 + 3 * k == MAX_DEPTH
    deepest_allowed = _chain(k, _bytes(1, _bytes(5, _bytes(5, tensor("deep", "d.bin")))))
    assert external_tensors(deepest_allowed) == [ExternalTensor("deep", "d.bin")]
    # an initializer of the graph at depth 1 + 3(k+1) sits at MAX_DEPTH + 1
    one_more = _chain(k + 1, _bytes(5, tensor("deeper", "d.bin")))
    with pytest.raises(MalformedGraph) as caught:
        external_tensors(one_more)
    assert str(caught.value) == f"graphs nested deeper than {MAX_DEPTH} levels"


@pytest.mark.parametrize(
    "location,outside",
    [("w.bin", False), ("..w.bin", False), ("w..bin", False), ("sub/a:b.bin", False),
     ("sub\\w.bin", False), ("", False), ("\\\\server\\share\\w.bin", True),
     ("\\w.bin", True), ("d:w.bin", True), ("a\\..\\..\\w.bin", True), ("sub/..", True),
     ("..", True)],
)  # fmt: skip
def test_locations_leave_the_bundle_only_by_root_drive_or_parent(location, outside):
    assert escapes_directory(location) is outside
