"""Each `capbatch caption` / `capbatch info` option and documented behaviour fails a test
when it breaks (docs/testing.md lists which test guards which promise).

In-process through capbatch.cli.main on a fake-weight bundle; the exact score is
checked against a greedy loop written here over the bundle's own ONNX graphs.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from capbatch.cli import main
from capbatch.errors import ExitCode
from tests.cli.test_caption import photos, read_csv, run_cli  # noqa: F401 (photos: fixture)
from tests.runtime_fakes import make_fake_bundle

MAX_LEN = 8  # the fake bundle's own limit


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle", max_len=MAX_LEN)


@pytest.fixture(scope="module")
def ending_bundle(tmp_path_factory):
    """With these images, captions of 1 to 8 steps: some end with <end>, one at the limit."""
    return make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle", end_bias=6.0)


def png(seed: int, size: int = 32) -> bytes:
    """Four bands of random solid colour: the fake encoder sees one colour per band,
    so images differ in what it sees (noise would average to the same grey)."""
    colours = np.random.default_rng(seed).integers(0, 256, (4, 3), dtype=np.uint8)
    pixels = np.repeat(colours, size // 4, axis=0)[:, None, :].repeat(size, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def squares(tmp_path):
    """Eight 32x32 PNGs (the fake encoder's size: no resize between file and graph)."""
    root = tmp_path / "squares"
    root.mkdir()
    for i in range(8):
        (root / f"{i}.png").write_bytes(png(100 + i))
    return root


def caption(capsys, *args):
    return run_cli(capsys, "caption", *args)


def jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- score: the documented mean token log-prob, exactly ----------------------------------


def reference_greedy(bundle, pixels: np.ndarray) -> tuple[list[int], list[float]]:
    """Greedy tokens and their log-probs (<end> included) for one (S, S, 3) image,
    straight from the bundle's two graphs: no capbatch decoding code involved."""
    import onnxruntime as ort

    encoder = ort.InferenceSession(str(bundle / "encoder.onnx"))
    step = ort.InferenceSession(str(bundle / "decoder_step.onnx"))
    features, projected, h, c = encoder.run(None, {"images": pixels[None]})
    token, tokens, logprobs = 1, [], []  # <start> = 1, <end> = 2 in the fake bundle
    for _ in range(MAX_LEN):
        feeds = {"tokens": np.array([token]), "h": h, "c": c}
        log_probs, h, c, _ = step.run(None, {**feeds, "features": features, "projected": projected})
        token = int(np.argmax(log_probs[0]))
        logprobs.append(float(log_probs[0, token]))
        if token == 2:
            break
        tokens.append(token)
    return tokens, logprobs


def test_score_is_the_mean_token_log_prob_of_the_greedy_caption(
    capsys, ending_bundle, squares, tmp_path
):
    bundle = ending_bundle
    out = tmp_path / "rows.jsonl"
    code, _, _ = caption(
        capsys, squares, "--out", out, "--model", bundle, "-q", "--batch-size", "3"
    )
    assert code == ExitCode.OK
    vocab = json.loads((bundle / "vocab.json").read_text())
    rows = {row["key"]: row for row in jsonl(out)}
    steps = []
    for key, row in rows.items():
        pixels = np.asarray(Image.open(key).convert("RGB"))
        tokens, logprobs = reference_greedy(bundle, pixels)
        words = [vocab[t] for t in tokens if t > 3]  # <pad>/<start>/<end>/<unk> are not shown
        assert row["caption"] == " ".join(words)
        assert row["score"] == pytest.approx(np.mean(logprobs), abs=2e-6), key
        steps.append(len(logprobs))
    # Several steps (mean != sum), <end> counted as a step, and the limit reached once.
    assert min(steps) == 1 and max(steps) == MAX_LEN and len(set(steps)) > 2, steps


# -- options passed through from the CLI ---------------------------------------------------


def test_max_len_caps_every_caption(capsys, bundle, squares, tmp_path):
    code, _, _ = caption(capsys, squares, "--out", tmp_path / "full.jsonl", "--model", bundle)
    assert code == ExitCode.OK
    full = jsonl(tmp_path / "full.jsonl")
    assert max(len(r["caption"].split()) for r in full) > 2  # so the cap below shows
    code, _, _ = caption(
        capsys, squares, "--out", tmp_path / "capped.jsonl", "--model", bundle, "--max-len", "2"
    )
    capped = jsonl(tmp_path / "capped.jsonl")
    assert code == ExitCode.OK and len(capped) == len(full)
    assert all(len(r["caption"].split()) <= 2 for r in capped)
    # A caption cut at the limit is flagged and begins as the full one does (greedy).
    for long, short in zip(full, capped):
        words = short["caption"].split()
        assert long["caption"].split()[: len(words)] == words
        if len(long["caption"].split()) > 2:
            assert short["truncated"] is True


def keys_of(path) -> list[str]:
    return [row["key"] for row in read_csv(path)]


def test_glob_selects_files_in_folders(capsys, bundle, photos, tmp_path):  # noqa: F811
    out = tmp_path / "png.csv"
    code, _, _ = caption(capsys, photos, "--out", out, "--model", bundle, "--glob", "*.png")
    assert code == ExitCode.OK  # broken.jpg is not selected
    assert keys_of(out) == [str(photos / "a.png"), str(photos / "nested/deeper/c.png")]


def test_no_recursive_stays_in_the_folder(capsys, bundle, photos, tmp_path):  # noqa: F811
    out = tmp_path / "top.csv"
    code, _, _ = caption(capsys, photos, "--out", out, "--model", bundle, "--no-recursive")
    assert code == ExitCode.SOME_FAILED  # broken.jpg
    assert keys_of(out) == [str(photos / n) for n in ("a.png", "b.jpg", "broken.jpg")]


def test_overwrite_sidecars_replaces_existing_txt(capsys, bundle, squares, tmp_path):
    (squares / "0.txt").write_text("my own caption\n")
    journal = tmp_path / "journal.jsonl"
    args = (squares, "--format", "txt", "--model", bundle, "-q")
    code, _, _ = caption(capsys, *args, "--out", journal)
    assert code == ExitCode.SOME_FAILED
    refused = {r["key"]: r for r in jsonl(journal)}[str(squares / "0.png")]
    assert refused["status"] == "error" and "--overwrite-sidecars" in refused["error"]
    assert (squares / "0.txt").read_text() == "my own caption\n"

    code, _, _ = caption(capsys, *args, "--out", tmp_path / "j2.jsonl", "--overwrite-sidecars")
    assert code == ExitCode.OK
    row = {r["key"]: r for r in jsonl(tmp_path / "j2.jsonl")}[str(squares / "0.png")]
    assert row["status"] == "ok"
    assert (squares / "0.txt").read_text() == row["caption"] + "\n"


def test_quiet_hides_progress_model_line_and_summary(capsys, bundle, squares, tmp_path):
    code, _, err = caption(capsys, squares, "--out", tmp_path / "a.csv", "--model", bundle)
    assert code == ExitCode.OK and "8 captioned, 0 failed" in err  # what -q hides
    code, out, err = caption(capsys, squares, "--out", tmp_path / "b.csv", "--model", bundle, "-q")
    assert code == ExitCode.OK and (out, err) == ("", "")
    assert len(read_csv(tmp_path / "b.csv")) == 8


def test_debug_adds_the_traceback_and_keeps_the_exit_code(capsys, squares, tmp_path):
    args = ["caption", squares, "--out", tmp_path / "o.csv", "--model", tmp_path / "no-bundle"]
    code, _, err = run_cli(capsys, *args)
    assert code == ExitCode.FATAL and "Traceback" not in err
    assert err.startswith("capbatch: error: ") and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "--debug", *args)
    assert code == ExitCode.FATAL
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("capbatch: error: ")


