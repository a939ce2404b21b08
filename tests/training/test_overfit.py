"""Proof the model learns: a tiny CPU run overfits until decoding reproduces the
training captions exactly; greedy == beam(1); beam(3) agrees; every hypothesis's
score equals the sum of its step log-probs recomputed by teacher forcing."""

from __future__ import annotations

import json

import pytest

from tests.conftest import needs_torch

pytestmark = needs_torch


def _scene_dataset(root):
    """A few dozen generated scenes, one caption per image so 'exactly' is well defined.

    Splits: train = every training scene; val = some of them; test = the training
    scenes again (so eval can show semantic accuracy 1.0); test_novel = held-out scenes.
    """
    import csv
    import shutil

    from capbatch.training.scenes import generate_dataset, load_splits

    generated = generate_dataset(root / "generated", 32, seed=0)
    splits = load_splits(generated)
    first: dict[str, str] = {}
    with open(generated / "captions.csv", newline="", encoding="utf-8") as f:
        for row in list(csv.reader(f))[1:]:
            first.setdefault(row[0], row[1])
    data = root / "data"
    shutil.copytree(generated / "images", data / "images")
    shutil.copy(generated / "scenes.jsonl", data / "scenes.jsonl")
    train = splits["train"]
    scenes = [(name, first[name]) for name in first]
    with open(data / "captions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows(scenes)
    split_lists = {
        "train": train,
        "val": train[:6],
        "test": train,
        "test_novel": splits["test_novel"],
    }
    (data / "splits.json").write_text(json.dumps(split_lists))
    return data, {name: first[name] for name in train}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from capbatch.training.config import ModelConfig, TrainOptions
    from capbatch.training.train import fit

    root, captions = _scene_dataset(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("run")
    options = TrainOptions(
        data=root,
        out=out,
        epochs=40,
        batch_size=8,
        lr=5e-3,
        lr_schedule="constant",
        model=ModelConfig(
            dropout=0.0, embed_dim=32, attention_dim=32, decoder_dim=64, max_len=16
        ),
        attention_weight=0.1,
        patience=0,
        progress=False,
        seed=0,
        threads=1,
    )
    summary = fit(options)
    return root, out, captions, summary


def _load(out):
    from capbatch.training.checkpoint import load_checkpoint, model_from_checkpoint
    from capbatch.training.features import FeatureCache
    from capbatch.training.tokenizer import CaptionTokenizer

    data = load_checkpoint(out / "last.pt")
    model = model_from_checkpoint(data)
    cache = FeatureCache.open(next((out / "features").iterdir()))
    return model, CaptionTokenizer.from_checkpoint(data), cache


def test_run_writes_checkpoints_and_metrics(trained):
    _, out, _, summary = trained
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, 41))
    assert lines[-1]["train_loss"] < lines[0]["train_loss"] / 5
    assert summary["select_on"] == "semantic"  # generated scenes: auto picks semantic
    assert summary["best_metric"] == pytest.approx(1.0)


def test_eval_reports_semantic_accuracy_for_test_and_test_novel(trained, tmp_path):
    from capbatch.training.evaluate import EvalOptions, evaluate

    root, out, captions, _ = trained
    report = evaluate(
        EvalOptions(
            checkpoint=out / "last.pt",
            data=root,
            split="test",
            out=tmp_path / "r.json",
            meteor=False,
        )
    )
    test, novel = report["splits"]["test"], report["splits"]["test_novel"]
    assert test["images"] == len(captions)
    assert test["semantic_accuracy"] == 1.0  # the training scenes, captioned exactly
    assert test["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert 0.0 <= novel["semantic_accuracy"] <= 1.0 and novel["images"] >= 1
    assert json.loads((tmp_path / "r.json").read_text())["splits"].keys() == {"test", "test_novel"}


def test_greedy_reproduces_every_training_caption(trained):
    _, out, captions, _ = trained
    model, tokenizer, cache = _load(out)
    names = sorted(captions)
    features = cache.batch(cache.rows(names))  # (N, L, D)
    from capbatch.training.decoding import greedy_decode

    decoded = [tokenizer.decode(h.tokens) for h in greedy_decode(model, features)]
    assert decoded == [captions[n] for n in names]


def test_greedy_equals_beam_one_and_beam_three_agrees(trained):
    _, out, captions, _ = trained
    model, tokenizer, cache = _load(out)
    names = sorted(captions)
    features = cache.batch(cache.rows(names))
    from capbatch.training.decoding import beam_search, greedy_decode

    greedy = greedy_decode(model, features)
    beam1 = beam_search(model, features, beam_size=1)
    beam3 = beam_search(model, features, beam_size=3)
    for name, g, b1, b3 in zip(names, greedy, beam1, beam3, strict=True):
        assert b1[0].tokens == g.tokens
        assert b1[0].token_logprobs == pytest.approx(g.token_logprobs, abs=1e-6)
        assert tokenizer.decode(b3[0].tokens) == captions[name]
        assert 1 <= len(b3) <= 3
        means = [h.mean_logprob for h in b3]
        assert means == sorted(means, reverse=True)


def _teacher_forced_logprobs(model, features, tokens, generated_end):
    """Log-prob of each generated token, by feeding the hypothesis's own tokens."""
    import torch

    config = model.config
    projected, h, c = model.decoder.init_state(features)
    inputs = [config.start_id, *tokens]
    targets = [*tokens, config.end_id] if generated_end else list(tokens)
    out = []
    with torch.inference_mode():
        for previous, target in zip(inputs, targets):
            logits, h, c, _ = model.decoder.step(
                torch.tensor([previous]), h, c, features, projected
            )
            out.append(float(torch.log_softmax(logits.float(), -1)[0, target]))
    return out


def test_scores_equal_teacher_forced_sums(trained):
    _, out, captions, _ = trained
    model, _, cache = _load(out)
    names = sorted(captions)[:8]
    features = cache.batch(cache.rows(names))
    from capbatch.training.decoding import beam_search, greedy_decode

    hyps = greedy_decode(model, features)
    ranked = beam_search(model, features, beam_size=3)
    checked = 0
    for i in range(len(names)):
        for hyp in [hyps[i], *ranked[i]]:
            generated_end = hyp.steps == len(hyp.tokens) + 1
            assert generated_end or hyp.steps == len(hyp.tokens)
            forced = _teacher_forced_logprobs(model, features[i : i + 1], hyp.tokens, generated_end)
            assert forced == pytest.approx(hyp.token_logprobs, abs=1e-4)
            assert sum(forced) == pytest.approx(hyp.score, abs=1e-4)
            checked += 1
    assert checked > len(names)  # beam returned alternatives, not only the winners


def test_resume_continues_from_last(trained, tmp_path):
    import shutil

    from capbatch.training.checkpoint import load_checkpoint
    from capbatch.training.config import ModelConfig, TrainOptions
    from capbatch.training.train import fit

    root, out, _, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    options = TrainOptions(
        data=root,
        out=copy,
        epochs=41,
        batch_size=8,
        lr=5e-3,
        lr_schedule="constant",
        model=ModelConfig(
            dropout=0.0, embed_dim=32, attention_dim=32, decoder_dim=64, max_len=16
        ),
        attention_weight=0.1,
        patience=0,
        progress=False,
        seed=0,
        threads=1,
        resume=True,
    )
    summary = fit(options)
    assert summary["epochs_run"] == 1
    assert load_checkpoint(copy / "last.pt")["epoch"] == 41
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["epoch"] == 41 and len(lines) == 41
