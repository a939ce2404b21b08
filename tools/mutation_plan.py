"""The mutation job over all of capbatch/, as targeted runs, and its total.

    python tools/mutation_plan.py list
    python tools/mutation_plan.py run decoding core --work runs/mut/plan
    python tools/mutation_plan.py run --all --results benchmarks/results/mutation   (hours)
    python tools/mutation_plan.py total --results benchmarks/results/mutation

One mutmut run over capbatch/ with the whole suite as every mutant's test
selection takes a day on 2 cores (a mutant of a function the crash and fuzz
tests cover costs a minute); most of that is tests that cannot notice the
mutant. So the job is a plan of runs, each a few modules against the tests
written for them (tools/mutation.py does one run), every module of
capbatch/ in exactly one run or excluded with its reason. A run writes
RESULTS/NAME.json; `total` reads them all, checks that every module is
measured or excluded, and prints the table and the score over capbatch/
(caught over tested, as tools/mutation.py counts). A narrower test
selection can only lower a score: the total is a lower bound of what the
whole suite would score.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL = 85.0


@dataclass(frozen=True)
class Run:
    modules: tuple[str, ...]
    tests: tuple[str, ...]


def run(modules: str, tests: str) -> Run:
    return Run(tuple(modules.split()), tuple(tests.split()))


CLI_TESTS = (
    "tests/cli/test_caption.py tests/cli/test_caption_options.py tests/cli/test_caption_habits.py "
    "tests/output/test_sidecars.py tests/cli/test_trust_signals.py "
    "tests/reliability/test_output_hardening.py tests/reliability/test_model_integrity.py "
    "tests/reliability/test_crash.py tests/reliability/test_corpus.py "
)
RAY_UNIT_TESTS = " ".join(
    f"tests/engines/test_ray.py::{name}"
    for name in (
        "test_plan_shards_archives_alone_runs_of_shard_size",
        "test_output_layout",
        "test_shard_with_missing_rows_is_failed_not_done",
        "test_jobs_the_cluster_cannot_schedule_are_refused",
        "test_ray_options_without_engine_ray_are_refused",
        "test_engine_ray_without_ray_says_what_to_install",
    )
)

RUNS: dict[str, Run] = {
    "decoding": run(
        "capbatch/decoding.py", "tests/runtime/test_decoding.py tests/runtime/test_decoding_options.py"
    ),
    "core": run(
        "capbatch/rows.py capbatch/job.py capbatch/stats.py capbatch/preflight.py "
        "capbatch/vocab.py capbatch/errors.py capbatch/output/settings.py capbatch/batch_rows.py",
        "tests/runtime/test_job.py tests/engines/test_local.py tests/cli/test_caption_habits.py "
        "tests/cli/test_trust_signals.py tests/output/test_round_trips.py tests/cli/test_caption.py "
        "tests/runtime/test_decoding.py tests/cli/test_caption_options.py tests/runtime/test_stats.py "
        "tests/runtime/test_job_checks.py tests/output/test_open.py tests/output/test_lines.py "
        "tests/engines/test_ray_plan.py tests/cli/test_settings_errors.py "
        "tests/writing/test_side_outputs.py tests/resume/test_resume_matches.py "
        "tests/writing/test_check_targets.py",
    ),
    "sources": run(
        "capbatch/sources.py",
        "tests/runtime/test_sources_odd_inputs.py tests/runtime/test_sources.py tests/engines/test_local.py "
        "tests/reliability/test_bounds.py",
    ),
    "archives": run(
        "capbatch/archives.py",
        "tests/runtime/test_sources.py tests/runtime/test_sources_odd_inputs.py tests/reliability/test_bounds.py "
        "tests/reliability/test_fuzz.py tests/cli/test_caption.py tests/runtime/test_archives.py",
    ),
    "image_decode": run(
        "capbatch/image_decode.py",
        "tests/runtime/test_image_decode.py tests/reliability/test_bounds.py tests/reliability/test_corpus.py "
        "tests/reliability/test_fuzz.py tests/runtime/test_preprocess.py "
        "tests/runtime/test_image_decode_reasons.py",
    ),
    "image_limits": run(
        "capbatch/image_limits.py",
        "tests/runtime/test_image_decode.py tests/reliability/test_bounds.py tests/reliability/test_corpus.py "
        "tests/reliability/test_fuzz.py tests/runtime/test_preprocess.py "
        "tests/runtime/test_image_limits.py tests/runtime/test_image_decode_reasons.py",
    ),
    "preprocess": run(
        "capbatch/preprocess.py",
        "tests/runtime/test_preprocess.py tests/runtime/test_image_decode.py tests/reliability/test_bounds.py "
        "tests/reliability/test_corpus.py tests/runtime/test_preprocess_exact.py",
    ),
    "integrity": run(
        "capbatch/integrity.py capbatch/onnx_scan.py",
        "tests/runtime/test_bundle.py tests/reliability/test_model_integrity.py tests/runtime/test_integrity.py "
        "tests/runtime/test_onnx_scan.py",
    ),
    "manifest": run(
        "capbatch/manifest.py",
        "tests/runtime/test_bundle.py tests/reliability/test_model_integrity.py tests/runtime/test_manifest.py",
    ),
    "bundle": run(
        "capbatch/bundle.py capbatch/graph_io.py",
        "tests/runtime/test_bundle.py tests/reliability/test_model_integrity.py tests/runtime/test_bundle_sessions.py",
    ),
    "domain": run(
        "capbatch/providers.py capbatch/domain.py",
        "tests/runtime/test_providers.py tests/runtime/test_domain_refusals.py tests/runtime/test_bundle.py "
        "tests/runtime/test_precision_gate.py tests/runtime/test_domain.py tests/runtime/test_domain_shipped.py",
    ),
    "encoder_runtime": run(
        "capbatch/encoder_runtime.py",
        "tests/runtime/test_precision_gate.py tests/runtime/test_close_calls.py tests/runtime/test_openvino.py "
        "tests/runtime/test_encoder_runtime.py",
    ),
    "openvino": run(
        "capbatch/openvino_backend.py",
        "tests/runtime/test_openvino.py tests/runtime/test_encoder_runtime.py tests/runtime/test_precision_gate.py "
        "tests/runtime/test_openvino_session.py",
    ),
    "close_calls": run(
        "capbatch/close_calls.py", "tests/runtime/test_close_calls.py tests/runtime/test_close_calls_redo.py"
    ),
    "captioner": run(
        "capbatch/captioner.py capbatch/__init__.py",
        "tests/runtime/test_captioner.py tests/runtime/test_close_calls.py tests/runtime/test_close_calls_redo.py "
        "tests/cli/test_trust_signals.py tests/cli/test_caption.py tests/runtime/test_captioner_results.py "
        "tests/runtime/test_package_init.py",
    ),
    "engine_local": run(
        "capbatch/engines/local.py",
        "tests/engines/test_local.py tests/cli/test_caption_options.py tests/cli/test_caption.py "
        "tests/cli/test_caption_habits.py tests/reliability/test_output_hardening.py "
        "tests/output/test_sidecars.py tests/output/test_round_trips.py tests/cli/test_trust_signals.py "
        "tests/output/test_stream.py tests/engines/test_local_lifecycle.py "
        "tests/cli/test_caption_run.py tests/request/test_caption_request.py "
        "tests/resume/test_resume_matches.py",
    ),
    "ray_plan": run(
        "capbatch/engines/ray_plan.py capbatch/engines/ray_options.py",
        f"{RAY_UNIT_TESTS} tests/engines/test_ray_plan.py",
    ),
    "attention_maps": run(
        "capbatch/attention_maps.py",
        "tests/engines/test_local_lifecycle.py tests/engines/test_local.py tests/report/test_report.py "
        "tests/output/test_sidecars.py tests/runtime/test_attention_maps.py",
    ),
    "cli": run(
        "capbatch/cli.py capbatch/output/__init__.py",
        "tests/cli/test_run_app.py tests/output/test_open.py tests/cli/test_caption_options.py "
        "tests/cli/test_caption_habits.py tests/output/test_round_trips.py tests/output/test_stream.py "
        "tests/cli/test_caption.py tests/output/test_sidecars.py",
    ),
    "caption_cli": run(
        "capbatch/caption_cli.py capbatch/caption_run.py",
        f"{CLI_TESTS} tests/cli/test_caption_run.py tests/cli/test_caption_command.py",
    ),
    "request": run(
        "capbatch/request.py capbatch/option_spec.py capbatch/cli_options.py capbatch/api.py "
        "capbatch/resume_facts.py capbatch/engines/__init__.py",
        "tests/request/test_caption_request.py tests/request/test_option_declarations.py "
        "tests/resume/test_resume_matches.py "
        "tests/cli/test_caption_run.py tests/cli/test_caption_command.py tests/cli/test_caption.py "
        "tests/cli/test_caption_options.py tests/runtime/test_job.py tests/runtime/test_job_checks.py",
    ),
    "write_targets": run(
        "capbatch/write_targets.py",
        "tests/writing/test_side_outputs.py tests/writing/test_write_file.py "
        "tests/writing/test_write_targets.py tests/cli/test_caption_run.py "
        "tests/cli/test_caption_command.py",
    ),
    "info_cli": run(
        "capbatch/info_cli.py",
        "tests/cli/test_caption.py tests/cli/test_caption_habits.py tests/cli/test_caption_options.py "
        "tests/reliability/test_model_integrity.py tests/cli/test_info_command.py",
    ),
    "output_lines": run(
        "capbatch/output/lines.py capbatch/output/parquet.py",
        "tests/output/test_lines.py tests/output/test_parquet.py tests/output/test_round_trips.py "
        "tests/output/test_stream.py tests/output/test_durable.py "
        "tests/reliability/test_output_hardening.py tests/engines/test_local.py tests/runtime/test_job.py",
    ),
    "output_stream": run(
        "capbatch/output/stream.py",
        "tests/output/test_stream.py tests/cli/test_caption_habits.py tests/engines/test_local_live.py "
        "tests/output/test_round_trips.py",
    ),
    "output_sidecars": run(
        "capbatch/output/sidecars.py",
        "tests/output/test_sidecars.py tests/output/test_round_trips.py tests/cli/test_caption.py "
        "tests/reliability/test_output_hardening.py tests/cli/test_caption_options.py",
    ),
    "output_durable": run(
        "capbatch/output/durable.py",
        "tests/output/test_durable.py tests/output/test_round_trips.py "
        "tests/reliability/test_output_hardening.py tests/engines/test_local.py "
        "tests/output/test_sidecars.py tests/reliability/test_unwritable_outputs.py "
        "tests/writing/test_write_file.py tests/writing/test_side_outputs.py",
    ),
    "output_lock": run(
        "capbatch/output_lock.py",
        "tests/output/test_lock.py tests/output/test_round_trips.py tests/engines/test_local.py "
        "tests/reliability/test_output_hardening.py tests/cli/test_caption.py",
    ),
    "report_summary": run(
        "capbatch/report/summary.py",
        "tests/report/test_report.py tests/cli/test_trust_signals.py tests/report/test_summary.py",
    ),
    "report_images": run(
        "capbatch/report/images.py",
        "tests/report/test_report.py tests/cli/test_trust_signals.py tests/report/test_images.py",
    ),
    "report": run(
        "capbatch/report/build.py capbatch/report/rows.py capbatch/report/attention.py",
        "tests/report/test_report.py tests/report/test_summary.py "
        "tests/report/test_images.py tests/report/test_build.py "
        "tests/report/test_rows.py tests/report/test_attention.py",
    ),
    "report_cli": run(
        "capbatch/report_cli.py",
        "tests/report/test_report.py tests/cli/test_report_command.py "
        "tests/writing/test_side_outputs.py",
    ),
    "export_cli": run(
        "capbatch/export_cli.py",
        "tests/export/test_export_cli.py tests/export/test_domain_stats.py tests/cli/test_export_command.py",
    ),
    "export_validate": run(
        "capbatch/export/validate.py",
        "tests/export/test_export.py tests/export/test_export_cli.py tests/export/test_validate.py",
    ),
}

# Modules no run mutates, and why (files without functions have no mutants at all).
EXCLUDED = {
    "capbatch/engines/ray_driver.py": "what runs in Ray's workers is invisible to mutmut, and "
    "each driver-side mutant run starts Ray and hits mutmut's timeout (docs/testing.md); "
    "tests/engines/test_ray.py runs it end to end",
    "capbatch/engines/ray_stages.py": "as ray_driver.py",
}


def module_name(path: str) -> str:
    """capbatch/output/__init__.py -> capbatch.output (mutmut's module names)."""
    name = path.removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def source_file(path: str) -> Path:
    """Where a planned module is in the checkout: export/ installs as capbatch/export."""
    return (
        REPO / path.removeprefix("capbatch/")
        if path.startswith("capbatch/export/")
        else REPO / path
    )


def runtime_modules() -> list[str]:
    return sorted(
        str(path.relative_to(REPO))
        for path in (REPO / "capbatch").rglob("*.py")
        if "models" not in path.parts
    )


def planned() -> dict[str, str]:
    """module path -> the run that mutates it (each module in one run)."""
    owner: dict[str, str] = {}
    for name, entry in RUNS.items():
        for module in entry.modules:
            if module in owner:
                raise SystemExit(f"{module} is in runs {owner[module]} and {name}")
            owner[module] = name
    return owner


def run_plan(names: list[str], results: Path, max_children: int, work: Path | None) -> int:
    results.mkdir(parents=True, exist_ok=True)
    for name in names:
        entry = RUNS[name]
        command = [sys.executable, str(REPO / "tools" / "mutation.py")]
        for module in entry.modules:
            command += ["--module", module]
        for test in entry.tests:
            command += ["--tests", test]
        command += ["--max-children", str(max_children), "--json", str(results / f"{name}.json")]
        if work is not None:
            # Kept for `mutmut show NAME` there; a fresh copy each time.
            shutil.rmtree(work / name, ignore_errors=True)
            command += ["--keep", str(work / name)]
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        code = subprocess.call(command, cwd=REPO)
        if code:
            return code
    return 0


def totals(results: Path) -> tuple[list[dict], dict]:
    """Per-module rows (measured, excluded or missing) and the total."""
    measured: dict[str, dict] = {}
    for report in sorted(results.glob("*.json")):
        owned = {module_name(path) for path in RUNS[report.stem].modules}
        for module, entry in json.loads(report.read_text(encoding="utf-8")).items():
            if module not in owned:
                continue  # another run's figure for it is the one that counts
            counts = entry["counts"]
            tested = sum(counts.values()) - counts.get("skipped", 0) - counts.get("hung", 0)
            caught = counts.get("killed", 0) + counts.get("timeout", 0) + counts.get("segfault", 0)
            measured[module] = {"run": report.stem, "mutants": tested, "caught": caught}
    owner = planned()
    rows = []
    runtime = runtime_modules()
    # Export validation (export/ is capbatch.export once installed) is shown after the
    # runtime, and counted apart from it.
    for path in [*runtime, *sorted(set(owner) - set(runtime))]:
        row = {"module": path, **measured.get(module_name(path), {})}
        if "mutants" not in row:
            if path in EXCLUDED:
                row["note"] = f"excluded: {EXCLUDED[path]}"
            elif path in owner:
                row["note"] = f"no mutants, or run {owner[path]} not in {results}"
            else:
                row["note"] = "in no run (no functions to mutate?)"
        rows.append(row)
    counted = [row for row in rows if row["module"] in runtime]
    mutants = sum(row.get("mutants", 0) for row in counted)
    caught = sum(row.get("caught", 0) for row in counted)
    total = {"mutants": mutants, "caught": caught, "score": round(100 * caught / mutants, 1)}
    return rows, total


def print_total(results: Path) -> int:
    rows, total = totals(results)
    print("| module | run | mutants | caught | score |")
    print("|---|---|---|---|---|")
    for row in rows:
        if "mutants" in row:
            score = 100 * row["caught"] / row["mutants"] if row["mutants"] else 100.0
            print(f"| `{row['module']}` | {row['run']} | {row['mutants']} | {row['caught']} "
                  f"| {score:.1f} % |")  # fmt: skip
        else:
            print(f"| `{row['module']}` | - | - | - | {row['note']} |")
    print(f"| **capbatch/ (the runtime, the rows above export/)** | | **{total['mutants']}** "
          f"| **{total['caught']}** | **{total['score']} %** |")  # fmt: skip
    below = [
        r["module"] for r in rows if r.get("mutants") and 100 * r["caught"] / r["mutants"] < GOAL
    ]
    if below:
        print(f"below {GOAL} %: {', '.join(below)}")
    return 0 if total["score"] >= GOAL else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the runs: modules and tests")
    runner = sub.add_parser("run", help="run some (or --all) of the plan's runs")
    runner.add_argument("names", nargs="*")
    runner.add_argument("--all", action="store_true")
    runner.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "mutation")
    runner.add_argument("--max-children", type=int, default=1)
    runner.add_argument("--work", type=Path, help="keep each run's mutants in WORK/NAME")
    summing = sub.add_parser("total", help="the table and the score over capbatch/")
    summing.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "mutation")
    args = parser.parse_args(argv)
    planned()  # a module in two runs is a mistake in the plan
    if args.command == "list":
        for name, entry in RUNS.items():
            print(f"{name}: {' '.join(entry.modules)}\n    tests: {' '.join(entry.tests)}")
        return 0
    if args.command == "run":
        unknown = [name for name in args.names if name not in RUNS]
        if unknown or not (args.names or args.all):
            parser.error(f"name runs of the plan ({', '.join(RUNS)}) or pass --all")
        names = list(RUNS) if args.all else args.names
        return run_plan(names, args.results, args.max_children, args.work)
    return print_total(args.results)


if __name__ == "__main__":
    sys.exit(main())
