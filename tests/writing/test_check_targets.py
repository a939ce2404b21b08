"""preflight.check_targets: every path a run writes, checked together before the model
loads (capbatch/preflight.py), by the exact words of each refusal."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from capbatch.errors import UsageError
from capbatch.job import RunOptions, RunSummary, check_same_producer, engine_only_given
from capbatch.option_spec import option
from capbatch.output import OutputSettings, open_output
from capbatch.preflight import check_targets
from capbatch.rows import Row


def refusal(call) -> str:
    with pytest.raises(UsageError) as caught:
        call()
    return str(caught.value)


def options(tmp_path, **fields) -> RunOptions:
    return RunOptions(**{"inputs": (str(tmp_path / "photos"),), "out": tmp_path / "c.csv", **fields})


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"png")
    return folder


def test_a_report_needs_a_file_output(tmp_path, photos):
    assert refusal(lambda: check_targets(options(tmp_path, out="-"), report=tmp_path / "r.html")) == (
        "--report needs the rows in a file: not with --out -"
    )
    check_targets(options(tmp_path, out="-"), stats_json=tmp_path / "s.json")


def test_each_side_file_is_named_in_its_words(tmp_path, photos):
    assert refusal(lambda: check_targets(options(tmp_path), stats_json=tmp_path)) == (
        f"--stats-json {tmp_path} is a directory; name the JSON file to write"
    )
    assert refusal(lambda: check_targets(options(tmp_path), report=tmp_path)) == (
        f"--report {tmp_path} is a directory; name the HTML file to write"
    )


def test_the_output_may_not_be_an_input_but_may_be_new_inside_the_inputs(tmp_path, photos):
    image = photos / "a.png"
    assert refusal(lambda: check_targets(options(tmp_path, out=image))) == (
        f"--out {image} is an input of this run; name another file"
    )
    check_targets(options(tmp_path, out=photos / "captions.csv"))  # a new file: not an input


def test_folders_on_one_path_are_refused(tmp_path, photos):
    shared = tmp_path / "maps"
    settings = OutputSettings(sidecar_dir=shared)
    run = options(tmp_path, out=tmp_path / "j.jsonl", fmt="txt", attention_dir=shared,
                  output_settings=settings)  # fmt: skip
    assert refusal(lambda: check_targets(run)) == (
        f"--sidecar-dir {shared} is the same file as --attention-dir"
    )


@pytest.mark.parametrize("where", ["out", "attention_dir", "sidecar_dir"])
def test_a_probe_finds_what_a_dry_run_does_not_ask(tmp_path, photos, where):
    place = {
        "out": {"out": Path("/proc/c.jsonl")},
        "attention_dir": {"attention_dir": Path("/proc/maps")},
        "sidecar_dir": {
            "out": tmp_path / "j.jsonl", "fmt": "txt",
            "output_settings": OutputSettings(sidecar_dir=Path("/proc/side")),
        },
    }[where]  # fmt: skip
    run = options(tmp_path, **place)
    check_targets(run, probe=False)  # os.access says root may
    assert "cannot write in /proc: " in refusal(lambda: check_targets(run))  # probe by default


def test_side_files_are_probed_unless_told_not_to(tmp_path, photos):
    for name in ("stats_json", "report"):
        check_targets(options(tmp_path), **{name: Path("/proc/x")}, probe=False)
        assert "cannot write in /proc" in refusal(
            lambda name=name: check_targets(options(tmp_path), **{name: Path("/proc/x")})
        )


# -- what a resume must match -------------------------------------------------------------


def row(key, model, encoder, status="ok"):
    caption, error = ("a cube", None) if status == "ok" else (None, "bad")
    return Row(key, key, caption, -0.5, status, error, 4, 4, model, encoder=encoder)


def output_with(tmp_path, *rows):
    output = open_output(tmp_path / "o.jsonl", None)
    output.begin(append=False)
    output.write(list(rows))
    output.close()
    return output


def test_rows_of_an_older_version_are_matched_on_the_model_only(tmp_path):
    output = output_with(tmp_path, row("a", "m", None), row("b", "m", "onnxruntime-f32"))
    check_same_producer(output, "m", "onnxruntime-f32")
    output = output_with(tmp_path, row("a", "m", None))
    assert refusal(lambda: check_same_producer(output, "other", "onnxruntime-f32")) == (
        f"{output.path} holds captions of model m, encoder (not recorded); this run uses model "
        "other, encoder onnxruntime-f32: resume with the same model and encoder options, or "
        "pass --overwrite to start over"
    )


def test_every_producer_is_checked_not_only_the_first(tmp_path):
    output = output_with(
        tmp_path, row("a", "m", "onnxruntime-f32"), row("b", "m", "openvino-bf16"),
        row("c", "z", None, status="error"),  # error rows name no producer
    )  # fmt: skip
    assert output.producers() == {("m", "onnxruntime-f32"), ("m", "openvino-bf16")}
    assert "encoder openvino-bf16; this run uses" in refusal(
        lambda: check_same_producer(output, "m", "onnxruntime-f32")
    )


def test_the_summary_names_the_first_encoder_a_row_names():
    summary = RunSummary(out=Path("o.csv"), fmt="csv")
    summary.count([row("a", "m", None, status="error"), row("b", "m", "openvino-bf16")])
    summary.count([row("c", "m", "onnxruntime-f32")])
    assert (summary.model_id, summary.encoder) == ("m", "openvino-bf16")


@dataclasses.dataclass(frozen=True)
class Inner:
    shards: int = option(1, "Shards.", engine=("ray", "why"))


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Inner = dataclasses.field(default_factory=Inner)
    workers: int = option(1, "Workers.", engine=("local", "because"))


def test_engine_only_options_are_found_in_nested_parts():
    assert engine_only_given(Outer()) == {}
    assert engine_only_given(Outer(Inner(3), 2)) == {
        "--shards": ("ray", "why"), "--workers": ("local", "because"),
    }  # fmt: skip
