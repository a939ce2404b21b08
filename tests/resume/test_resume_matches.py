"""What a resumed run must share with the run that wrote its output, for both engines
(capbatch/resume_facts.py, capbatch/job.py check_same_producer, capbatch/engines/
ray_plan.py plan_record), and the encoder every row, the header and --stats-json name."""

# ruff: noqa: F811 (the fixtures bundle and photos are imported by name, then requested)

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from capbatch import captioner as captioner_module
from capbatch.captioner import CaptionerArgs
from capbatch.engines.ray_plan import (
    OutputLayout,
    plan_record,
    plan_shards,
    prepare_output,
)
from capbatch.errors import ExitCode, UsageError
from capbatch.job import RunOptions
from capbatch.resume_facts import resume_facts
from capbatch.rows import ROW_FIELDS
from tests.cli.test_caption import bundle, photos, read_csv, run_cli  # noqa: F401 (fixtures)


def caption(capsys, bundle, photos, out, *args):
    return run_cli(capsys, "caption", photos, "--out", out, "--model", bundle, *args)


def test_rows_the_header_and_the_stats_name_the_encoder(capsys, bundle, photos, tmp_path):
    out, stats = tmp_path / "c.csv", tmp_path / "s.json"
    code, _, err = caption(capsys, bundle, photos, out, "--stats-json", stats)
    assert code == ExitCode.SOME_FAILED
    assert "on CPUExecutionProvider, encoder onnxruntime-f32\n" in err
    rows = read_csv(out)
    assert {row["encoder"] for row in rows if row["status"] == "ok"} == {"onnxruntime-f32"}
    assert {row["encoder"] for row in rows if row["status"] == "error"} == {""}
    assert json.loads(stats.read_text())["encoder"] == "onnxruntime-f32"


def test_a_resume_with_nothing_new_still_names_the_encoder(capsys, bundle, photos, tmp_path):
    out, stats = tmp_path / "c.jsonl", tmp_path / "s.json"
    assert caption(capsys, bundle, photos, out, "-q")[0] == ExitCode.SOME_FAILED
    assert caption(capsys, bundle, photos, out, "-q", "--resume", "--stats-json", stats)[0] == 0
    assert json.loads(stats.read_text())["encoder"] == "onnxruntime-f32"


def test_a_local_resume_with_another_encoder_is_refused_before_the_model(
    capsys, bundle, photos, tmp_path, monkeypatch
):
    out = tmp_path / "c.csv"
    assert caption(capsys, bundle, photos, out, "-q")[0] == ExitCode.SOME_FAILED
    before = out.read_bytes()

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(captioner_module.Captioner, "from_args", classmethod(refuse))
    code, _, err = caption(
        capsys, bundle, photos, out, "-q", "--resume",
        "--encoder-runtime", "openvino", "--precision", "bf16",
    )  # fmt: skip
    assert code == ExitCode.FATAL
    assert err.endswith(
        "holds captions of model fake-0, encoder onnxruntime-f32; this run uses model "
        "fake-0, encoder openvino-bf16: resume with the same model and encoder options, "
        "or pass --overwrite to start over\n"
    ), err
    assert out.read_bytes() == before


def test_an_output_of_an_older_version_is_refused_with_the_reason(
    capsys, bundle, photos, tmp_path
):
    out = tmp_path / "old.csv"
    older = [name for name in ROW_FIELDS if name != "encoder"]
    out.write_text(",".join(older) + "\na.png,a.png,x,-0.1,ok,,4,4,m,,,,,\n")
    code, _, err = caption(capsys, bundle, photos, out, "-q", "--resume")
    assert code == ExitCode.FATAL
    assert "was written by an older capbatch whose rows do not name their encoder" in err


def test_resume_facts_come_from_the_declarations():
    facts = resume_facts(CaptionerArgs(), RunOptions(inputs=("x",)))
    assert facts == {
        "beam_size": 1, "max_len": None, "encoder_runtime": "onnxruntime", "precision": "f32",
        "recursive": True, "glob": None,
    }  # fmt: skip


def test_a_newly_marked_option_joins_the_resume_facts():
    from capbatch.option_spec import option

    @dataclasses.dataclass(frozen=True)
    class WithTemperature:
        temperature: float = option(1.0, "Sampling temperature.", resume_must_match=True)
        seed: int = option(0, "Not a caption fact.")

    assert resume_facts(WithTemperature(0.5)) == {"temperature": 0.5}


@pytest.mark.parametrize(
    ("changed", "value"),
    [("precision", "bf16"), ("encoder_runtime", "openvino"), ("beam_size", 3), ("max_len", 9)],
)
def test_a_ray_resume_whose_captioner_options_differ_is_refused(tmp_path, changed, value):
    options = RunOptions(inputs=(str(tmp_path / "a.jpg"),), out=tmp_path / "out.jsonl", resume=True)
    layout = OutputLayout.for_output(options.out, None)
    shards = plan_shards(options, 4)
    first = CaptionerArgs(encoder_runtime="openvino") if changed == "precision" else CaptionerArgs()
    prepare_output(layout, options, plan_record(shards, options, first, "m"))
    layout.shard_file(0).write_text('{"key": "a.jpg", "status": "ok"}\n')  # a row was written
    other = dataclasses.replace(first, **{changed: value})
    with pytest.raises(UsageError, match="the inputs or model options differ"):
        prepare_output(layout, options, plan_record(shards, options, other, "m"))
    # The same options resume.
    prepare_output(layout, options, plan_record(shards, options, first, "m"))


def test_the_ray_plan_records_the_encoder(tmp_path):
    options = RunOptions(inputs=("a.jpg",), out=Path("o.jsonl"))
    args = CaptionerArgs(encoder_runtime="openvino", precision="bf16")
    record = plan_record(plan_shards(options, 2), options, args, "m")
    assert (record["encoder_runtime"], record["precision"]) == ("openvino", "bf16")
