"""Mutation testing (mutmut 3) of chosen capbatch modules against chosen tests.

    python tools/mutation.py --module capbatch/decoding.py \
        --tests tests/runtime/test_decoding.py --max-children 1 --json runs/mutation-decoding.json

Runs in a copy of the working tree (git's tracked and unignored files), so the
`mutants/` folder mutmut writes never lands in the checkout, and writes the
copy's `[tool.mutmut]` section from the arguments: `--module` narrows
`only_mutate`, `--tests` replaces the test selection. Without `--module` the
copy keeps the repository's own `[tool.mutmut]` (the scheduled job's scope).
Prints a score per module (killed, timed out or crashed over mutants tested) and every
survivor; --json keeps them (benchmarks/results/mutation/), docs/testing.md has the scores.

A scheduled / benchmark job, not CI: one module takes minutes to an hour.

mutmut forks each mutant's test run from a process in which onnxruntime has
already started threads; now and then a child deadlocks on a lock no thread will
release (a futex wait at ~0 % CPU), and mutmut's timeout, which counts CPU time,
never fires. A watchdog (Linux /proc) kills a child older than --hang-seconds that
used under a fifth of that in CPU; mutmut then counts it as killed by a signal,
and the report lists it as hung and leaves it out of the score (a deadlock says
nothing about the mutant). Torch's OpenMP pool does the same after a fork (a wait
at a barrier): mutmut runs with OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter, defaultdict
from collections.abc import Collection
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Package data and what tests read from the repo: mutmut copies only the Python
# files of source_paths (and tests/) into mutants/.
ALSO_COPY = [
    "capbatch/models",
    "capbatch/report/templates",
    "samples",
    "docs",
    "README.md",
    "benchmarks",
    "tools",
]
# Tests that start capbatch in another process: mutmut 3's trampolines there read
# their config from that process's working directory, find none, and the test fails
# whatever the mutant, so they are left out (new ones: put "subprocess" in the name).
# The same expression is in pyproject.toml's [tool.mutmut].
NOT_SUBPROCESS = (
    "not (subprocess or test_cli_runs_without_torch or test_pillow_warnings_do_not_reach_stderr"
    " or test_sigint_exits_3_with_whole_rows or test_out_dash_piped_into_another_program"
    " or test_lock_refuses_a_second_run_and_names_it or test_captioner_imports_no_torch"
    " or test_from_capbatch_import_captioner_is_lazy_and_callable"
    " or test_report_runs_without_torch)"
)
SECTION = re.compile(r"^\[tool\.mutmut\]\n(?:(?!\[).*\n?)*", re.MULTILINE)
# mutmut 3 names a mutant <module>.x_<function>__mutmut_<n> (methods: xǁClassǁmethod).
MODULE_OF = re.compile(r"^(?P<module>.+?)\.x[_ǁ]")


# pyproject's package-dir installs these folders as capbatch subpackages; mutmut
# imports capbatch from its copy, so the copy gets them where the install puts them.
SUBPACKAGES = {"export": "capbatch/export", "training": "capbatch/training"}


def copy_tree(target: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    for folder, inside in SUBPACKAGES.items():
        shutil.copytree(target / folder, target / inside, dirs_exist_ok=True)


def narrowed_section(modules: list[str], tests: list[str]) -> str:
    lines = [
        "[tool.mutmut]",
        'source_paths = ["capbatch"]',
        f"only_mutate = {json.dumps(modules)}",
        f"also_copy = {json.dumps(ALSO_COPY)}",
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        f'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-k", "{NOT_SUBPROCESS}"]',
    ]
    return "\n".join(lines) + "\n\n"


def configure(work: Path, modules: list[str], tests: list[str]) -> None:
    pyproject = work / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    if not modules:
        return
    section = narrowed_section(modules, tests or ["tests"])
    text = SECTION.sub("", text).rstrip("\n") + "\n\n" + section
    pyproject.write_text(text, encoding="utf-8")


def results(work: Path) -> dict[str, str]:
    listed = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=work, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    found = {}
    for line in listed.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name and "__mutmut_" in name:
            found[name] = status
    return found


def summarise(statuses: dict[str, str], hung: Collection[str] = ()) -> dict[str, dict]:
    by_module: dict[str, Counter] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for name, status in sorted(statuses.items()):
        if name in hung:
            status = "hung"  # mutmut says "segfault": the watchdog's kill, not a test's
        match = MODULE_OF.match(name)
        module = match["module"] if match else name.split("__mutmut_")[0]
        by_module[module][status] += 1
        if status in ("survived", "no tests"):
            survivors[module].append(f"{name}: {status}")
    report = {}
    for module, counts in sorted(by_module.items()):
        # A hung run says nothing about the mutant: it is left out of the score.
        tested = sum(counts.values()) - counts["skipped"] - counts["hung"]
        # A mutant that crashes the test process was noticed too.
        caught = counts["killed"] + counts["timeout"] + counts["segfault"]
        report[module] = {
            "counts": dict(counts),
            "score": round(100 * caught / tested, 1) if tested else None,
            "survivors": survivors[module],
        }
    return report


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # the fields after "(comm)"


def hung_children(parent: int, hang_seconds: float) -> list[int]:
    """Children of `parent` older than hang_seconds that used under a fifth of it in CPU."""
    ticks = os.sysconf("SC_CLK_TCK")
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    stuck = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        # fields[1] = ppid; [11], [12] = utime, stime; [19] = start time (clock ticks)
        if fields is None or int(fields[1]) != parent:
            continue
        age = uptime - int(fields[19]) / ticks
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        if age > hang_seconds and cpu < age / 5:
            stuck.append(int(entry.name))
    return stuck


def watch_for_hangs(process, hang_seconds: float, hung: list[str], done: threading.Event):
    """Kill deadlocked mutant runs (see the module's docstring); their names go in `hung`."""
    while not done.wait(5):
        for pid in hung_children(process.pid, hang_seconds):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue
            hung.append(title.decode(errors="replace").removeprefix("mutmut: "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append", default=[], help="capbatch/x.py (repeat)")
    parser.add_argument("--tests", action="append", default=[], help="test file (repeat)")
    parser.add_argument("--max-children", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the per-module report here")
    parser.add_argument("--keep", type=Path, help="work here (kept) instead of a temp folder")
    parser.add_argument(
        "--hang-seconds", type=float, default=60.0, help="kill a mutant run idle this long"
    )
    args = parser.parse_args(argv)
    hung: list[str] = []
    work = args.keep or Path(tempfile.mkdtemp(prefix="capbatch-mutation-"))
    try:
        if not (work / "pyproject.toml").exists():
            copy_tree(work)
        configure(work, args.module, args.tests)
        command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children)]
        # One OpenMP thread: torch's pool, started before mutmut forks each mutant's
        # run, leaves the forked child waiting at a barrier no thread will reach.
        environment = {**os.environ, "OMP_NUM_THREADS": "1"}
        process = subprocess.Popen(
            command, cwd=work, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        finished = threading.Event()
        watchdog = threading.Thread(
            target=watch_for_hangs, args=(process, args.hang_seconds, hung, finished), daemon=True
        )
        watchdog.start()
        output, _ = process.communicate()
        finished.set()
        if "failed to collect stats" in output:
            # A test that fails on the unmutated code: mutmut tests nothing then.
            print(output[-3000:], file=sys.stderr)
            return 2
        report = summarise(results(work), set(hung))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    for module, entry in report.items():
        entry["hung"] = sorted(name for name in hung if name.startswith(module + "."))
        counts = ", ".join(f"{k} {v}" for k, v in sorted(entry["counts"].items()))
        print(f"{module}: score {entry['score']}% ({counts}; {len(entry['hung'])} hung)")
        for survivor in entry["survivors"]:
            print(f"  {survivor}")
        for name in entry["hung"]:
            print(f"  {name}: hung, killed by the watchdog")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
