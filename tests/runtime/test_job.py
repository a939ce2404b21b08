"""The caption job shared by the engines: rows for keyed items, the inference guard,
the per-key resume rule on an Output, and which options each engine takes."""

from __future__ import annotations

import numpy as np
import pytest

from capbatch.batch_rows import KeyedItem, caption_batch
from capbatch.captioner import Captioner, CaptionerArgs
from capbatch.engines.ray_options import RayOptions
from capbatch.errors import UsageError
from capbatch.image_decode import DecodedImage
from capbatch.job import LOCAL_ONLY_VALUES, Engine, RunOptions, check_engine_options, resume_output
from capbatch.output import open_output
from capbatch.rows import Row
from tests.runtime_fakes import make_fake_bundle


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    bundle = make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")
    return Captioner(bundle, device="cpu", batch_size=4)


def image(captioner, seed: int) -> DecodedImage:
    size = captioner.preprocess.size
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return DecodedImage(pixels, 40 + seed, 30)


def test_caption_batch_keeps_order_and_turns_decode_failures_into_rows(captioner):
    batch = [
        (KeyedItem("a", "a.png"), image(captioner, 1)),
        (KeyedItem("b", None), "cannot decode: truncated"),
        (KeyedItem("c", "c.png"), image(captioner, 2)),
    ]
    captioned = caption_batch(captioner, batch)
    assert [r.key for r in captioned.rows] == ["a", "b", "c"]
    assert [r.status for r in captioned.rows] == ["ok", "error", "ok"]
    assert captioned.rows[1].error == "cannot decode: truncated"
    assert (captioned.rows[2].width, captioned.rows[2].model_id) == (42, "fake-0")
    assert len(captioned.results) == 3 and captioned.results[0].caption == captioned.rows[0].caption


def test_inference_failure_becomes_error_rows_not_an_exception(captioner, monkeypatch):
    def broken(images):
        raise RuntimeError("CUDA out of memory\nmore lines")

    monkeypatch.setattr(captioner, "caption_decoded", broken)
    rows = caption_batch(captioner, [(KeyedItem("a", "a.png"), image(captioner, 1))]).rows
    assert rows[0].status == "error" and rows[0].width == 41
    assert rows[0].error == "inference failed: RuntimeError: CUDA out of memory"


def test_engine_only_options_are_checked_in_one_place():
    local = RunOptions(inputs=("x",), workers=2, attention_dir="maps")
    check_engine_options(Engine.local, local, CaptionerArgs(intra_op_threads=2))
    check_engine_options("ray", RayOptions(actors=2, address="auto"))
    with pytest.raises(UsageError, match="--actors needs --engine ray"):
        check_engine_options(Engine.local, RayOptions(actors=2))
    with pytest.raises(UsageError, match="--workers applies to the local engine only"):
        check_engine_options(Engine.ray, RunOptions(inputs=("x",), workers=2))
    options = RunOptions(inputs=("x",), fmt="txt", out="-")
    assert set(options.local_only_values()) == {"--format txt", "--out -"} == set(LOCAL_ONLY_VALUES)


def row(key: str, status: str = "ok") -> Row:
    caption, error = ("a cube", None) if status == "ok" else (None, "bad")
    return Row(key, key, caption, -0.5, status, error, 4, 4, "m")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_resume_output_is_per_key(tmp_path, fmt):
    out = tmp_path / f"o.{fmt}"
    with open_output(out) as output:
        output.begin(append=False)
        output.write([row("a"), row("b", "error")])
    fresh = RunOptions(inputs=("x",), out=out)
    with pytest.raises(UsageError, match="--resume"):
        resume_output(open_output(out), fresh)
    assert resume_output(open_output(out), RunOptions(inputs=("x",), resume=True)) == {
        "a": "ok",
        "b": "error",
    }
    retry = RunOptions(inputs=("x",), retry_errors=True)
    assert resume_output(open_output(out), retry) == {"a": "ok"}
    assert open_output(out).done() == {"a": "ok"}  # the error row was dropped
    assert resume_output(open_output(out), RunOptions(inputs=("x",), overwrite=True)) == {}


def test_summary_counts_reasons_and_the_flags_rows_carry(tmp_path):
    """The per-row flags (in_domain, truncated) are counted as soon as rows carry them;
    until then they stay unknown (None) in the summary and --stats-json."""
    from dataclasses import dataclass

    from capbatch.job import RunSummary
    from capbatch.stats import stats_record

    def row(key, status="ok", error=None):
        return Row(key, None, "c" if status == "ok" else None, -0.1, status, error, 1, 1, "m")

    @dataclass(frozen=True)
    class FlaggedRow(Row):
        in_domain: bool | None = None
        truncated: bool | None = None

    plain = RunSummary(out=tmp_path / "o.csv", fmt="csv")
    plain.count([row("a"), row("b", "error", "image is 9x9 pixels"), row("c", "error", "image is 7x7 pixels")])
    assert (plain.ok, plain.errors) == (1, 2)
    assert plain.reasons == {"image is #x# pixels": 2}
    assert plain.flag_count("in_domain") is None and plain.flag_count("truncated") is None

    flagged = RunSummary(out=tmp_path / "o.csv", fmt="csv")
    base = row("x")
    flagged.count([
        FlaggedRow(**{**base.__dict__, "key": "x", "in_domain": True, "truncated": False}),
        FlaggedRow(**{**base.__dict__, "key": "y", "in_domain": False, "truncated": True}),
        FlaggedRow(**{**base.__dict__, "key": "z", "in_domain": False, "truncated": False}),
    ])  # fmt: skip
    stats = stats_record(flagged, 0, flagged.started_at + 1)
    assert (stats["in_domain"], stats["out_of_domain"], stats["truncated"]) == (1, 2, 1)
    assert stats["model_id"] == "m" and stats["status"] == {"ok": 3, "error": 0}