# -- capbatch info verifies what it says it verified ---------------------------------------


@pytest.mark.parametrize("name", ["encoder.onnx", "decoder_step.onnx", "vocab.json"])
def test_info_on_a_tampered_bundle_is_exit_2_and_never_ok(capsys, bundle, tmp_path, name):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    code, out, _ = run_cli(capsys, "info", "--model", copy)
    assert code == ExitCode.OK and "verified     sha256 of every file ok" in out
    data = bytearray((copy / name).read_bytes())
    data[-2] ^= 0x01  # one bit, in the last tensor's bytes / the vocab's last word
    (copy / name).write_bytes(bytes(data))
    code, out, err = run_cli(capsys, "info", "--model", copy)
    assert code == ExitCode.FATAL
    assert f"{name}: sha256 mismatch" in err
    assert "ok" not in out.split() and "verified" not in out


# -- an inference failure on a batch becomes error rows ------------------------------------


def test_onnxruntime_failure_on_a_batch_gives_error_rows(
    capsys, bundle, squares, tmp_path, monkeypatch
):
    from onnxruntime.capi import onnxruntime_inference_collection as collection
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    real_run = collection.Session.run
    calls = {"encoder": 0}

    def failing_second_encoder_batch(self, output_names, feeds, *args, **kwargs):
        if "images" in feeds:
            calls["encoder"] += 1
            if calls["encoder"] == 2:
                raise RuntimeException(
                    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : injected: out of memory\nsecond line"
                )
        return real_run(self, output_names, feeds, *args, **kwargs)

    monkeypatch.setattr(collection.Session, "run", failing_second_encoder_batch)
    out = tmp_path / "rows.jsonl"
    code, _, err = caption(
        capsys, squares, "--out", out, "--model", bundle, "--batch-size", "3", "--workers", "1"
    )
    assert code == ExitCode.SOME_FAILED
    rows = jsonl(out)
    assert [r["key"] for r in rows] == [str(squares / f"{i}.png") for i in range(8)]
    assert [r["status"] for r in rows] == ["ok"] * 3 + ["error"] * 3 + ["ok"] * 2
    for row in rows[3:6]:
        assert row["error"] == (
            "inference failed: RuntimeException: [ONNXRuntimeError] : 6 : "
            "RUNTIME_EXCEPTION : injected: out of memory"
        )
        assert (row["width"], row["height"], row["caption"]) == (32, 32, None)
    assert "5 captioned, 3 failed" in err


