"""capbatch-train fit / eval end to end through the CLI, its errors, and seeded determinism."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import needs_torch
from tests.training.datasets import shape_scenes, write_csv_dataset

pytestmark = needs_torch

SMALL = ["--embed-dim", "16", "--attention-dim", "16", "--decoder-dim", "32", "--threads", "1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    scenes = shape_scenes(limit=12)
    names = [s[0] for s in scenes]
    root = tmp_path_factory.mktemp("data")
    extra = {name: [caption.replace("a ", "one ", 1)] for name, caption, _ in scenes}
    return write_csv_dataset(
        root, scenes, {"train": names[:8], "val": names[8:10], "test": names[10:]}, extra
    )


def test_fit_then_eval_writes_a_report(dataset, tmp_path, capsys):
    from capbatch.training.cli import main

    out = tmp_path / "run"
    code = main(
        [
            "fit",
            "--data",
            str(dataset),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--no-progress",
            *SMALL,
        ]
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs_run"] == 2 and summary["train_captions"] == 16
    assert (out / "best.pt").is_file() and (out / "metrics.jsonl").is_file()

    report_path = tmp_path / "report.json"
    code = main(
        [
            "eval",
            "--ckpt",
            str(out / "best.pt"),
            "--data",
            str(dataset),
            "--split",
            "test",
            "--beam",
            "3",
            "--out",
            str(report_path),
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads(report_path.read_text())
    test = report["splits"]["test"]
    assert report["beam"] == 3 and test["images"] == 2
    for key in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider"):
        assert 0.0 <= test[key] <= 10.0, key
    if shutil.which("java"):
        assert 0.0 <= test["meteor"] <= 1.0
    assert "semantic_accuracy" not in test  # not a generated-scenes dataset
    assert len(test["examples"]) == 2


def test_errors_are_one_line_with_exit_code(tmp_path, capsys):
    from capbatch.training.cli import main

    code = main(["fit", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        err.startswith("capbatch-train: error: data directory not found") and err.count("\n") == 1
    )
    code = main(["eval", "--ckpt", str(tmp_path / "x.pt"), "--data", str(tmp_path)])
    assert code == 2 and "checkpoint not found" in capsys.readouterr().err
    code = main(["fit", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--epochs", "0"])
    assert code == 2 and "epochs must be >= 1" in capsys.readouterr().err


def test_same_seed_same_weights(dataset, tmp_path):
    import torch
    from capbatch.training.checkpoint import load_checkpoint
    from capbatch.training.config import ModelConfig, TrainOptions
    from capbatch.training.train import fit

    def run(name, seed):
        options = TrainOptions(
            data=dataset,
            out=tmp_path / name,
            epochs=1,
            batch_size=4,
            model=ModelConfig(embed_dim=16, attention_dim=16, decoder_dim=32),
            threads=1,
            progress=False,
            seed=seed,
            cache_dir=tmp_path / "cache",
        )
        fit(options)
        return load_checkpoint(tmp_path / name / "last.pt")["model"]

    a, b, c = run("a", 0), run("b", 0), run("c", 1)
    decoder_keys = [k for k in a if k.startswith("decoder.")]
    assert all(torch.equal(a[k], b[k]) for k in decoder_keys)
    assert not all(torch.equal(a[k], c[k]) for k in decoder_keys)


@pytest.mark.parametrize("frozen_batchnorm", [False, True])
def test_fine_tuning_trains_only_the_unfrozen_stage_from_cached_prefix(
    dataset, tmp_path, frozen_batchnorm
):
    import torch
    from capbatch.training.checkpoint import load_checkpoint
    from capbatch.training.config import ModelConfig, TrainOptions
    from capbatch.training.model import build_model
    from capbatch.training.train import fit

    options = TrainOptions(
        data=dataset,
        out=tmp_path / "ft",
        epochs=1,
        batch_size=8,
        model=ModelConfig(
            embed_dim=16, attention_dim=16, decoder_dim=32, fine_tune_stages=1,
            feature_taps=(1, 2), position_features=True,
        ),  # fmt: skip
        threads=1,
        progress=False,
        val_images=2,
        frozen_batchnorm=frozen_batchnorm,
    )
    fit(options)
    saved = load_checkpoint(tmp_path / "ft" / "last.pt")
    assert saved["config"]["feature_taps"] == [1, 2] and saved["config"]["position_features"]
    # The frozen stages' output is cached once: flat rows of what stage 6 hands on.
    (index,) = (tmp_path / "ft" / "features").glob("*/index.json")
    shape = json.loads(index.read_text())["shape"]
    assert shape[1:] == [320 * 7 * 7 + (24 + 40) * 49]
    reference = build_model(ModelConfig.from_dict(saved["config"]))
    last = len(reference.encoder.stages) - 1
    changed = {
        k.split(".")[2]
        for k, v in reference.state_dict().items()
        if k.startswith("encoder.stages.") and not torch.equal(v, saved["model"][k])
    }
    assert changed == {str(last)}
    stats_changed = any(
        not torch.equal(v, saved["model"][k])
        for k, v in reference.state_dict().items()
        if k.startswith(f"encoder.stages.{last}.") and k.endswith(("running_mean", "running_var"))
    )
    assert stats_changed is not frozen_batchnorm


def test_generated_scenes_select_checkpoints_on_semantic_accuracy(tmp_path, capsys):
    """On scenes data, validation scores semantic accuracy; the figure it logs
    is the one `eval` computes for the same checkpoint on the same images."""
    from capbatch.training.cli import main
    from capbatch.training.scenes import generate_dataset, load_splits

    data = generate_dataset(tmp_path / "scenes", n=40, seed=5)
    val_count = len(load_splits(data)["val"])
    assert val_count >= 2
    out = tmp_path / "run"
    args = ["fit", "--data", str(data), "--out", str(out), "--epochs", "2", "--batch-size", "8"]
    assert main([*args, "--no-progress", "--lr", "0.01", *SMALL]) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["select_on"] == "semantic"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(r) for r in records][0].count("val_semantic") == 1
    assert all("val_bleu4" not in r for r in records)
    best = max(records, key=lambda r: r["val_semantic"])
    assert summary["best_metric"] == best["val_semantic"]

    report = tmp_path / "report.json"
    eval_args = ["eval", "--ckpt", str(out / "best.pt"), "--data", str(data), "--split", "val"]
    assert main([*eval_args, "--beam", "1", "--out", str(report)]) == 0
    scored = json.loads(report.read_text())["splits"]["val"]
    assert scored["images"] == val_count
    assert scored["semantic_accuracy"] == pytest.approx(best["val_semantic"])


def test_select_on_semantic_needs_scene_facts(dataset, tmp_path, capsys):
    from capbatch.training.cli import main

    args = ["fit", "--data", str(dataset), "--out", str(tmp_path / "o"), "--select-on", "semantic"]
    assert main([*args, *SMALL]) == 2
    err = capsys.readouterr().err
    assert "needs generated scenes (no scenes.jsonl" in err and err.count("\n") == 1


def test_init_from_continues_a_checkpoint_with_a_layout_init(dataset, tmp_path, capsys):
    """Phase two of a recipe: start from phase one's weights and tokenizer, add the
    layout init; architecture options that disagree with the checkpoint are refused."""
    import torch
    from capbatch.training.checkpoint import load_checkpoint
    from capbatch.training.cli import main

    first, second = tmp_path / "one", tmp_path / "two"
    common = ["--data", str(dataset), "--epochs", "1", "--batch-size", "4", "--no-progress"]
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["fit", "--out", str(first), *common, *cache, *SMALL]) == 0
    start = first / "last.pt"
    args = ["fit", "--out", str(second), *common, *cache, "--init-from", str(start)]
    assert main([*args, "--layout-init", "4", "--lr", "0.01", "--threads", "1"]) == 0
    capsys.readouterr()
    before, after = load_checkpoint(start), load_checkpoint(second / "last.pt")
    assert after["config"]["layout_init"] == 4
    assert {**after["config"], "layout_init": 0} == before["config"]
    assert after["tokenizer"] == before["tokenizer"]
    assert after["model"]["decoder.layout_h.weight"].abs().max() > 0  # it trained
    encoder_keys = [k for k in before["model"] if k.startswith("encoder.")]
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in encoder_keys)

    bad = ["fit", "--out", str(tmp_path / "bad"), *common, "--init-from", str(start)]
    assert main([*bad, "--decoder-dim", "64"]) == 2
    err = capsys.readouterr().err
    assert "--init-from keeps the checkpoint's decoder_dim (32); got 64" in err
    assert err.count("\n") == 1
