"""Training on a user's own small data (issue 20), through `capbatch-train` on tiny
datasets the tests write: run folders are never mixed, features follow the image
bytes, checkpoint selection works at any size, eval/--ckpt are convenient."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import needs_torch
from tests.training.datasets import shape_scenes, write_csv_dataset

pytestmark = needs_torch

SMALL = ["--embed-dim", "16", "--attention-dim", "16", "--decoder-dim", "32", "--threads", "1"]
QUIET = ["--no-progress", "--batch-size", "4", *SMALL]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    scenes = shape_scenes(limit=10)
    names = [s[0] for s in scenes]
    root = tmp_path_factory.mktemp("data")
    splits = {"train": names[:6], "val": names[6:8], "test": names[8:]}
    extra = {name: [caption.replace("a ", "one ", 1), f"{caption} again"] for name, caption, _ in scenes}
    return write_csv_dataset(root, scenes, splits, extra)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _fit(main, data, out, cache, *more):
    args = ["fit", "--data", str(data), "--out", str(out), "--cache-dir", str(cache)]
    return main([*args, "--epochs", "1", *QUIET, *more])


def test_fit_refuses_a_used_run_folder_unless_resume_or_overwrite(dataset, cache, tmp_path, capsys):
    from capbatch.training.cli import main

    out = tmp_path / "run"
    assert _fit(main, dataset, out, cache) == 0
    best = (out / "best.pt").read_bytes()
    metrics = (out / "metrics.jsonl").read_text()
    capsys.readouterr()

    assert _fit(main, dataset, out, cache) == 2
    err = capsys.readouterr().err
    assert "already holds a run; pass --resume to continue it, --overwrite" in err
    assert err.count("\n") == 1
    assert (out / "best.pt").read_bytes() == best and (out / "metrics.jsonl").read_text() == metrics

    assert _fit(main, dataset, out, cache, "--resume", "--overwrite") == 2
    assert "pick one" in capsys.readouterr().err

    assert _fit(main, dataset, out, cache, "--overwrite", "--seed", "3") == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]  # a fresh run, not 1, 1
    assert (out / "best.pt").read_bytes() != best


def test_a_failed_start_leaves_no_empty_folder(dataset, tmp_path, capsys):
    from capbatch.training.cli import main

    out = tmp_path / "never"
    assert _fit(main, tmp_path / "missing", out, tmp_path / "c") == 2
    assert not out.exists()
    assert _fit(main, dataset, out, tmp_path / "c", "--select-on", "semantic") == 2
    assert "needs generated scenes" in capsys.readouterr().err
    assert not out.exists()


def test_replaced_image_gets_new_features(dataset, cache, tmp_path):
    """Replace a test image's file (same name, other bytes): eval recomputes its
    features from the new bytes instead of serving the cached ones."""
    import numpy as np
    from capbatch.training.cli import main
    from capbatch.training.features import FeatureCache

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    out = tmp_path / "run"
    assert _fit(main, data, out, cache) == 0
    (directory,) = [p for p in cache.iterdir() if (p / "index.json").is_file()]
    before = FeatureCache.open(directory)
    replaced, source = "shape_008.png", "shape_000.png"  # a test image; a train image
    old_row = before.names.index(replaced)
    shutil.copyfile(data / "images" / source, data / "images" / replaced)

    evaluate = ["eval", "--ckpt", str(out), "--data", str(data), "--no-meteor"]
    assert main([*evaluate, "--cache-dir", str(cache), "--device", "cpu"]) == 0
    after = FeatureCache.open(directory)
    rows = [i for i, name in enumerate(after.names) if name == replaced]
    assert len(rows) == 2 and rows[0] == old_row  # the old row stays, a new one is added
    source_row = after.names.index(source)
    old, new = (np.asarray(after.features[r], np.float32) for r in rows)
    same_bytes = np.asarray(after.features[source_row], np.float32)
    np.testing.assert_allclose(new, same_bytes, atol=2e-2)  # computed from the new bytes
    assert np.abs(old - same_bytes).max() > 0.1  # the stale row really differed


def test_eval_takes_a_run_folder_and_writes_every_prediction(dataset, cache, tmp_path, capsys):
    from capbatch.training.cli import main

    out = tmp_path / "run"
    assert _fit(main, dataset, out, cache) == 0
    report_path = tmp_path / "reports" / "test.json"
    args = ["eval", "--ckpt", str(out), "--data", str(dataset), "--no-meteor", "--beam", "2"]
    assert main([*args, "--cache-dir", str(cache), "--out", str(report_path)]) == 0  # device auto
    report = json.loads(report_path.read_text())
    assert report["checkpoint"] == str(out / "best.pt")
    lines = (tmp_path / "reports" / "test.predictions.jsonl").read_text().splitlines()
    assert report["predictions"] == str(tmp_path / "reports" / "test.predictions.jsonl")
    predictions = [json.loads(line) for line in lines]
    assert [p["image"] for p in predictions] == ["shape_008.png", "shape_009.png"]
    assert all(p["split"] == "test" and len(p["references"]) == 3 for p in predictions)
    assert all(len(e["references"]) == 3 for e in report["splits"]["test"]["examples"])

    assert main(["eval", "--ckpt", str(tmp_path), "--data", str(dataset)]) == 2
    assert f"{tmp_path} is a folder without best.pt" in capsys.readouterr().err


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_select_on_loss_keeps_the_lowest_validation_loss(dataset, cache, tmp_path, capsys):
    from capbatch.training.checkpoint import load_checkpoint
    from capbatch.training.cli import main

    out = tmp_path / "run"
    more = ["--select-on", "loss", "--lr", "0.01", "--patience", "0", "--epochs", "3"]
    assert _fit(main, dataset, out, cache, *more) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    records = _records(out)
    assert summary["select_on"] == "loss" and all("val_loss" in r for r in records)
    losses = [r["val_loss"] for r in records]
    assert all(0.0 < v < 10.0 for v in losses)
    assert summary["best_metric"] == min(losses)
    assert load_checkpoint(out)["epoch"] == 1 + losses.index(min(losses))


def test_auto_selects_on_loss_for_a_small_validation_split_and_warns(dataset, cache, tmp_path, capsys):
    from capbatch.training.cli import main

    out = tmp_path / "run"
    assert _fit(main, dataset, out, cache) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["select_on"] == "loss"
    assert "capbatch-train: warning: only 2 'val' images: validation scores are noisy" in captured.err
    assert "only 2 'val' images" in _records(out)[0]["warnings"][0]


def test_a_metric_that_never_moves_neither_stops_early_nor_picks_noise(dataset, cache, tmp_path, capsys):
    """BLEU-4 of a barely trained model sits at ~0 every epoch: no early stop after
    `patience` epochs, the first epoch stays best (ties), and stderr says why."""
    from capbatch.training.checkpoint import load_checkpoint
    from capbatch.training.cli import main

    out = tmp_path / "run"
    more = ["--select-on", "bleu4", "--lr", "1e-9", "--patience", "1", "--epochs", "3"]
    assert _fit(main, dataset, out, cache, *more) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["epochs_run"] == 3 and not summary["stopped_early"]
    scores = [r["val_bleu4"] for r in _records(out)]
    assert max(scores) < 1e-3 and max(scores) - min(scores) < 1e-4
    assert load_checkpoint(out)["epoch"] == 1
    assert "best val_bleu4 is ~0" in captured.err and "try --select-on loss" in captured.err
    assert "val_bleu4 has not moved since the first epoch" in captured.err
    assert captured.err.count("is ~0") == 1  # said once, not every epoch
    assert any("is ~0" in w for w in _records(out)[-1]["warnings"])


def test_empty_validation_split_is_said_loudly(tmp_path, capsys):
    from capbatch.training.cli import main

    data = write_csv_dataset(tmp_path / "data", shape_scenes(limit=8))  # hash split: no val
    out = tmp_path / "run"
    assert _fit(main, data, out, tmp_path / "cache") == 0
    err = capsys.readouterr().err
    assert "warning: the 'val' split is empty: best.pt will follow last.pt" in err
    assert "split is empty" in _records(out)[0]["warnings"][0]


def test_group_by_keeps_copies_of_a_photo_in_one_split(tmp_path, capsys):
    from capbatch.training.cli import main
    from capbatch.training.data import read_dataset

    photos = shape_scenes(limit=8)
    copies = [
        (f"photo{p}_aug{j}.png", caption, image)
        for p, (_, caption, image) in enumerate(photos)
        for j in range(4)
    ]
    data = write_csv_dataset(tmp_path / "data", copies)

    def groups(dataset):
        return {s: {im.name.split("_")[0] for im in ims} for s, ims in dataset.splits.items()}

    scattered = groups(read_dataset(data))
    assert scattered["train"] & (scattered["val"] | scattered["test"])  # leakage by default
    grouped = groups(read_dataset(data, group_by=r"^(photo\d+)_"))
    assert not grouped["train"] & (grouped["val"] | grouped["test"])

    out = tmp_path / "run"
    assert _fit(main, data, out, tmp_path / "cache", "--group-by", r"^(photo\d+)_") == 0
    report = tmp_path / "test.json"
    # eval reuses fit's grouping: its test split is the one fit held out.
    args = ["eval", "--ckpt", str(out), "--data", str(data), "--no-meteor", "--out", str(report)]
    assert main(args) == 0
    lines = (tmp_path / "test.predictions.jsonl").read_text().splitlines()
    tested = {json.loads(line)["image"].split("_")[0] for line in lines}
    assert tested == grouped["test"] and len(lines) == 4 * len(tested)
    assert main(["fit", "--data", str(data), "--out", str(tmp_path / "x"), "--group-by", "("]) == 2
    assert "is not a regex" in capsys.readouterr().err


def test_data_errors_are_listed_together_in_one_line(tmp_path, capsys):
    from capbatch.training.cli import main

    data = write_csv_dataset(tmp_path / "data", shape_scenes(limit=6))
    csv_path = data / "captions.csv"
    good = csv_path.read_text()
    csv_path.write_text(good + "shape_001.png,a,b\nshape_002.png,   \nshape_003.png\n")
    assert _fit(main, data, tmp_path / "run", tmp_path / "c") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "3 problems:" in err
    for row in ("row 8: expected 2 fields", "row 9: empty caption", "row 10: expected 2 fields"):
        assert row in err
    csv_path.write_text(good)
    for name in ("shape_000.png", "shape_004.png", "shape_005.png"):
        (data / "images" / name).unlink()
    assert _fit(main, data, tmp_path / "run", tmp_path / "c") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "3 images not found in" in err
    assert "'shape_004.png' (in captions)" in err and "split" not in err
    assert not (tmp_path / "run").exists()


def test_flickr_lines_without_a_number_and_unlisted_captions(tmp_path, capsys):
    from capbatch.training.cli import main

    from tests.training.datasets import write_flickr_dataset

    scenes = shape_scenes(limit=7)
    data = write_flickr_dataset(tmp_path / "data", scenes[:6])
    tokens = data / "Flickr8k.token.txt"
    name, caption, image = scenes[6]
    image.save(data / "Flicker8k_Dataset" / name)
    lines = tokens.read_text().replace("#0\t", "\t")  # `name.jpg<TAB>caption` is accepted
    tokens.write_text(lines + f"{name}\t{caption}\n")  # captioned, in no split file
    out = tmp_path / "run"
    assert _fit(main, data, out, tmp_path / "c") == 0
    err = capsys.readouterr().err
    assert "1 captioned images are in no split file and are not used (e.g. 'shape_006.png')" in err
    assert "no split file" in _records(out)[0]["warnings"][0]


def test_an_oversized_pretrained_vocabulary_is_said_and_trimmed(dataset, cache, tmp_path, capsys):
    from capbatch.training.checkpoint import load_checkpoint
    from capbatch.training.cli import main
    from capbatch.training.data import read_dataset
    from capbatch.training.tokenizer import CaptionTokenizer, load_pretrained_tokenizer

    from tests.training.test_tokenizer import _minilm_dir

    folder = _minilm_dir()
    if folder is None:
        pytest.skip("no local WordPiece vocabulary installed (dev extra)")
    out = tmp_path / "run"
    assert _fit(main, dataset, out, cache, "--tokenizer", str(folder)) == 0
    err = capsys.readouterr().err
    assert "the tokenizer has 30,522 tokens and the training captions use" in err
    assert "--trim-tokenizer keeps only the tokens the captions use" in err
    assert any("30,522 tokens" in w for w in _records(out)[0]["warnings"])

    trimmed = tmp_path / "trimmed"
    assert _fit(main, dataset, trimmed, cache, "--tokenizer", str(folder), "--trim-tokenizer") == 0
    assert "30,522 tokens" not in capsys.readouterr().err
    saved = load_checkpoint(trimmed)
    vocab_size = saved["config"]["vocab_size"]
    assert 10 < vocab_size < 60  # the shape captions' pieces + BERT's specials
    tokenizer = CaptionTokenizer.from_checkpoint(saved)
    full = load_pretrained_tokenizer(folder)
    for image in read_dataset(dataset).split("train"):
        for caption in image.captions:  # exact on the captions it was trimmed on
            ids = tokenizer.caption_ids(caption)
            assert tokenizer.decode(ids) == full.decode(full.caption_ids(caption)) == caption
            assert ids[0] == saved["config"]["start_id"] and ids[-1] == saved["config"]["end_id"]
    assert tokenizer.caption_ids("zebra")[1] == saved["config"]["unk_id"]  # unseen: unknown


def test_resume_keeps_the_runs_metric_and_best(dataset, cache, tmp_path, capsys):
    from capbatch.training.cli import main

    out = tmp_path / "run"
    assert _fit(main, dataset, out, cache, "--lr", "0.01") == 0
    assert _fit(main, dataset, out, cache, "--lr", "0.01", "--resume", "--epochs", "2") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    records = _records(out)
    assert [r["epoch"] for r in records] == [1, 2] and summary["select_on"] == "loss"
    assert summary["best_metric"] == min(r["val_loss"] for r in records)
