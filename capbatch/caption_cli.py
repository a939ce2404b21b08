"""`capbatch caption`: its options generated from CaptionRequest (capbatch.request),
its run the library's capbatch.caption() (capbatch.api), its output on stderr
(capbatch.caption_run)."""

from __future__ import annotations

from . import caption_run
from .cli import app
from .cli_options import command_from
from .request import CaptionRequest

CAPTION_EXAMPLES = """\
Examples:

  capbatch caption photos/ --out captions.csv

  capbatch caption shards/train-{000..009}.tar --out train.parquet --batch-size 64

  find /data -name '*.jpg' | capbatch caption --from-list - --out captions.jsonl

  capbatch caption photos/ --out captions.csv --resume --retry-errors

  capbatch caption photos/ --format txt --out photos.journal.jsonl   (sidecar .txt files)

  capbatch caption photos/ --out - --format csv | head   (rows on stdout)

  capbatch caption photos/ --out c.csv --dry-run   (check everything, write nothing)

Exit codes: 0 every image captioned, 1 some images failed (error rows written),
2 fatal (bad option, model or output), 3 interrupted (finished rows flushed).
"""


def caption_command(request: CaptionRequest) -> None:
    """Caption images from files, folders and archives into CSV, JSONL, Parquet or sidecars."""
    caption_run.run_cli(request)


# Every option is a field of CaptionRequest or one of its parts, declared once
# there (capbatch.option_spec); the flags are generated from them.
caption = command_from(CaptionRequest, caption_command, caption_command.__doc__ or "")

# A call, not a decorator: capbatch/cli.py says why.
app.command("caption", epilog=CAPTION_EXAMPLES, no_args_is_help=True)(caption)