# -- signal handlers: installed for the run, restored after it -----------------------------


def test_signal_handlers_are_the_previous_objects_after_a_run(
    capsys, bundle, squares, tmp_path, monkeypatch
):
    import signal

    from capbatch.engines import local

    def mine_int(signum, frame):  # pragma: no cover - never called
        pass

    def mine_term(signum, frame):  # pragma: no cover - never called
        pass

    during = {}
    real_run = local.run_captioning

    def spy(*args, **kwargs):
        during["int"], during["term"] = (
            signal.getsignal(signal.SIGINT),
            signal.getsignal(signal.SIGTERM),
        )
        return real_run(*args, **kwargs)

    monkeypatch.setattr(local, "run_captioning", spy)
    previous = signal.signal(signal.SIGINT, mine_int), signal.signal(signal.SIGTERM, mine_term)
    try:
        code, _, _ = caption(capsys, squares, "--out", tmp_path / "o.csv", "--model", bundle, "-q")
        after = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    assert code == ExitCode.OK
    assert during["int"] is not mine_int and during["term"] is not mine_term  # the run's own
    assert during["int"] is during["term"]
    assert after[0] is mine_int and after[1] is mine_term


def test_stop_on_signals_first_sets_the_event_second_aborts_then_restores():
    import os
    import signal
    import threading

    from capbatch.job import stop_on_signals

    def mine(signum, frame):  # pragma: no cover - never called
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    before_int = signal.getsignal(signal.SIGINT)
    stop = threading.Event()
    try:
        with pytest.raises(KeyboardInterrupt):
            with stop_on_signals(stop):
                os.kill(os.getpid(), signal.SIGTERM)  # handled before kill() returns
                assert stop.is_set()
                os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is before_int
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_main_maps_an_abort_to_exit_3(capsys, monkeypatch):
    from capbatch import info_cli  # noqa: F401 (registers the command patched below)

    def abort(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("capbatch.bundle.import_onnxruntime", abort)
    assert main(["info"]) == ExitCode.INTERRUPTED
    assert capsys.readouterr().err == "capbatch: interrupted\n"


# -- the remaining options reach what they set ---------------------------------------------


def test_beam_size_reaches_the_decoder(capsys, ending_bundle, squares, tmp_path):
    from capbatch.captioner import Captioner

    for beam in (1, 3):
        out = tmp_path / f"beam{beam}.jsonl"
        args = ("--out", out, "--model", ending_bundle, "-q", "--beam-size", str(beam))
        assert caption(capsys, squares, *args)[0] == ExitCode.OK
    greedy, beam = jsonl(tmp_path / "beam1.jsonl"), jsonl(tmp_path / "beam3.jsonl")
    expected = Captioner(ending_bundle, beam_size=3).caption(sorted(squares.glob("*.png")))
    assert [r["caption"] for r in beam] == [r.caption for r in expected]
    assert [r["caption"] for r in beam] != [r["caption"] for r in greedy]  # so it shows


def test_threads_reach_every_onnxruntime_session(capsys, bundle, squares, tmp_path, monkeypatch):
    import onnxruntime

    from capbatch.providers import cpu_thread_count

    threads = cpu_thread_count() + 1  # not the default
    seen = []
    real = onnxruntime.InferenceSession

    def spy(*args, **kwargs):
        seen.append(kwargs["sess_options"].intra_op_num_threads)
        return real(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    args = ("--out", tmp_path / "o.csv", "--model", bundle, "-q", "--threads", str(threads))
    assert caption(capsys, squares, *args)[0] == ExitCode.OK
    assert seen == [threads, threads]  # encoder and decoder step


def test_workers_size_the_decode_pool(capsys, bundle, squares, tmp_path, monkeypatch):
    from capbatch.engines import local
    from capbatch.providers import cpu_thread_count

    workers = cpu_thread_count() + 1
    sizes = []
    real = local.ThreadPoolExecutor

    def spy(max_workers, **kwargs):
        sizes.append(max_workers)
        return real(max_workers, **kwargs)

    monkeypatch.setattr(local, "ThreadPoolExecutor", spy)
    args = ("--out", tmp_path / "o.csv", "--model", bundle, "-q", "--workers", str(workers))
    assert caption(capsys, squares, *args)[0] == ExitCode.OK
    assert sizes == [workers]


def test_retry_errors_redoes_only_the_failed_keys(capsys, bundle, squares, tmp_path):
    (squares / "9.png").write_bytes(b"not a png")
    out = tmp_path / "o.jsonl"
    args = (squares, "--out", out, "--model", bundle, "-q")
    assert caption(capsys, *args)[0] == ExitCode.SOME_FAILED
    first = {r["key"]: r for r in jsonl(out)}
    assert first[str(squares / "9.png")]["status"] == "error"
    (squares / "9.png").write_bytes(png(9))  # repaired
    assert caption(capsys, *args, "--resume")[0] == ExitCode.OK  # the error row stays
    assert jsonl(out) == list(first.values())
    assert caption(capsys, *args, "--retry-errors")[0] == ExitCode.OK
    rows = jsonl(out)
    assert sorted(r["key"] for r in rows) == sorted(first)  # each key once
    assert all(r["status"] == "ok" for r in rows)
    assert [r for r in rows if r["key"] != str(squares / "9.png")] == [
        r for k, r in first.items() if k != str(squares / "9.png")
    ]
