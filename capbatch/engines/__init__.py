"""The engines that run the caption job (capbatch.job): `local` (this process)
and `ray` (Ray Data). Each only schedules; rows, resume and guards are the job's.

    run = open_engine(request)   # the engine's checks; the output opened once
    run.done()                   # key -> status already there (--dry-run, --resume)
    summary = run.run(hooks)     # load the model, caption, write; the summary

Engines are chosen from ENGINES by the request's `engine`; nothing outside this
package asks which engine a run uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..job import RunHooks, RunSummary
    from ..request import CaptionRequest


class EngineRun(Protocol):
    """One request opened on one engine."""

    fmt: str  # the format the rows are written in (of the merged file, for Ray)

    def done(self) -> Mapping[str, str]:
        """key -> status of the rows already in the output (what --resume keeps)."""
        ...

    def run(self, hooks: RunHooks) -> RunSummary:
        """Load the model, caption every input not done, write the rows; the summary."""
        ...


def _local(request: CaptionRequest) -> EngineRun:
    from .local import LocalRun

    return LocalRun(request)


def _ray(request: CaptionRequest) -> EngineRun:
    from .ray_driver import RayRun

    return RayRun(request)


# Imported when chosen: the Ray engine's modules need Ray only once a run uses it.
ENGINES: dict[str, Callable[[CaptionRequest], EngineRun]] = {"local": _local, "ray": _ray}


def open_engine(request: CaptionRequest) -> EngineRun:
    """The request opened on its engine: everything the engine can check before the
    model loads (its options, the output's format, extra and layout) is checked."""
    return ENGINES[request.engine.value](request)
