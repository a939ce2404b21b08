"""`--engine ray`: its options, its summary, the Ray session and the model facts the
driver needs. Ray is an optional extra: imported only when a job runs, and
without it `import_ray()` raises a one-line MissingDependencyError."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import ExitCode, MissingDependencyError, UsageError
from ..job import RunSummary
from ..option_spec import ENGINES, option
from ..providers import Device, cpu_thread_count, parse_device

INSTALL_HINT = "--engine ray needs Ray: pip install 'capbatch[ray]'"


def import_ray():
    """The `ray` module with Ray Data, or a one-line MissingDependencyError."""
    try:
        import ray
        import ray.data  # noqa: F401 - the engine needs Ray Data, not only Ray core
    except ImportError:
        raise MissingDependencyError(INSTALL_HINT) from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray job runs."""

    address: str | None = option(
        None, "--engine ray: cluster to join (default: local Ray).", panel=ENGINES,
        flags=("--ray-address",), engine=("ray", ""),
    )  # fmt: skip
    actors: int = option(
        1, "--engine ray: captioning actors (each loads the model once).", panel=ENGINES,
        min=1, engine=("ray", ""),
    )  # fmt: skip
    shard_size: int = 256  # non-archive inputs per shard; each archive is its own shard
    shard_retries: int = 2  # task retries of a shard's read + decode before it counts as failed
    num_cpus: int | None = None  # local instance only; None: max(cores, actors + 1)
    gpus_per_actor: float | None = None  # None: 1 with device "cuda", else 0

    def __post_init__(self) -> None:
        if not isinstance(self.actors, int) or self.actors < 1:
            raise ValueError(f"actors must be an integer >= 1, got {self.actors!r}")
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise ValueError(f"shard_size must be an integer >= 1, got {self.shard_size!r}")
        if not isinstance(self.shard_retries, int) or self.shard_retries < 0:
            raise ValueError(f"shard_retries must be an integer >= 0, got {self.shard_retries!r}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num_cpus must be >= 1, got {self.num_cpus!r}")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise ValueError(f"gpus_per_actor must be >= 0, got {self.gpus_per_actor!r}")

    def actor_gpus(self, device: str) -> float:
        if self.gpus_per_actor is not None:
            return self.gpus_per_actor
        return 1.0 if parse_device(device) is Device.cuda else 0.0

    def local_cpus(self) -> int:
        # Every actor holds a CPU slot for its lifetime; one more keeps the read and
        # decode tasks schedulable (with actors == cores they would wait forever).
        return self.num_cpus or max(cpu_thread_count(), self.actors + 1)


@dataclass
class RaySummary(RunSummary):
    """RunSummary plus shard counts; failed shards make the exit code 1."""

    shards: int = 0
    shards_done: int = 0
    shards_skipped: int = 0  # every key done by an earlier run (resume)
    failed_shards: list[int] = field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        return ExitCode.SOME_FAILED if self.errors or self.failed_shards else ExitCode.OK


def check_resources(resources: dict, device: str, ray_options: RayOptions) -> None:
    """Refuse a job the cluster can never schedule: Ray Data would wait for it forever."""
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    if cpus < ray_options.actors + 1:
        raise UsageError(
            f"--actors {ray_options.actors} needs {ray_options.actors + 1} CPUs in Ray "
            f"(one per actor, one for reading); the cluster has {cpus:g}"
        )
    wanted = ray_options.actors * ray_options.actor_gpus(device)
    if wanted > gpus:
        raise UsageError(
            f"--device {device} with {ray_options.actors} actor(s) needs {wanted:g} GPUs "
            f"in Ray; the cluster has {gpus:g}"
        )


@contextmanager
def ray_session(ray_options: RayOptions):
    """Join the running Ray (inside a Ray program), the cluster at `address`, or start a
    local instance: usage stats, dashboard and token auth off; shut down afterwards."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if ray_options.address is not None:
        ray.init(address=ray_options.address, logging_level=logging.WARNING)
    else:
        # Set before init: the local instance's processes inherit them.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(
            num_cpus=ray_options.local_cpus(),
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    try:
        yield ray
    finally:
        ray.shutdown()


@contextmanager
def data_context(ray):
    """Ordered output and tolerated failed blocks (a failed shard is reported by its
    missing rows), restored afterwards: the caller's Ray program keeps its settings."""
    context = ray.data.DataContext.get_current()
    saved = (
        context.execution_options.preserve_order,
        context.max_errored_blocks,
        context.enable_progress_bars,
    )
    context.execution_options.preserve_order = True
    context.max_errored_blocks = -1
    context.enable_progress_bars = False
    data_logger = logging.getLogger("ray.data")
    level = data_logger.level
    # Its per-run INFO lines and the "progress bars disabled" warning would break our
    # progress bar; errors still show.
    data_logger.setLevel(logging.ERROR)
    try:
        yield context
    finally:
        data_logger.setLevel(level)
        (
            context.execution_options.preserve_order,
            context.max_errored_blocks,
            context.enable_progress_bars,
        ) = saved
