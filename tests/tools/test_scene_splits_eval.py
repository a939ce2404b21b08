"""benchmarks/scene_splits_eval.py: the per-split scoring of a shipped model (torch-free)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scene_splits_eval.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("scene_splits_eval", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(kind: str, objects: list[tuple[str, str, str]], relation=None) -> dict:
    return {
        "kind": kind,
        "facts": {
            "objects": [{"colour": c, "shape": s, "size": z} for c, s, z in objects],
            "relation": relation,
        },
    }


def test_score_counts_errors_kinds_and_single_object_counts(script):
    single = _record("single", [("red", "circle", "small")])
    pair = _record(
        "pair",
        [("red", "circle", "small"), ("blue", "square", "large")],
        {"subject": ["red", "circle"], "predicate": "left of", "object": ["blue", "square"]},
    )
    captions = [
        "a small red circle",
        "two red circles",
        "a red circle",
        "a blue square left of a red circle",
    ]
    result = script.score(captions, [single, single, single, pair])
    assert result["semantic_accuracy"] == 0.5
    assert result["errors"] == {"ok": 2, "count": 1, "relation": 1}
    assert result["accuracy_by_kind"] == {"pair": 0.0, "single": 2 / 3}
    assert result["single_object_scenes"] == 3
    assert result["single_count_right"] == pytest.approx(2 / 3)
    assert result["single_stated_counts"] == {"1": 2, "2": 1}


def test_tiny_run_scores_every_split_with_the_shipped_model(script, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert script.main(["--tiny", "--work", str(tmp_path / "work"), "--out-json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["splits"]) == [label for label, _, _ in script.EVAL_SPLITS]
    for row in report["splits"].values():
        assert row["images"] == 5
        assert sum(row["errors"].values()) == 5
    # the shipped model was trained on style v1: its own test split stays mostly right
    assert report["splits"]["v1 test"]["semantic_accuracy"] >= 0.6
    assert report["model_id"].startswith("scenes-")
    assert "test_renderer" in capsys.readouterr().out
