"""A batch of keyed inputs -> rows: decoding that never raises, the per-batch
inference guard, and one row per item (the rows every engine writes).

The local engine and the Ray engine's actors both call `caption_batch`, so keys,
order, error rows and trust signals are the same whichever engine ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .captioner import Captioner, CaptionResult, error_result
from .errors import InputDecodeError
from .image_decode import DecodedImage, decode_image
from .preprocess import PreprocessSpec
from .rows import Row


class Keyed(Protocol):
    """What a row needs to know of its input: capbatch.sources.SourceItem is one."""

    @property
    def key(self) -> str: ...

    @property
    def path(self) -> str | None: ...


@dataclass(frozen=True)
class KeyedItem:
    """A Keyed for engines that carry key and path apart from the source item."""

    key: str
    path: str | None


Decoded = DecodedImage | str  # the encoder's input, or why the input has none


def decode_or_reason(data: bytes, spec: PreprocessSpec) -> Decoded:
    """Image file bytes -> the encoder's input, or the reason there is none (never
    raises: a decoder bug on one input must not stop the run)."""
    try:
        return decode_image(data, spec)
    except InputDecodeError as exc:
        return str(exc)
    except Exception as exc:
        return f"decode failed: {type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class CaptionedBatch:
    rows: list[Row]  # one per item, in batch order
    results: list[CaptionResult]  # one per item (an error result where decoding failed)


def infer(captioner: Captioner, images: Sequence[DecodedImage]) -> list[CaptionResult]:
    """The per-batch inference guard: an onnxruntime failure on a batch becomes error
    results for its images (the run goes on), never an exception."""
    try:
        return captioner.caption_decoded(images)
    except Exception as exc:
        reason = f"inference failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        return [error_result(reason, image.width, image.height) for image in images]


def row_for(item: Keyed, result: CaptionResult, model_id: str, encoder: str | None = None) -> Row:
    return Row(
        key=item.key,
        path=item.path,
        caption=result.caption,
        score=None if result.score is None else round(result.score, 6),
        status=result.status,
        error=result.error,
        width=result.width,
        height=result.height,
        model_id=model_id,
        encoder=encoder if result.ok else None,
        domain_distance=None if result.domain_distance is None else round(result.domain_distance, 2),
        in_domain=result.in_domain,
        truncated=result.truncated if result.ok else None,
        repeated=result.repeated if result.ok else None,
    )


def caption_batch(captioner: Captioner, batch: Sequence[tuple[Keyed, Decoded]]) -> CaptionedBatch:
    """Caption the decoded items of a batch (guarded) -> one row per item, in order."""
    captioned = iter(infer(captioner, [d for _, d in batch if not isinstance(d, str)]))
    results = [error_result(d) if isinstance(d, str) else next(captioned) for _, d in batch]
    model_id, encoder = captioner.model_id, captioner.encoder_kind
    rows = [row_for(item, result, model_id, encoder) for (item, _), result in zip(batch, results)]
    return CaptionedBatch(rows, results)
