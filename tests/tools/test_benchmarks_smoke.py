"""Smoke test: every benchmark script runs at --tiny size and writes its JSON.

Benchmarks are not part of the test assertions otherwise (no timings are
checked); this only keeps the scripts from rotting. The scripts run in this
process (one torch import) and share one cache, so the tiny bundle is exported
once.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import needs_torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TOOLS = BENCHMARKS.parent / "tools"  # the GPU check and the mutation job


def load_script(name: str, folder: Path = BENCHMARKS):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-cache")


def run_tiny(name: str, out: Path, cache: Path, *extra: str) -> dict:
    load_script(name).main(["--tiny", "--out-json", str(out), "--cache-dir", str(cache), *extra])
    return json.loads(out.read_text())


@needs_torch
def test_variants_tiny(tmp_path, bench_cache):
    result = run_tiny("variants", tmp_path / "variants.json", bench_cache)
    names = [(row["variant"], row["batch"]) for row in result["rows"]]
    assert names == [(v, b) for b in (1, 4) for v in ("fp32 greedy", "int8 greedy", "fp32 beam 3")]
    assert all(row["img_s"] > 0 for row in result["rows"])
    assert 0.0 <= result["int8_caption_agreement"] <= 1.0


@needs_torch
def test_model_cpu_tiny(tmp_path, bench_cache):
    result = run_tiny("model_cpu", tmp_path / "model.json", bench_cache)
    rows = result["configs"][0]["rows"]
    assert [row["batch"] for row in rows] == [1, 4]
    assert {row["encoder"] for row in rows} == {"onnxruntime-f32"}  # the default
    for row in rows:
        assert row["redone_per_batch"] == 0
        assert row["capbatch_img_s"] > 0 and row["torch_batched_img_s"] > 0
        assert row["vs_reference"] == pytest.approx(row["capbatch_img_s"] / row["reference_img_s"])
    assert "load_average" in result["machine"]


def test_model_cpu_encoder_choices_are_parsed_and_checked():
    parse = load_script("model_cpu").parse_encoders
    assert parse("onnxruntime-f32, openvino-bf16@0.04,openvino-f32") == [
        ("onnxruntime", "f32", 0.0),
        ("openvino", "bf16", 0.04),
        ("openvino", "f32", 0.0),
    ]
    for bad, why in [
        ("bf16", "RUNTIME-PRECISION"),
        ("openvino-bf16@1.5", "RUNTIME-PRECISION"),
        ("openvino-bf16@x", "RUNTIME-PRECISION"),
        ("onnxruntime-f32@0.1", "the reference"),
        (",", "at least one"),
    ]:
        with pytest.raises(SystemExit, match=why):
            parse(bad)


@needs_torch
def test_end_to_end_tiny(tmp_path, bench_cache):
    result = run_tiny("end_to_end", tmp_path / "e2e.json", bench_cache)
    row = result["result"]
    assert result["run"]["ok"] == row["images"] == 24
    limit = 1 / (1 / row["decode_img_s"] + 1 / row["model_img_s"])
    assert row["limit_img_s"] == pytest.approx(limit)


@needs_torch
def test_memory_tiny(tmp_path, bench_cache):
    result = run_tiny("memory", tmp_path / "memory.json", bench_cache)
    assert [(r["images"], r["rows"]) for r in result["rows"]] == [(12, 12), (36, 36), (12, 12)]
    assert all(r["peak_rss_mib"] > 10 for r in result["rows"])


def test_plots_tiny(tmp_path):
    pytest.importorskip("matplotlib")
    model = {
        "machine": {"usable_cores": 2},
        "configs": [{"config": "tiny", "steps": 4, "rows": [
            {"batch": b, "capbatch_img_s": 10.0 * b, "torch_batched_img_s": 5.0 * b,
             "reference_img_s": 3.0, "encoder_ms_per_img": 2.0, "steps_ms_per_img": 1.0}
            for b in (1, 4)]}],
    }  # fmt: skip
    (tmp_path / "model.json").write_text(json.dumps(model))
    out = tmp_path / "plots"
    load_script("plots").main(
        [
            "--model-json",
            str(tmp_path / "model.json"),
            "--out-dir",
            str(out),
            "--out-json",
            str(tmp_path / "plots.json"),
        ]  # fmt: skip
    )
    for name in ("bench_throughput.png", "bench_split.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_torch
def test_gpu_check_tiny_on_cpu(tmp_path):
    report = load_script("gpu_check", TOOLS).main(["--tiny", "--out-json", str(tmp_path / "gpu.json")])
    assert report["device"] == "cpu"
    assert "CPUExecutionProvider" in report["onnxruntime"]["providers"]
    assert report["resnet50_infer_b2_fp32_img_s"] > 0
    assert report["resnet50_train_step_amp_b2_ms"] > 0


@needs_torch
def test_intra_op_threads_option_keeps_captions(tmp_path):
    from capbatch.captioner import Captioner
    from capbatch.errors import UsageError
    from tests.bundles import make_tiny_bundle, tiny_images

    bundle = make_tiny_bundle()
    pixels = tiny_images()
    default = Captioner(bundle, device="cpu").hypotheses(pixels)
    single = Captioner(bundle, device="cpu", intra_op_threads=1)
    assert single.bundle.encoder.get_session_options().intra_op_num_threads == 1
    assert [h.tokens for h in single.hypotheses(pixels)] == [h.tokens for h in default]
    with pytest.raises(UsageError):
        Captioner(bundle, device="cpu", intra_op_threads=0)


@needs_torch
def test_pipeline_threads_tiny(tmp_path, bench_cache):
    result = run_tiny("pipeline_threads", tmp_path / "threads.json", bench_cache)
    assert [row["intra_op_threads"] for row in result["rows"]] == [2, 1]
    assert result["rows"][0]["vs_first"] == 1.0


@needs_torch
def test_encoder_chunk_tiny(tmp_path, bench_cache):
    import capbatch.bundle

    before = capbatch.bundle.ENCODER_CHUNK
    result = run_tiny("encoder_chunk", tmp_path / "chunk.json", bench_cache)
    assert [row["chunk"] for row in result["rows"]] == [8, 4]
    assert capbatch.bundle.ENCODER_CHUNK == before


@needs_torch
def test_chunked_encoder_matches_one_run():
    import capbatch.bundle
    from capbatch.captioner import Captioner
    from tests.bundles import make_tiny_bundle, tiny_images

    captioner = Captioner(make_tiny_bundle(), device="cpu")
    pixels = tiny_images()  # 8 images
    before = capbatch.bundle.ENCODER_CHUNK
    try:
        capbatch.bundle.ENCODER_CHUNK = 3  # 3 + 3 + 2
        chunked = captioner.bundle.encode(pixels)
    finally:
        capbatch.bundle.ENCODER_CHUNK = before
    whole = captioner.bundle.encoder.run(None, {"images": pixels})
    for got, expected in zip((chunked.features, chunked.projected, chunked.h0, chunked.c0), whole):
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not Path("/proc/uptime").exists(), reason="reads Linux /proc")
def test_mutation_watchdog_picks_only_children_that_sit_idle():
    import subprocess
    import time

    hung_children = load_script("mutation", TOOLS).hung_children
    parent = subprocess.Popen(["bash", "-c", "sleep 30 & (while :; do :; done) & wait"])
    try:
        time.sleep(2.5)
        children = subprocess.run(
            ["pgrep", "-P", str(parent.pid)], capture_output=True, text=True
        ).stdout.split()
        idle, busy = (int(pid) for pid in children)  # started in that order
        assert hung_children(parent.pid, 1.0) == [idle]  # the spinning one is working
        assert hung_children(parent.pid, 60.0) == []  # too young to call hung
    finally:
        subprocess.run(["pkill", "-P", str(parent.pid)])
        parent.kill()
        parent.wait()
