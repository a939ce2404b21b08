"""tools/mutation_plan.py, the mutation job over capbatch/: the plan names tests
that exist, puts every module with code in exactly one run or excludes it with a
reason, and its total counts as tools/mutation.py does."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Registered before it runs: its dataclasses look their module up in sys.modules.
_spec = importlib.util.spec_from_file_location(
    "mutation_plan", REPO / "tools" / "mutation_plan.py"
)
plan = importlib.util.module_from_spec(_spec)
sys.modules["mutation_plan"] = plan
_spec.loader.exec_module(plan)


def test_every_test_the_plan_names_exists():
    missing = sorted(
        {test.split("::")[0] for entry in plan.RUNS.values() for test in entry.tests}
        - {str(path.relative_to(REPO)) for path in (REPO / "tests").rglob("test_*.py")}
    )
    assert missing == []


def has_functions(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(node, ast.FunctionDef) for node in ast.walk(tree))


def test_every_module_with_code_is_in_one_run_or_excluded_with_a_reason():
    owner = plan.planned()  # raises when a module is in two runs
    for path in plan.runtime_modules():
        if has_functions(REPO / path):
            assert (path in owner) != (path in plan.EXCLUDED), path
    assert all(plan.source_file(path).is_file() for path in owner)  # no stale names
    assert all(reason for reason in plan.EXCLUDED.values())


def test_the_total_counts_caught_over_tested_and_only_the_owning_runs_figures(tmp_path):
    (tmp_path / "decoding.json").write_text(json.dumps({
        "capbatch.decoding": {"counts": {"killed": 80, "timeout": 5, "segfault": 1,
                                         "survived": 10, "no tests": 4, "skipped": 7, "hung": 3}},
        # A module another run owns: its figure here does not count.
        "capbatch.job": {"counts": {"killed": 1}},
    }))  # fmt: skip
    (tmp_path / "core.json").write_text(json.dumps({
        "capbatch.job": {"counts": {"killed": 9, "survived": 1}},
    }))  # fmt: skip
    rows, total = plan.totals(tmp_path)
    by_module = {row["module"]: row for row in rows}
    assert by_module["capbatch/decoding.py"] == {
        "module": "capbatch/decoding.py", "run": "decoding", "mutants": 100, "caught": 86
    }  # fmt: skip
    assert by_module["capbatch/job.py"]["run"] == "core"
    assert by_module["capbatch/job.py"]["mutants"] == 10
    assert by_module["capbatch/engines/ray_driver.py"]["note"].startswith("excluded: ")
    assert "run core not in" in by_module["capbatch/stats.py"]["note"]
    assert total == {"mutants": 110, "caught": 95, "score": 86.4}


def test_the_run_command_refuses_names_not_in_the_plan(capsys):
    with pytest.raises(SystemExit):
        plan.main(["run", "no-such-run"])
    assert "name runs of the plan" in capsys.readouterr().err


def test_a_hung_mutant_is_left_out_of_the_score_and_a_crash_counts_as_caught():
    _spec = importlib.util.spec_from_file_location("mutation", REPO / "tools" / "mutation.py")
    mutation = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(mutation)
    name = "capbatch.decoding.x_greedy__mutmut_"
    statuses = {f"{name}1": "killed", f"{name}2": "segfault", f"{name}3": "survived",
                f"{name}4": "segfault"}  # fmt: skip
    report = mutation.summarise(statuses, {f"{name}2"})["capbatch.decoding"]
    assert report["counts"] == {"killed": 1, "hung": 1, "survived": 1, "segfault": 1}
    assert report["score"] == 66.7  # (killed + crash) / (4 - hung)
    assert report["survivors"] == [f"{name}3: survived"]
