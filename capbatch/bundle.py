"""A verified model bundle: manifest, vocab and the two ONNX sessions.

Loading order matters: the manifest is schema-checked and every file's sha256
checked BEFORE any session is created (capbatch/manifest.py), so a tampered graph
is never parsed, and the sessions are created from the very bytes that were
hashed. Then the sessions' own input/output names are checked against the
manifest, and the vocab against the step graph's output size.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .decoding import ArrayStepModel, StepModel
from .encoder_runtime import (
    REFERENCE,
    check_agreement,
    choose_fallback_margin,
    create_encoder,
    other_cpu_warning,
)
from .errors import BundleError, MissingDependencyError, UsageError
from .graph_io import (
    ENCODER_CHUNK,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    FEATURES,
    IMAGES,
    LOG_PROBS,
    ORT_TYPES,
    PROJECTED,
    STEP_INPUTS,
    STEP_OUTPUTS,
    TOKENS,
    BoundStepModel,
    C,
    Encoded,
    H,
)
from .manifest import MANIFEST_FILE, GraphEntry, Manifest, VerifiedBundle, open_verified
from .preprocess import PreprocessSpec
from .providers import (
    CUDA,
    EncoderRuntime,
    Precision,
    choose_providers,
    cpu_thread_count,
    fallback_warning,
    parse_encoder_runtime,
)
from .vocab import Vocab

DEFAULT_BUNDLE_DIR = Path(__file__).parent / "models" / "default"

def _stderr_warning(message: str) -> None:
    print(f"capbatch: warning: {message}", file=sys.stderr, flush=True)


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError(
            "onnxruntime is not installed: pip install 'capbatch[cpu]' (or 'capbatch[gpu]')"
        ) from exc
    return onnxruntime


@dataclass
class Bundle:
    path: Path
    manifest: Manifest
    vocab: Vocab
    encoder: Any = field(repr=False)  # onnxruntime.InferenceSession or OpenVinoEncoder
    decoder_step: Any = field(repr=False)
    providers: list[str] = field(default_factory=list)  # what the sessions actually run
    encoder_runtime: EncoderRuntime = EncoderRuntime.onnxruntime
    precision: Precision = Precision.f32
    # A reduced-precision encoder's close calls: captions whose greedy margin is below
    # fallback_margin are redone with reference_encoder (onnxruntime f32); see
    # capbatch/close_calls.py. None / 0.0: no fallback.
    reference_encoder: Any = field(default=None, repr=False)
    fallback_margin: float | None = None
    # From the manifest; plain fields so a benchmark can disable <end> (end_id = -1).
    preprocess: PreprocessSpec = field(init=False)
    max_len: int = field(init=False)
    start_id: int = field(init=False)
    end_id: int = field(init=False)

    def __post_init__(self) -> None:
        self.preprocess = self.manifest.preprocess
        self.max_len = self.manifest.max_len
        self.start_id = self.manifest.special_tokens.start
        self.end_id = self.manifest.special_tokens.end

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def encoder_kind(self) -> str:
        """Who runs the encoder at which precision, as rows name it: "onnxruntime-f32"."""
        return f"{self.encoder_runtime.value}-{self.precision.value}"

    @property
    def on_cuda(self) -> bool:
        return CUDA in self.providers

    def encode(self, images: np.ndarray) -> Encoded:
        """images (B, S, S, 3) uint8 -> per-image encoder outputs.

        On CPU the encoder runs in chunks of at most ENCODER_CHUNK images: its
        activations (not its weights) set the process's peak memory, and they
        grow with the batch while the per-image speed no longer does
        (docs/benchmarks.md). The decoder steps still see the whole batch.
        """
        return self._encode_with(self.encoder, images)

    def encode_reference(self, images: np.ndarray) -> Encoded:
        """As encode, by the reference encoder (onnxruntime f32) kept for close calls."""
        if self.reference_encoder is None:
            raise ValueError("this bundle keeps no reference encoder (no fallback margin)")
        return self._encode_with(self.reference_encoder, images)

    def _encode_with(self, session, images: np.ndarray) -> Encoded:
        # max(1, ...): an empty batch is one empty run, not a range() step of 0.
        chunk = max(1, images.shape[0]) if self.on_cuda else ENCODER_CHUNK
        parts = [
            session.run(list(ENCODER_OUTPUTS), {IMAGES: images[i : i + chunk]})
            for i in range(0, max(1, images.shape[0]), chunk)
        ]
        if len(parts) == 1:
            outputs = parts[0]
        else:
            outputs = [np.concatenate(tensors) for tensors in zip(*parts)]  # (B, ...) each
        features, projected, h0, c0 = (o.astype(np.float32, copy=False) for o in outputs)
        return Encoded(features, projected, h0, c0)

    def step_model(self, encoded: Encoded) -> StepModel:
        """The step interface the decoding loop drives, for one encoded batch."""
        if self.on_cuda:
            return BoundStepModel(self.decoder_step, encoded, self.start_id, self.end_id)
        dtypes = {
            i.name: ORT_TYPES.get(i.type, np.float32) for i in self.decoder_step.get_inputs()
        }
        session = self.decoder_step

        def as_input(array: np.ndarray, name: str) -> np.ndarray:
            return array.astype(dtypes[name], copy=False)

        def run_step(tokens, h, c, features, projected):
            # features/projected were cast to the graph's dtypes once per batch (below);
            # h/c come back from the graph in its own dtype, so these casts are no-ops.
            feeds = {
                TOKENS: as_input(tokens, TOKENS),
                H: as_input(h, H),
                C: as_input(c, C),
                FEATURES: features,
                PROJECTED: projected,
            }
            log_probs, h_out, c_out, alpha = session.run(list(STEP_OUTPUTS), feeds)
            return log_probs.astype(np.float32, copy=False), h_out, c_out, alpha

        return ArrayStepModel(
            run_step,
            as_input(encoded.features, FEATURES),  # (B, L, D)
            as_input(encoded.projected, PROJECTED),  # (B, L, A)
            as_input(encoded.h0, H),  # (B, H)
            as_input(encoded.c0, C),  # (B, H)
            start_id=self.start_id,
            end_id=self.end_id,
        )


# --------------------------------------------------------------------------- loading


def resolve_bundle_dir(path: str | Path | None) -> Path:
    if path is not None:
        return Path(path)
    if not (DEFAULT_BUNDLE_DIR / MANIFEST_FILE).is_file():
        raise BundleError("no default model is installed; pass --model DIR (a bundle directory)")
    return DEFAULT_BUNDLE_DIR


def _session_options(ort, on_cpu: bool, intra_op_threads: int | None = None):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: fallbacks are reported by us, on one line
    if on_cpu:
        # One pool sized to the cores we may use; the step graph is small and
        # sequential, so inter-op parallelism only adds contention.
        options.intra_op_num_threads = intra_op_threads or cpu_thread_count()
        options.inter_op_num_threads = 1
        # Spinning idle threads steal the cores the decode pool needs: measured 26-28
        # vs 15-17 images/s end to end on 2 cores (docs/runtime.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def check_graph_io(graph: GraphEntry, session, needed_in, needed_out) -> None:
    """The session's own names must equal the manifest's and cover the runtime contract."""
    session_in = [i.name for i in session.get_inputs()]
    session_out = [o.name for o in session.get_outputs()]
    problems = []
    if sorted(session_in) != sorted(graph.inputs):
        problems.append(f"inputs {session_in} != manifest {list(graph.inputs)}")
    if not set(graph.outputs) <= set(session_out):
        problems.append(f"outputs {session_out} lack manifest {list(graph.outputs)}")
    missing = [n for n in needed_in if n not in session_in]
    missing += [n for n in needed_out if n not in session_out]
    if missing:
        problems.append(f"missing required {missing}")
    if problems:
        raise BundleError(f"{graph.key} graph I/O does not match: " + "; ".join(problems))


def _parse_vocab(verified: VerifiedBundle) -> Vocab:
    manifest = verified.manifest
    name = manifest.vocab.file
    try:
        tokens = json.loads(verified.contents[name].decode("utf-8"))
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ValueError("expected a JSON list of strings")
        vocab = Vocab(tuple(tokens), manifest.vocab.style, manifest.special_tokens.ids)
    except RecursionError:  # "[[[[..." deeper than the JSON parser's stack
        raise BundleError(f"bundle vocab {name}: nested too deeply") from None
    except ValueError as exc:  # bad UTF-8 or JSON, not a list of strings, empty
        raise BundleError(f"bundle vocab {name}: {exc}") from exc
    for token, index in manifest.special_tokens.items():
        # An <end> outside the vocab is never emitted (every caption runs to max_len).
        if index >= len(vocab):
            raise BundleError(
                f"special token {token} id {index} is outside the vocab ({len(vocab)} tokens)"
            )
    return vocab


@dataclass(frozen=True)
class BundleFacts:
    """What a driver needs from a bundle without loading it (no sessions, no GPU)."""

    path: Path
    model_id: str
    preprocess: PreprocessSpec


def bundle_facts(path: str | Path | None = None) -> BundleFacts:
    """model_id and preprocessing of a verified bundle (None = the default model).

    Every file is hashed as load_bundle would, so the id a driver records is that
    of an intact bundle; no onnxruntime session is created.
    """
    bundle_dir = resolve_bundle_dir(path)
    manifest = open_verified(bundle_dir, load=False).manifest
    return BundleFacts(bundle_dir, manifest.model_id, manifest.preprocess)


def _create_sessions(
    verified: VerifiedBundle,
    device: str,
    intra_op_threads: int | None,
    encoder_choice=REFERENCE,
    reference_encoder: bool = False,
):
    """Both sessions from the verified bytes (the encoder's by OpenVINO when chosen),
    plus an onnxruntime f32 encoder when reference_encoder (else None); also returns
    the providers asked for."""
    ort = import_onnxruntime()
    requested = choose_providers(device, ort.get_available_providers())
    if CUDA in requested and hasattr(ort, "preload_dlls"):
        try:  # CUDA/cuDNN from pip wheels; harmless when they are elsewhere
            ort.preload_dlls()
        except Exception:  # noqa: BLE001 - the fallback check below reports the outcome
            pass
    options = _session_options(ort, CUDA not in requested, intra_op_threads)

    def ort_session(graph: GraphEntry):
        try:
            with warnings.catch_warnings():
                # onnxruntime warns about providers it lacks; we report the outcome once.
                warnings.simplefilter("ignore")
                return ort.InferenceSession(
                    # The hashed bytes, never the path: a file swapped since is not loaded.
                    verified.contents[graph.file],
                    sess_options=options,
                    providers=requested,
                )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BundleError(f"cannot load {graph.file}: {first}") from exc

    sessions = []
    for graph in verified.manifest.graphs:
        if graph.key == "encoder" and encoder_choice[0] is EncoderRuntime.openvino:
            contents = verified.contents[graph.file]
            sessions.append(create_encoder(*encoder_choice, contents, intra_op_threads))
        else:
            sessions.append(ort_session(graph))
    reference = ort_session(verified.manifest.encoder) if reference_encoder else None
    return sessions, reference, requested


def load_bundle(
    path: str | Path | None = None,
    device: str = "auto",
    *,
    warn: Callable[[str], None] = _stderr_warning,
    intra_op_threads: int | None = None,
    encoder_runtime: str | EncoderRuntime = EncoderRuntime.onnxruntime,
    precision: str | Precision = Precision.f32,
    require_agreement: bool = True,
    fallback_margin: float | None = None,
) -> Bundle:
    """Verify and open a bundle directory (None = the embedded default model).

    intra_op_threads: onnxruntime threads per CPU session (None = one per usable
    core). Beside a decode pool on the same cores, fewer can be faster: on 2
    cores with 2 decode threads, 1 gave 1.06x end to end (docs/benchmarks.md).

    encoder_runtime/precision: who runs encoder.onnx ("onnxruntime" f32, or
    "openvino" at "f32" or "bf16" on CPU, the capbatch[openvino] extra). Anything
    but onnxruntime f32 needs a passing caption agreement recorded in the manifest
    for this encoder (capbatch/encoder_runtime.py); require_agreement=False skips
    that check, for the tool that measures it and for benchmarks.

    fallback_margin: for such an encoder, captions whose greedy margin falls below
    it are redone by an onnxruntime f32 encoder kept beside it
    (capbatch/close_calls.py). None = the margin recorded with the agreement (none
    recorded: no fallback); a number overrides it (the measuring tool's way).
    """
    choice = parse_encoder_runtime(encoder_runtime, precision, device)
    if intra_op_threads is not None and (
        not isinstance(intra_op_threads, int) or intra_op_threads < 1
    ):
        raise UsageError(f"intra_op_threads must be an integer >= 1, got {intra_op_threads!r}")
    bundle_dir = resolve_bundle_dir(path)
    verified = open_verified(bundle_dir)  # schema, links, sha256, external data: before sessions
    manifest = verified.manifest
    vocab = _parse_vocab(verified)
    if require_agreement:
        check_agreement(manifest, *choice)  # before compiling anything
    margin = choose_fallback_margin(manifest, *choice, fallback_margin)
    (encoder, step), reference, requested = _create_sessions(
        verified, device, intra_op_threads, choice, reference_encoder=bool(margin)
    )
    check_graph_io(manifest.encoder, encoder, ENCODER_INPUTS, ENCODER_OUTPUTS)
    check_graph_io(manifest.decoder_step, step, STEP_INPUTS, STEP_OUTPUTS)
    _check_shapes(encoder, step, manifest.preprocess, vocab)

    active = list(step.get_providers())
    message = fallback_warning(requested, active)
    if message:
        warn(message)
    if require_agreement:
        elsewhere = other_cpu_warning(manifest, *choice, getattr(encoder, "device_name", None))
        if elsewhere:
            warn(elsewhere)
    return Bundle(
        path=bundle_dir,
        manifest=manifest,
        vocab=vocab,
        encoder=encoder,
        decoder_step=step,
        providers=active,
        encoder_runtime=choice[0],
        precision=choice[1],
        reference_encoder=reference,
        fallback_margin=margin,
    )


def _check_shapes(encoder, step, preprocess: PreprocessSpec, vocab: Vocab) -> None:
    images = next(i for i in encoder.get_inputs() if i.name == IMAGES)
    if images.type != "tensor(uint8)":
        raise BundleError(f"encoder input images is {images.type}, expected tensor(uint8)")
    spatial = [d for d in images.shape[1:3] if isinstance(d, int)]
    if spatial and any(d != preprocess.size for d in spatial):
        raise BundleError(
            f"encoder expects {images.shape[1]}x{images.shape[2]} images but the manifest's "
            f"preprocess size is {preprocess.size}"
        )
    log_probs = next(o for o in step.get_outputs() if o.name == LOG_PROBS)
    size = log_probs.shape[-1] if log_probs.shape else None
    if isinstance(size, int) and size != len(vocab):
        raise BundleError(f"vocab has {len(vocab)} tokens but the step graph scores {size}")
