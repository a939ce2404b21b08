"""The Python API: `Captioner(model=None, device="auto")(items)`.

The CLI and the pipeline are thin layers over this class. A failing item
never raises: it becomes a CaptionResult with status "error" and a reason.

    from capbatch import Captioner
    captioner = Captioner(beam_size=3)           # model=None: the built-in bundle
    print(captioner("a.jpg").caption)            # one item -> one result
    for result in captioner(["a.jpg", "b.png"]):  # a list -> a list
        print(result.caption, result.score)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .bundle import Bundle, Encoded, _stderr_warning, load_bundle
from .close_calls import caption_batch
from .decoding import DecodingOptions, Hypothesis
from .domain import DomainCheck, DomainScores
from .errors import InputDecodeError, UsageError
from .image_decode import DecodedImage, decode_image
from .option_spec import MODEL, RUN, option
from .preprocess import PreprocessSpec, preprocess_image, upright_size
from .providers import Device, EncoderRuntime, Precision, parse_device, parse_encoder_runtime
from .resume_facts import plain
from .rows import ERROR, OK

ImageItem = str | Path | bytes | Image.Image | np.ndarray
_SINGLE_ITEMS = (str, Path, bytes, bytearray, memoryview, Image.Image, np.ndarray)


@dataclass(frozen=True)
class CaptionResult:
    caption: str | None
    score: float | None  # mean token log-prob (<= 0; closer to 0 = more confident)
    tokens: tuple[int, ...]
    status: str  # "ok" | "error"
    error: str | None = None
    width: int | None = None  # original size, after EXIF orientation
    height: int | None = None
    words: tuple[str, ...] = ()  # caption tokens as strings, one per attention step
    attention: np.ndarray | None = field(default=None, repr=False)  # (steps, L) when asked
    domain_distance: float | None = None  # None: error row, or a bundle without statistics
    in_domain: bool | None = None
    truncated: bool = False  # max_len reached without the end token
    repeated: bool = False  # a word or phrase repeated back to back ("circles circles")

    @property
    def ok(self) -> bool:
        return self.status == OK


# Longest phrase checked for back-to-back repetition: captions are short, and a
# model caught in a loop repeats single words or short phrases.
MAX_REPEATED_PHRASE = 3


def repeats_back_to_back(words: Sequence[str]) -> bool:
    """Whether some run of 1..3 words is immediately followed by itself."""
    for n in range(1, MAX_REPEATED_PHRASE + 1):
        for i in range(len(words) - 2 * n + 1):
            if words[i : i + n] == words[i + n : i + 2 * n]:
                return True
    return False


def error_result(reason: str, width: int | None = None, height: int | None = None):
    return CaptionResult(None, None, (), ERROR, reason, width, height)


def prepare_item(item: ImageItem, spec: PreprocessSpec) -> DecodedImage:
    """Any accepted input -> the encoder's uint8 input; raises InputDecodeError."""
    if isinstance(item, (str, Path)):
        try:
            data = Path(item).read_bytes()
        except OSError as exc:
            raise InputDecodeError(f"cannot read file: {exc.strerror or exc}") from None
        return decode_image(data, spec)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return decode_image(bytes(item), spec)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3):
            raise InputDecodeError(
                f"arrays must be uint8 (H, W) or (H, W, 3|4), got {item.dtype} {item.shape}"
            )
        try:
            item = Image.fromarray(item)
        except (TypeError, ValueError) as exc:
            raise InputDecodeError(f"unsupported array shape {item.shape}: {exc}") from None
    if isinstance(item, Image.Image):
        try:
            width, height = upright_size(item)
            return DecodedImage(preprocess_image(item, spec), width, height)
        except Exception as exc:  # a broken lazily-loaded image is that item's problem
            raise InputDecodeError(f"cannot convert image: {exc}") from None
    raise InputDecodeError(f"unsupported item type {type(item).__name__}")


