"""The variant gate of export (export/convert.py, docs/export.md): an fp16/int8
variant whose greedy captions agree with fp32's on fewer than VARIANT_MIN_AGREEMENT
of the validation images is refused in one line naming the variant, its agreement
and --force, and nothing is written (neither the variant nor the fp32 bundle);
a variant at the minimum is written; --force writes one below it and says so in
its manifest.

The variant is made to disagree by changing the greedy tokens export measures it
by on chosen images (the tiny int8 graph agrees with fp32 on all of them)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import needs_torch

pytestmark = needs_torch


@pytest.fixture
def checkpoint():
    from tests.bundles import make_tiny_bundle, tiny_checkpoint_of

    return tiny_checkpoint_of(make_tiny_bundle())


@pytest.fixture
def disagreeing(monkeypatch):
    """disagreeing(n): the int8 variant's greedy tokens differ from fp32's on n images."""
    from capbatch.export import convert

    measured = convert._greedy
    count = {"n": 0}

    def greedy(bundle: Path, images, config):
        hypotheses = measured(bundle, images, config)
        if "-int8." not in bundle.name:  # fp32's (the reference) are left as they are
            return hypotheses
        return [
            replace(h, tokens=(*h.tokens, h.tokens[-1] if h.tokens else 4)) if i < count["n"] else h
            for i, h in enumerate(hypotheses)
        ]

    monkeypatch.setattr(convert, "_greedy", greedy)

    def set_count(n: int) -> None:
        count["n"] = n

    return set_count


def test_a_variant_below_the_minimum_is_refused_in_one_line_and_nothing_is_written(
    tmp_path, capsys, checkpoint, disagreeing
):
    from capbatch.cli import main

    disagreeing(2)  # 6 of the 8 generated validation images agree: 75 % < 97 %
    out = tmp_path / "models" / "tiny"
    code = main(["export", "--ckpt", str(checkpoint), "--out", str(out), "--int8",
                 "--no-validate", "--no-domain-stats"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "capbatch: error: int8 variant agrees with fp32 on 75% of 8 validation images (< 97%); "
        "not written (pass --force to write it anyway)"
    ]
    # The fp32 bundle was complete, but it is staged with its variant: neither lands.
    assert list((tmp_path / "models").iterdir()) == []


def test_a_variant_at_the_minimum_is_written_and_not_marked_forced(
    tmp_path, monkeypatch, checkpoint, disagreeing
):
    from capbatch.export import convert
    from capbatch.export.convert import export_bundles

    from capbatch.manifest import verify_bundle

    monkeypatch.setattr(convert, "VARIANT_MIN_AGREEMENT", 7 / 8)
    disagreeing(1)  # 7 of 8 agree: exactly the minimum
    out = tmp_path / "tiny"
    export_bundles(checkpoint, out, int8=True, validate=False)
    validation = verify_bundle(tmp_path / "tiny-int8")["validation"]
    assert validation == {
        "images": 8, "caption_agreement": 7 / 8, "min_agreement": 7 / 8, "forced": False
    }  # fmt: skip


def test_force_writes_a_variant_below_the_minimum_and_records_that_it_was_forced(
    tmp_path, checkpoint, disagreeing
):
    from capbatch.export.convert import export_bundles

    from capbatch.manifest import verify_bundle

    disagreeing(8)
    out = tmp_path / "tiny"
    export_bundles(checkpoint, out, int8=True, validate=False, force=True)
    assert verify_bundle(out)["variant"] == "fp32"
    validation = verify_bundle(tmp_path / "tiny-int8")["validation"]
    assert validation == {
        "images": 8, "caption_agreement": 0.0, "min_agreement": 0.97, "forced": True
    }  # fmt: skip
