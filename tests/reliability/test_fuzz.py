"""Short fuzz runs: hypothesis over decode + preprocess and the archive readers.

The long run (>= 100,000 inputs) is `python tools/fuzz_decode.py`; its
result is recorded in docs/reliability.md. These keep the same contract in the
suite: decode raises only InputDecodeError with a one-line reason, archive
readers never raise, never write, and give each key once.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]


def _load_harness():
    spec = importlib.util.spec_from_file_location(
        "fuzz_decode", REPO / "tools" / "fuzz_decode.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fuzz = _load_harness()
IMAGES = fuzz.image_seeds()
ARCHIVES = fuzz.archive_seeds(IMAGES)

# One edit: (kind, position as a fraction of the length, value). Hypothesis shrinks
# a failing input to the fewest, simplest edits.
edits = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "truncate", "insert", "delete"]),
        st.floats(0, 1, allow_nan=False),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=6,
)


def apply_edits(data: bytes, chosen: list[tuple[str, float, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in chosen:
        if not out:
            break
        at = min(int(where * len(out)), len(out) - 1)
        if kind == "flip":
            out[at] ^= 1 << (value % 8)
        elif kind == "set":
            out[at] = value
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = bytes([value]) * (1 + value % 16)
        else:
            del out[at : at + 1 + value % 64]
    return bytes(out)


FUZZ_SETTINGS = settings(
    max_examples=250,
    deadline=None,  # a loaded CI machine; hangs are the long run's watchdog's job
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,  # the same examples every run: a failure reproduces
)


@FUZZ_SETTINGS
@given(name=st.sampled_from(sorted(IMAGES)), chosen=edits)
def test_mutated_images_decode_or_give_one_clear_error(name, chosen):
    data = apply_edits(IMAGES[name], chosen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert fuzz.check_decode(data) in ("ok", "error")


@FUZZ_SETTINGS
@given(name=st.sampled_from(sorted(ARCHIVES)), chosen=edits)
def test_mutated_archives_never_raise_and_never_write(tmp_path_factory, name, chosen):
    scratch = tmp_path_factory.mktemp("fuzz")
    data = apply_edits(ARCHIVES[name], chosen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = fuzz.check_archive(data, name, scratch)
    assert outcome
    assert os.listdir(scratch / "in") == []  # check_archive removed its input; nothing else


def test_the_long_run_harness_runs_briefly():
    # In its own process: the harness's peak-RSS bound is about the fuzz run, not
    # about whatever this pytest process held before (torch tests, bomb files).
    harness = Path(fuzz.__file__)
    done = subprocess.run(
        [sys.executable, str(harness), "--inputs", "600", "--seed", "7", "--per-input-s", "60"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = json.loads(done.stdout)
    assert done.returncode == 0 and summary["passed"], (summary["failures"], done.stderr[-2000:])
    assert summary["failure_count"] == 0 and summary["inputs"] == 600
    outcomes = summary["outcomes"]
    # The mutations reach both sides of the contract, for images and archives.
    assert outcomes.get("image:ok") and outcomes.get("image:error")
    assert any(k.startswith("archive:") and "ok" in k for k in outcomes)
    assert summary["peak_rss_mb"] > 0


def test_harness_catches_a_broken_decoder(monkeypatch):
    # The harness must be able to fail: a decoder that leaks a raw exception.
    def broken(data, spec):
        raise ValueError("boom")

    monkeypatch.setattr(fuzz, "decode_image", broken)
    summary = fuzz.run_fuzz(20, seed=1, archive_share=0.0)
    assert not summary["passed"] and summary["failure_count"] == 20
    assert "boom" in summary["failures"][0]["error"]


@pytest.mark.parametrize("seed", [0, 1])
def test_mutate_is_deterministic_per_seed(seed):
    donors = list(IMAGES.values())
    first = fuzz.mutate(IMAGES["png"], random.Random(seed), donors)
    again = fuzz.mutate(IMAGES["png"], random.Random(seed), donors)
    assert first == again


# -- regressions the long fuzz run found ------------------------------------------------


def test_zip_member_with_an_empty_name_is_skipped_not_a_crash(tmp_path):
    # zipfile's ZipInfo.is_dir() raises IndexError on an empty name; it used to
    # escape iter_sources and end the whole run.
    import io
    import zipfile

    from capbatch.sources import iter_sources

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(zipfile.ZipInfo(""), b"nameless")
        archive.writestr("ok.png", IMAGES["png"])
    (tmp_path / "odd.zip").write_bytes(buffer.getvalue())
    items = list(iter_sources([str(tmp_path / "odd.zip")]))
    assert [(i.key.rsplit("::", 1)[-1], i.error) for i in items] == [("ok.png", None)]


def test_any_reader_failure_ends_the_archive_with_an_error_row(tmp_path, monkeypatch):
    from capbatch import sources

    (tmp_path / "a.tar").write_bytes(ARCHIVES["shard.tar"])

    def breaks_on_the_second_member(self, name):
        if name.startswith("b/"):
            raise IndexError("an unforeseen parser bug")
        return True

    monkeypatch.setattr(sources._Reader, "_wanted_member", breaks_on_the_second_member)
    items = list(sources.iter_sources([str(tmp_path / "a.tar")]))
    assert [(i.key, i.error) for i in items] == [
        (f"{tmp_path / 'a.tar'}::a/1.jpg", None),
        (str(tmp_path / "a.tar"), "corrupt archive: an unforeseen parser bug"),
    ]


def test_the_watchdog_ends_a_hanging_input(tmp_path):
    import subprocess
    import sys

    script = f"""
import importlib.util, time
spec = importlib.util.spec_from_file_location("f", {str(REPO / "tools" / "fuzz_decode.py")!r})
fuzz = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fuzz)
fuzz.decode_image = lambda data, spec: time.sleep(30)
fuzz.run_fuzz(3, per_input_s=0.5, archive_share=0.0, save=fuzz.Path({str(tmp_path)!r}))
print("NOT REACHED")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode != 0 and "NOT REACHED" not in done.stdout
    assert "Timeout" in done.stderr and "check_decode" in done.stderr
    assert (tmp_path / "current-input").stat().st_size > 0  # the culprit is kept