@dataclass(frozen=True)
class CaptionerArgs:
    """The Captioner's arguments as plain values, validated here and nowhere else.

    Picklable: the Ray engine checks them on its driver, before starting Ray, and
    sends them to its actors, which build their Captioner from them.
    """

    model: str | Path | None = option(
        None, "Model bundle directory (default: built-in).", panel=MODEL, cli_type=Path | None
    )
    device: str = option(
        "auto", "auto: CUDA when available, else CPU.", panel=MODEL, choices=Device
    )
    beam_size: int = option(
        1, "1 = greedy; K > 1 = beam search.", panel=MODEL, min=1, resume_must_match=True
    )
    max_len: int | None = option(
        None, "Most tokens per caption (default: the model's).", panel=MODEL, min=1,
        resume_must_match=True,
    )  # fmt: skip
    batch_size: int = option(32, "Images per batch.", panel=RUN, min=1)
    return_attention: bool = option(False, cli=False)  # set from --attention-dir
    intra_op_threads: int | None = option(
        None, "ONNX Runtime threads per CPU session (default: one per core; on small "
        "machines 1 leaves the cores to decoding, see docs/benchmarks.md).",
        panel=RUN, flags=("--threads",), min=1, engine=("local", "Ray actors use one CPU each"),
    )  # fmt: skip
    encoder_runtime: str = option(
        "onnxruntime", "Who runs the encoder: onnxruntime, or openvino (CPU, the openvino "
        "extra; refused unless the bundle records its caption agreement).",
        panel=MODEL, choices=EncoderRuntime, resume_must_match=True,
    )  # fmt: skip
    precision: str = option(
        "f32", "Encoder precision: f32, or bf16 (openvino only).", panel=MODEL,
        choices=Precision, resume_must_match=True,
    )  # fmt: skip

    @property
    def encoder_kind(self) -> str:
        """As rows name it ("onnxruntime-f32"), known before the model loads."""
        return f"{plain(self.encoder_runtime)}-{plain(self.precision)}"

    def __post_init__(self) -> None:
        optional = ("max_len", "intra_op_threads")  # None: the model's / one per core
        for name in ("batch_size", "beam_size", *optional):
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"{name} must be an integer >= 1, got {value!r}")
        parse_device(self.device)  # UsageError naming the choices
        _, precision = parse_encoder_runtime(self.encoder_runtime, self.precision, self.device)
        if precision is not Precision.f32 and self.beam_size != 1:
            # Its agreement gate (and its close-call fallback) are about greedy captions.
            raise UsageError(
                f"precision {precision.value} is measured and gated on greedy captions; "
                "use beam size 1, or precision f32 for beam search"
            )


