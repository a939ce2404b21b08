"""benchmarks/encoder_precision.py runs end to end on a fake bundle (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.runtime_fakes import make_fake_bundle

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_encoder_precision_benchmark_tiny(tmp_path, monkeypatch):
    pytest.importorskip("onnx")  # the benchmark builds its int8 variant with onnx
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import encoder_precision

    bundle = make_fake_bundle(tmp_path / "b")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(images / f"{i}.png")
    backends = ["onnxruntime-f32"]
    try:
        import openvino  # noqa: F401 - the optional extra: its backend and profile too

        backends.append("openvino-bf16")
    except ImportError:
        pass
    out = tmp_path / "ep.json"
    argv = ["--out-json", str(out), "--tiny", "--bundle", str(bundle), "--images", str(images),
            "--backends", ",".join(backends), "--ghz", "2.0"]  # fmt: skip
    result = encoder_precision.main(argv)
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    assert [row["backend"] for row in result["rows"]] == backends
    assert result["flops"]["per_image"] == sum(result["flops"]["by_op"].values()) > 0
    assert set(result["peak"]["gflops"]) == {"f32", "bf16", "int8"}
    assert sum(result["profile"]["onnxruntime-f32"].values()) > 99  # shares of 100 %
    assert "load_average" in result["machine"]
