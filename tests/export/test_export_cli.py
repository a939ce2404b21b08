"""`capbatch export` through the CLI: bad inputs give one line and exit 2; variants; atomicity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_torch

REPO = Path(__file__).resolve().parents[2]


def _run_cli(capsys, *args: str) -> tuple[int, str, str]:
    from capbatch.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_shows_examples(capsys):
    code, out, _ = _run_cli(capsys, "export", "--help")
    assert code == 0
    assert "Examples:" in out
    assert "capbatch export --ckpt" in out


def test_export_without_torch_names_the_extra(tmp_path):
    # A `torch` package that fails to import hides the real one from the CLI process.
    shim = tmp_path / "shim" / "torch"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(
        "raise ImportError(\"No module named 'torch' (hidden by test)\", name='torch')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shim.parent), str(REPO)]))
    result = subprocess.run(
        [sys.executable, "-m", "capbatch", "export", "--ckpt", "x.pt", "--out", "b"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2
    _assert_one_line(result.stderr, "pip install 'capbatch[export,cpu]'")
    assert not (tmp_path / "b").exists()


class _Payload:
    """Pickled as an arbitrary object: weights-only loading must refuse it."""


def _bad_checkpoints(directory: Path) -> dict[str, tuple[Path, str]]:
    import torch

    from tests.bundles import make_tiny_bundle, tiny_checkpoint_of

    good = tiny_checkpoint_of(make_tiny_bundle())
    truncated = directory / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = directory / "resnet_state_dict.pt"
    torch.save({"conv1.weight": torch.zeros(4, 3, 7, 7), "fc.bias": torch.zeros(10)}, foreign)
    pickled = directory / "pickled.pt"
    torch.save({"format": "capbatch-checkpoint", "model": _Payload()}, pickled)
    return {
        "missing": (directory / "nope.pt", "checkpoint not found"),
        "truncated": (truncated, "not a readable PyTorch checkpoint"),
        "foreign": (foreign, "is not a capbatch checkpoint"),
        "pickled": (pickled, "pickled Python objects"),
    }


@needs_torch
@pytest.mark.parametrize("case", ["missing", "truncated", "foreign", "pickled"])
def test_bad_checkpoint_gives_one_line_and_exit_2(tmp_path, capsys, case):
    path, message = _bad_checkpoints(tmp_path)[case]
    out_dir = tmp_path / "bundle"
    code, _, err = _run_cli(capsys, "export", "--ckpt", str(path), "--out", str(out_dir))
    assert code == 2
    _assert_one_line(err, "capbatch: error:", message)
    assert not out_dir.exists()


@needs_torch
def test_cli_writes_validated_bundle_and_int8_fp16_variants(tmp_path, capsys):
    from capbatch.manifest import verify_bundle
    from tests.bundles import make_tiny_bundle, tiny_checkpoint_of

    checkpoint = tiny_checkpoint_of(make_tiny_bundle())
    out_dir = tmp_path / "models" / "tiny"
    code, out, err = _run_cli(
        capsys,
        "export",
        "--ckpt",
        str(checkpoint),
        "--out",
        str(out_dir),
        "--int8",
        "--fp16",
        "--name",
        "tiny.v1",
    )
    assert code == 0, err
    assert f"wrote {out_dir}-int8" in out
    fp32 = verify_bundle(out_dir)
    umask = os.umask(0)
    os.umask(umask)
    assert out_dir.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    assert fp32["model_id"].startswith("tiny.v1-lite0-")
    assert fp32["validation"]["caption_agreement"] == 1.0
    for variant in ("fp16", "int8"):
        manifest = verify_bundle(tmp_path / "models" / f"tiny-{variant}")
        assert manifest["variant"] == variant
        assert manifest["model_id"] == f"{fp32['model_id']}-{variant}"
        assert manifest["validation"]["caption_agreement"] >= 0.97
        assert manifest["source_checkpoint_sha256"] == fp32["source_checkpoint_sha256"]
    # Nothing but the three bundles: no staging directories left behind.
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "tiny",
        "tiny-fp16",
        "tiny-int8",
    ]
    # A second export refuses to replace it without --overwrite.
    code, _, err = _run_cli(capsys, "export", "--ckpt", str(checkpoint), "--out", str(out_dir))
    assert code == 2
    _assert_one_line(err, "already exists", "--overwrite")


@needs_torch
def test_bad_model_name_is_refused_before_any_work(tmp_path, capsys):
    code, _, err = _run_cli(
        capsys,
        "export",
        "--ckpt",
        str(tmp_path / "x.pt"),
        "--out",
        str(tmp_path / "b"),
        "--name",
        "../evil",
    )
    assert code == 2
    _assert_one_line(err, "--name must be")
    assert not (tmp_path / "b").exists()


@needs_torch
def test_failed_validation_leaves_no_bundle_and_lists_every_output(tmp_path, monkeypatch):
    from capbatch.export import convert
    from capbatch.export.validate import ValidationError, validate_graphs

    from tests.bundles import make_tiny_bundle, tiny_checkpoint_of

    def validate_against_a_drifted_model(model, *args, **kwargs):
        import torch

        with torch.no_grad():
            model.decoder.fc.bias += 0.05  # log_probs drift
            model.decoder.init_h.bias += 0.05  # h0 drifts, and with it every state
        return validate_graphs(model, *args, **kwargs)

    monkeypatch.setattr(convert, "validate_graphs", validate_against_a_drifted_model)
    checkpoint = tiny_checkpoint_of(make_tiny_bundle())
    with pytest.raises(ValidationError) as caught:
        convert.export_bundle(checkpoint, tmp_path / "bundle")
    assert caught.value.graph == "encoder"
    assert any(f.startswith("h0: max abs diff") for f in caught.value.failures)
    assert list(tmp_path.iterdir()) == []


@needs_torch
def test_manifest_records_config_preprocess_and_hashes(tmp_path):
    from capbatch.manifest import sha256_file
    from capbatch.preprocess import PreprocessSpec
    from tests.bundles import make_tiny_bundle, tiny_checkpoint_of

    bundle = make_tiny_bundle(tmp_path, top_k=3, max_len=9)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["max_len"] == 9 == manifest["config"]["max_len"]
    assert PreprocessSpec(**manifest["preprocess"]).size == manifest["config"]["preprocess"]["size"]
    assert manifest["special_tokens"] == {"pad": 0, "start": 1, "end": 2, "unk": 3}
    assert manifest["graphs"]["decoder_step"]["top_k"] == 3
    assert manifest["graphs"]["decoder_step"]["outputs"][-2:] == ["topk_log_probs", "topk_ids"]
    assert manifest["opset"] == 17
    assert manifest["model_id"].startswith("tiny-lite0-")
    assert manifest["metrics"]["train_steps"] > 0
    assert set(manifest["tools"]) >= {"torch", "onnx", "onnxruntime", "capbatch"}
    for name, digest in manifest["files"].items():
        assert sha256_file(bundle / name) == digest
    checkpoint = tiny_checkpoint_of(bundle)
    assert manifest["source_checkpoint_sha256"] == sha256_file(checkpoint)