class Captioner:
    """A loaded model plus decoding options; caption images in batches."""

    def __init__(
        self,
        model: str | Path | None = None,
        device: str = "auto",
        beam_size: int = 1,
        max_len: int | None = None,
        batch_size: int = 32,
        *,
        return_attention: bool = False,
        warn: Callable[[str], None] = _stderr_warning,
        intra_op_threads: int | None = None,
        encoder_runtime: str = "onnxruntime",
        precision: str = "f32",
    ) -> None:
        self._load(
            CaptionerArgs(
                model=model,
                device=device,
                beam_size=beam_size,
                max_len=max_len,
                batch_size=batch_size,
                return_attention=return_attention,
                intra_op_threads=intra_op_threads,
                encoder_runtime=encoder_runtime,
                precision=precision,
            ),
            warn,
        )

    @classmethod
    def from_args(
        cls, args: CaptionerArgs, *, warn: Callable[[str], None] = _stderr_warning
    ) -> Captioner:
        """A Captioner from checked arguments (the Ray actors' way in): no field is
        copied back out of `args`, so a new argument is declared in CaptionerArgs and
        the constructor's signature only."""
        captioner = cls.__new__(cls)
        captioner._load(args, warn)
        return captioner

    def _load(self, args: CaptionerArgs, warn: Callable[[str], None]) -> None:
        self.args = args
        self.bundle: Bundle = load_bundle(
            args.model,
            args.device,
            warn=warn,
            intra_op_threads=args.intra_op_threads,
            encoder_runtime=args.encoder_runtime,
            precision=args.precision,
        )
        self.options = DecodingOptions(
            beam_size=args.beam_size,
            max_len=args.max_len if args.max_len is not None else self.bundle.max_len,
            return_alphas=args.return_attention,
            track_margins=bool(self.bundle.fallback_margin),
        )
        # Captions redone by the reference encoder (close calls of a reduced precision).
        self.close_calls = 0
        self.batch_size = args.batch_size
        # None when the bundle has no statistics: rows then leave the domain columns empty.
        self.domain_check = DomainCheck.from_bundle(self.bundle.path, self.bundle.manifest)

    @property
    def model_id(self) -> str:
        return self.bundle.model_id

    @property
    def encoder_kind(self) -> str:
        """"onnxruntime-f32", "openvino-bf16": what the rows' `encoder` column says."""
        return self.bundle.encoder_kind

    @property
    def preprocess(self) -> PreprocessSpec:
        return self.bundle.preprocess

    @property
    def providers(self) -> list[str]:
        return self.bundle.providers

    @property
    def model_card(self):
        """What the bundle says its model knows ({} when it carries no card)."""
        return self.bundle.manifest.model_card

    def __call__(
        self, items: ImageItem | Iterable[ImageItem]
    ) -> CaptionResult | list[CaptionResult]:
        """One item (path, bytes, PIL image, array) -> its result; several -> a list."""
        if isinstance(items, _SINGLE_ITEMS):
            return self.caption([items])[0]
        return self.caption(items)

    def caption(self, items: ImageItem | Iterable[ImageItem]) -> list[CaptionResult]:
        """Caption paths, bytes, PIL images or uint8 arrays; one result per item, in order."""
        if isinstance(items, _SINGLE_ITEMS):
            items = [items]
        results: list[CaptionResult] = []
        pending: list[tuple[int, DecodedImage]] = []
        for item in items:
            try:
                pending.append((len(results), prepare_item(item, self.preprocess)))
                results.append(error_result("not captioned"))  # placeholder, replaced below
            except InputDecodeError as exc:
                results.append(error_result(str(exc)))
            if len(pending) == self.batch_size:
                self._fill(results, pending)
                pending = []
        if pending:
            self._fill(results, pending)
        return results

    def _fill(self, results: list[CaptionResult], pending: list[tuple[int, DecodedImage]]):
        captioned = self.caption_decoded([decoded for _, decoded in pending])
        for (index, _), result in zip(pending, captioned):
            results[index] = result

    def caption_decoded(self, images: Sequence[DecodedImage]) -> list[CaptionResult]:
        """Already preprocessed images -> results (the engines' entry point)."""
        if not images:
            return []
        pixels = np.stack([image.pixels for image in images])  # (B, S, S, 3) uint8
        hypotheses, encoded = self._run(pixels)
        domain = self.domain_check.score(encoded.features) if self.domain_check else None
        return [
            self._result(h, image, domain, i)
            for i, (h, image) in enumerate(zip(hypotheses, images))
        ]

    def hypotheses(self, pixels: np.ndarray) -> list[Hypothesis]:
        """pixels (B, S, S, 3) uint8 -> the best hypothesis per image (batched)."""
        return self._run(pixels)[0]

    def _run(self, pixels: np.ndarray) -> tuple[list[Hypothesis], Encoded]:
        hypotheses, encoded, redone = caption_batch(self.bundle, pixels, self.options)
        self.close_calls += redone
        return hypotheses, encoded

    def _result(
        self, hypothesis: Hypothesis, image: DecodedImage, domain: DomainScores | None, index: int
    ) -> CaptionResult:
        vocab = self.bundle.vocab
        words = tuple(vocab.tokens[t] for t in hypothesis.tokens)
        return CaptionResult(
            caption=vocab.text(hypothesis.tokens),
            score=float(hypothesis.mean_logprob),
            tokens=hypothesis.tokens,
            status=OK,
            width=image.width,
            height=image.height,
            words=words,
            attention=hypothesis.alphas,
            domain_distance=None if domain is None else float(domain.distances[index]),
            in_domain=None if domain is None else bool(domain.in_domain[index]),
            # token_logprobs hold one more entry than tokens when <end> was generated.
            truncated=hypothesis.steps <= len(hypothesis.tokens),
            repeated=repeats_back_to_back(words),
        )
