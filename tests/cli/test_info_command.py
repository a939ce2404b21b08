"""What `capbatch info` promises (capbatch/info_cli.py, docs/runtime.md): the versions and
providers, then, after verifying every file, the manifest's summary one field per line,
whether the bundle has domain statistics, and the model card it carries."""

from __future__ import annotations

import platform
import re
import shutil
from pathlib import Path

import numpy
import onnxruntime
import PIL
import pytest

from capbatch import __version__
from capbatch import bundle as bundle_module
from capbatch.domain import DomainCheck
from capbatch.errors import ExitCode
from tests.cli.test_caption import run_cli
from tests.runtime_fakes import TOKENS, edit_manifest, make_fake_bundle

REPO = Path(__file__).resolve().parents[2]
NO_DOMAIN = (
    "domain check none: this bundle has no domain statistics, so the rows' domain_distance "
    "and in_domain columns will be empty (add them: capbatch export --domain-images, "
    "or python -m capbatch.export.domain_stats)"
)
NO_CARD = "model card   - (none in this bundle: ask whoever trained it what it knows)"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


@pytest.fixture
def edited(bundle, tmp_path):
    """A copy of the fake bundle whose manifest.json the test edits (it is not hashed)."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)

    return lambda **changes: edit_manifest(copy, **changes)


def info_lines(capsys, *args) -> list[str]:
    code, out, err = run_cli(capsys, "info", *args)
    assert code == ExitCode.OK, err
    return out.splitlines()


def field(lines: list[str], name: str) -> str:
    """The value of the line `name` (names are padded to 13 characters)."""
    found = [line[13:] for line in lines if line[:13].rstrip() == name]
    assert len(found) == 1, (name, lines)
    return found[0]


VERSIONS = [
    f"capbatch     {__version__}",
    f"python       {platform.python_version()}",
    f"onnxruntime  {onnxruntime.__version__}",
    f"numpy        {numpy.__version__}",
    f"pillow       {PIL.__version__}",
    f"providers    {', '.join(onnxruntime.get_available_providers())}",
]


def test_info_prints_versions_then_the_verified_manifest_one_field_per_line(capsys, bundle):
    assert info_lines(capsys, "--model", bundle) == [
        *VERSIONS,
        f"model        fake-0 ({bundle})",
        "verified     sha256 of every file ok",
        "variant      fp32",
        "format       capbatch-bundle v1",
        "preprocess   size=32, resize=stretch, interpolation=bilinear",
        "max_len      8",
        "vocab        file=vocab.json, style=word",
        f"config       vocab_size={len(TOKENS)}, encoder=fake, max_len=8",
        "metrics      bleu4=0.0",
        NO_DOMAIN,
        NO_CARD,
    ]


def test_without_a_default_model_info_still_prints_versions_and_says_so(capsys, monkeypatch):
    monkeypatch.setattr(bundle_module, "DEFAULT_BUNDLE_DIR", Path("/nonexistent/capbatch-model"))
    assert info_lines(capsys) == [
        *VERSIONS,
        "model        no default model is installed; pass --model DIR (a bundle directory)",
    ]


def test_a_model_dir_that_is_no_bundle_is_a_fatal_one_line_error(capsys, tmp_path):
    code, out, err = run_cli(capsys, "info", "--model", tmp_path)
    assert code == ExitCode.FATAL
    assert err.startswith("capbatch: error:") and "manifest.json" in err
    assert out.splitlines() == VERSIONS


def test_variant_defaults_to_fp32_and_is_shown_as_written(capsys, edited):
    assert field(info_lines(capsys, "--model", edited(variant=None)), "variant") == "fp32"
    assert field(info_lines(capsys, "--model", edited(variant="int8")), "variant") == "int8"


def test_empty_metrics_print_a_dash(capsys, edited):
    for metrics in ({}, None):
        lines = info_lines(capsys, "--model", edited(metrics=metrics))
        assert field(lines, "metrics") == "-"


def test_a_bundle_without_the_optional_vocab_and_config_still_gets_its_summary(capsys, edited):
    # Older bundles carry neither entry (the vocabulary then sits at its default file).
    lines = info_lines(capsys, "--model", edited(vocab=None, config=None))
    assert field(lines, "vocab") == ""
    assert field(lines, "config") == ""
    assert field(lines, "model") == f"fake-0 ({edited()})"


def test_validation_and_tools_lines_appear_only_when_the_manifest_has_them(capsys, edited):
    lines = info_lines(capsys, "--model", edited(validation=None, tools=None))
    assert not any(line.startswith(("validation", "tools")) for line in lines)
    lines = info_lines(
        capsys,
        "--model",
        edited(
            validation={"batches": [1, 3], "max_abs_diff": {"h0": 2e-05}},
            tools={"capbatch": "0.1.0", "onnx": "1.17"},
        ),
    )
    assert field(lines, "validation") == "batches=[1, 3], max_abs_diff={'h0': 2e-05}"
    assert field(lines, "tools") == "capbatch=0.1.0, onnx=1.17"
    # In the summary's order: after metrics, before the domain check.
    names = [line[:13].rstrip() for line in lines]
    assert names.index("metrics") < names.index("validation") < names.index("tools")
    assert names.index("tools") < names.index("domain check")


def test_the_model_card_is_printed_whole_one_field_per_line(capsys, edited):
    card = {
        "notice": "knows generated scenes, not photos",
        "training_data": "10,000 generated scenes",
        "not_for": "real photographs",
    }
    lines = info_lines(capsys, "--model", edited(model_card=card))
    start = lines.index("model card")
    assert lines[start:] == [
        "model card",
        "  notice         knows generated scenes, not photos",
        "  training data  10,000 generated scenes",
        "  not for        real photographs",
    ]
    assert NO_CARD not in lines
    lines = info_lines(capsys, "--model", edited(model_card={}))
    assert lines[-1] == NO_CARD


def test_the_built_in_model_shows_how_its_domain_check_was_fitted(capsys):
    facts = DomainCheck.from_bundle(bundle_module.DEFAULT_BUNDLE_DIR).describe()
    line = field(info_lines(capsys), "domain check")
    assert line == (
        f"{facts['method']}, {facts['pooling']} pooling, rank {facts['rank']}; "
        f"fitted on {facts['fit_images']} images; threshold {facts['threshold']:.2f} "
        f"(quantile {facts['quantile']} of {facts['calibration_images']} calibration images)"
    )
    assert re.fullmatch(
        r"mahalanobis-ledoit-wolf, mean pooling, rank \d+; fitted on \d+ images; "
        r"threshold \d+\.\d\d \(quantile 0\.\d+ of \d+ calibration images\)",
        line,
    )


def documented(block_start: str) -> str:
    """The line of docs/runtime.md's `capbatch info` section that starts with block_start."""
    text = (REPO / "docs" / "runtime.md").read_text(encoding="utf-8")
    section = text.split("## `capbatch info`", 1)[1].split("\n## ", 1)[0]
    found = [line for line in section.splitlines() if line.startswith(block_start)]
    assert len(found) == 1
    return found[0]


def test_the_documented_no_statistics_line_is_what_info_prints(capsys, bundle):
    assert NO_DOMAIN in info_lines(capsys, "--model", bundle)
    assert documented("domain check none") == NO_DOMAIN


def test_the_documented_built_in_domain_line_is_what_info_prints(capsys):
    line = "domain check " + field(info_lines(capsys), "domain check")
    assert documented("domain check mahalanobis") == line
