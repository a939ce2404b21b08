"""How rows are written, beyond the format: CSV cell safety and the sidecar options.

Declared once here; the CLI builds one `OutputSettings`, the job carries it, and
each writer reads the fields that concern it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..option_spec import OUTPUT, option


@dataclass(frozen=True)
class OutputSettings:
    # CSV: keep cells that start with = + - @ as they are (default: neutralised with
    # a leading ' so a spreadsheet shows them as text instead of running them).
    csv_raw: bool = option(
        False, "CSV: keep cells starting with = + - @ as they are.", panel=OUTPUT
    )
    # --format txt: the sidecar's extension, and text put around each caption.
    caption_extension: str = option(".txt", "--format txt: sidecar file ending.", panel=OUTPUT)
    sidecar_prefix: str = option("", "--format txt: text before each caption.", panel=OUTPUT)
    sidecar_suffix: str = option("", "--format txt: text after each caption.", panel=OUTPUT)
    # Archive members have no folder of their own for a sidecar.
    sidecar_dir: Path | None = option(
        None, "--format txt: folder for archive members' sidecars.", panel=OUTPUT
    )

    def __post_init__(self) -> None:
        given = self.caption_extension
        extension = given if given.startswith(".") else "." + given
        if extension == "." or "/" in extension or "\0" in extension or extension == "..":
            # As typed: '' is what the user gave, not the '.' it would have become.
            raise ValueError(f"--caption-extension {given!r} is not a file ending")
        object.__setattr__(self, "caption_extension", extension)
        for name in ("sidecar_prefix", "sidecar_suffix"):
            if "\0" in getattr(self, name):
                raise ValueError(f"--{name.replace('_', '-')} must not contain NUL")

    def check_format(self, fmt: str) -> None:
        """UsageError when a sidecar option is given for a format that writes no sidecars."""
        if self.csv_raw and fmt != "csv":
            raise UsageError("--csv-raw applies to --format csv only")
        if fmt == "txt":
            return
        given = {
            "--caption-extension": self.caption_extension != ".txt",
            "--sidecar-prefix": bool(self.sidecar_prefix),
            "--sidecar-suffix": bool(self.sidecar_suffix),
            "--sidecar-dir": self.sidecar_dir is not None,
        }
        for flag, present in given.items():
            if present:
                raise UsageError(f"{flag} applies to --format txt (sidecars) only")
