"""One caption request: everything `capbatch caption` (or capbatch.caption()) is
asked to do, frozen and checked as a whole.

    request = CaptionRequest(
        job=RunOptions(inputs=("photos/",), out=Path("captions.csv")),
        captioner=CaptionerArgs(beam_size=3),
    )
    summary = capbatch.caption(request)

Each option is declared once, as a field of one of the parts (capbatch.option_spec):
what to read and where to write (RunOptions), the model and its decoding
(CaptionerArgs), the Ray engine's width (RayOptions), and the run's own fields
below. The command line's flags are generated from these fields
(capbatch.cli_options); both engines take the request as it is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .captioner import CaptionerArgs
from .engines.ray_options import RayOptions
from .errors import UsageError
from .job import Engine, RunOptions, check_engine_options
from .option_spec import ENGINES, OUTPUT, RUN, option


@dataclass(frozen=True)
class CaptionRequest:
    job: RunOptions
    captioner: CaptionerArgs = field(default_factory=CaptionerArgs)
    ray: RayOptions = field(default_factory=RayOptions)
    engine: Engine = option(
        Engine.local, "local: this process; ray: Ray Data (docs/scale-out.md).", panel=ENGINES
    )
    stats_json: Path | None = option(
        None, "Write the run's counts, error reasons and timing here (JSON).", panel=OUTPUT
    )
    report: Path | None = option(
        None, "Also write an HTML report of the run here at the end (docs/report.md).",
        panel=OUTPUT,
    )  # fmt: skip
    dry_run: bool = option(
        False, "Resolve the inputs, check the options and the model; write nothing.", panel=RUN
    )
    quiet: bool = option(False, "No progress or summary.", panel=RUN, flags=("--quiet", "-q"))

    def __post_init__(self) -> None:
        try:
            engine = Engine(self.engine)
        except ValueError:
            raise UsageError(f"unknown engine {self.engine!r}; choose local or ray") from None
        object.__setattr__(self, "engine", engine)
        check_engine_options(engine, self.job, self.captioner, self.ray)
        # The maps need the attention weights: asked for by naming their folder.
        wants_attention = self.job.attention_dir is not None
        if self.captioner.return_attention != wants_attention:
            captioner = dataclasses.replace(self.captioner, return_attention=wants_attention)
            object.__setattr__(self, "captioner", captioner)
