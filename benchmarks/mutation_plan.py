"""The mutation job over all of capbatch/, as targeted runs, and its total.

    python benchmarks/mutation_plan.py list
    python benchmarks/mutation_plan.py run decoding core --work runs/mut/plan
    python benchmarks/mutation_plan.py run --all --results docs/mutation   (hours)
    python benchmarks/mutation_plan.py total --results docs/mutation

One mutmut run over capbatch/ with the whole suite as every mutant's test
selection takes a day on 2 cores (a mutant of a function the crash and fuzz
tests cover costs a minute); most of that is tests that cannot notice the
mutant. So the job is a plan of runs, each a few modules against the tests
written for them (benchmarks/mutation.py does one run), every module of
capbatch/ in exactly one run or excluded with its reason. A run writes
RESULTS/NAME.json; `total` reads them all, checks that every module is
measured or excluded, and prints the table and the score over capbatch/
(caught over tested, as benchmarks/mutation.py counts). A narrower test
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
    "tests/test_cli_caption.py tests/test_promises_cli.py tests/test_cli_habits.py "
    "tests/test_sidecar_options.py tests/test_trust_signals.py "
    "tests/test_reliability_hardening_outputs.py tests/test_reliability_model.py "
    "tests/test_reliability_crash.py tests/test_reliability_corpus.py "
)
RAY_UNIT_TESTS = " ".join(
    f"tests/test_ray_engine.py::{name}"
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
        "capbatch/decoding.py", "tests/test_decoding.py tests/test_promises_decoding.py"
    ),
    "core": run(
        "capbatch/rows.py capbatch/job.py capbatch/stats.py capbatch/preflight.py "
        "capbatch/vocab.py capbatch/errors.py capbatch/output/settings.py",
        "tests/test_job.py tests/test_pipeline.py tests/test_cli_habits.py "
        "tests/test_trust_signals.py tests/test_writers.py tests/test_cli_caption.py "
        "tests/test_decoding.py tests/test_promises_cli.py tests/test_promises_stats.py "
        "tests/test_promises_job.py tests/test_output_open.py tests/test_output_lines.py "
        "tests/test_ray_plan_promises.py tests/test_settings_errors_promises.py",
    ),
    "sources": run(
        "capbatch/sources.py",
        "tests/test_sources_promises.py tests/test_sources.py tests/test_pipeline.py "
        "tests/test_reliability_bounds.py",
    ),
    "archives": run(
        "capbatch/archives.py",
        "tests/test_sources.py tests/test_sources_promises.py tests/test_reliability_bounds.py "
        "tests/test_reliability_fuzz.py tests/test_cli_caption.py tests/test_archives_promises.py",
    ),
    "image_decode": run(
        "capbatch/image_decode.py",
        "tests/test_decode.py tests/test_reliability_bounds.py tests/test_reliability_corpus.py "
        "tests/test_reliability_fuzz.py tests/test_preprocess.py "
        "tests/test_image_decode_promises.py",
    ),
    "image_limits": run(
        "capbatch/image_limits.py",
        "tests/test_decode.py tests/test_reliability_bounds.py tests/test_reliability_corpus.py "
        "tests/test_reliability_fuzz.py tests/test_preprocess.py "
        "tests/test_image_limits_promises.py tests/test_image_decode_promises.py",
    ),
    "preprocess": run(
        "capbatch/preprocess.py",
        "tests/test_preprocess.py tests/test_decode.py tests/test_reliability_bounds.py "
        "tests/test_reliability_corpus.py tests/test_preprocess_promises.py",
    ),
    "integrity": run(
        "capbatch/integrity.py capbatch/onnx_scan.py",
        "tests/test_bundle.py tests/test_reliability_model.py tests/test_integrity_promises.py "
        "tests/test_onnx_scan_promises.py",
    ),
    "manifest": run(
        "capbatch/manifest.py",
        "tests/test_bundle.py tests/test_reliability_model.py tests/test_manifest_promises.py",
    ),
    "bundle": run(
        "capbatch/bundle.py",
        "tests/test_bundle.py tests/test_reliability_model.py tests/test_bundle_promises.py",
    ),
    "domain": run(
        "capbatch/providers.py capbatch/domain.py",
        "tests/test_providers_promises.py tests/test_domain_promises.py tests/test_bundle.py "
        "tests/test_precision.py tests/test_domain.py tests/test_domain_bundle.py",
    ),
    "encoder_runtime": run(
        "capbatch/encoder_runtime.py",
        "tests/test_precision.py tests/test_close_calls.py tests/test_openvino.py "
        "tests/test_encoder_runtime_promises.py",
    ),
    "openvino": run(
        "capbatch/openvino_backend.py",
        "tests/test_openvino.py tests/test_encoder_runtime_promises.py tests/test_precision.py "
        "tests/test_openvino_promises.py",
    ),
    "close_calls": run(
        "capbatch/close_calls.py", "tests/test_close_calls.py tests/test_close_calls_promises.py"
    ),
    "captioner": run(
        "capbatch/captioner.py capbatch/__init__.py",
        "tests/test_captioner.py tests/test_close_calls.py tests/test_close_calls_promises.py "
        "tests/test_trust_signals.py tests/test_cli_caption.py tests/test_captioner_promises.py "
        "tests/test_package_promises.py",
    ),
    "engine_local": run(
        "capbatch/engines/local.py",
        "tests/test_pipeline.py tests/test_promises_cli.py tests/test_cli_caption.py "
        "tests/test_cli_habits.py tests/test_reliability_hardening_outputs.py "
        "tests/test_sidecar_options.py tests/test_writers.py tests/test_trust_signals.py "
        "tests/test_output_stream.py tests/test_engine_local_promises.py",
    ),
    "ray_plan": run(
        "capbatch/engines/ray_plan.py capbatch/engines/ray_options.py",
        f"{RAY_UNIT_TESTS} tests/test_ray_plan_promises.py",
    ),
    "attention_maps": run(
        "capbatch/attention_maps.py",
        "tests/test_engine_local_promises.py tests/test_pipeline.py tests/test_report.py "
        "tests/test_sidecar_options.py tests/test_attention_maps_promises.py",
    ),
    "cli": run(
        "capbatch/cli.py capbatch/output/__init__.py",
        "tests/test_cli_run_app.py tests/test_output_open.py tests/test_promises_cli.py "
        "tests/test_cli_habits.py tests/test_writers.py tests/test_output_stream.py "
        "tests/test_cli_caption.py tests/test_sidecar_options.py",
    ),
    "caption_cli": run(
        "capbatch/caption_cli.py capbatch/caption_run.py",
        f"{CLI_TESTS} tests/test_caption_run_promises.py tests/test_caption_cli_promises.py",
    ),
    "info_cli": run(
        "capbatch/info_cli.py",
        "tests/test_cli_caption.py tests/test_cli_habits.py tests/test_promises_cli.py "
        "tests/test_reliability_model.py tests/test_info_cli_promises.py",
    ),
    "output_lines": run(
        "capbatch/output/lines.py capbatch/output/parquet.py",
        "tests/test_output_lines.py tests/test_output_parquet.py tests/test_writers.py "
        "tests/test_output_stream.py tests/test_output_durable.py "
        "tests/test_reliability_hardening_outputs.py tests/test_pipeline.py tests/test_job.py",
    ),
    "output_stream": run(
        "capbatch/output/stream.py",
        "tests/test_output_stream.py tests/test_cli_habits.py tests/test_promises_runtime.py "
        "tests/test_writers.py",
    ),
    "output_sidecars": run(
        "capbatch/output/sidecars.py",
        "tests/test_sidecar_options.py tests/test_writers.py tests/test_cli_caption.py "
        "tests/test_reliability_hardening_outputs.py tests/test_promises_cli.py",
    ),
    "output_durable": run(
        "capbatch/output/durable.py",
        "tests/test_output_durable.py tests/test_writers.py "
        "tests/test_reliability_hardening_outputs.py tests/test_pipeline.py "
        "tests/test_sidecar_options.py tests/test_reliability_outputs.py",
    ),
    "output_lock": run(
        "capbatch/output_lock.py",
        "tests/test_output_lock.py tests/test_writers.py tests/test_pipeline.py "
        "tests/test_reliability_hardening_outputs.py tests/test_cli_caption.py",
    ),
    "report_summary": run(
        "capbatch/report/summary.py",
        "tests/test_report.py tests/test_trust_signals.py tests/test_report_summary_promises.py",
    ),
    "report_images": run(
        "capbatch/report/images.py",
        "tests/test_report.py tests/test_trust_signals.py tests/test_report_images_promises.py",
    ),
    "report": run(
        "capbatch/report/build.py capbatch/report/rows.py capbatch/report/attention.py",
        "tests/test_report.py tests/test_report_summary_promises.py "
        "tests/test_report_images_promises.py tests/test_report_build_promises.py "
        "tests/test_report_rows_promises.py tests/test_report_attention_promises.py",
    ),
    "report_cli": run(
        "capbatch/report_cli.py", "tests/test_report.py tests/test_report_cli_promises.py"
    ),
    "export_cli": run(
        "capbatch/export_cli.py",
        "tests/test_export_cli.py tests/test_export_domain.py tests/test_export_cli_promises.py",
    ),
    "export_validate": run(
        "capbatch/export/validate.py",
        "tests/test_export.py tests/test_export_cli.py tests/test_export_validate_promises.py",
    ),
}

# Modules no run mutates, and why (files without functions have no mutants at all).
EXCLUDED = {
    "capbatch/engines/ray_driver.py": "what runs in Ray's workers is invisible to mutmut, and "
    "each driver-side mutant run starts Ray and hits mutmut's timeout (docs/testing.md); "
    "tests/test_ray_engine.py runs it end to end",
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
        command = [sys.executable, str(REPO / "benchmarks" / "mutation.py")]
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
    runner.add_argument("--results", type=Path, default=REPO / "docs" / "mutation")
    runner.add_argument("--max-children", type=int, default=1)
    runner.add_argument("--work", type=Path, help="keep each run's mutants in WORK/NAME")
    summing = sub.add_parser("total", help="the table and the score over capbatch/")
    summing.add_argument("--results", type=Path, default=REPO / "docs" / "mutation")
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
