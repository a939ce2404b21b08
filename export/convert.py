"""Checkpoint -> validated model bundle directory (and optional fp16/int8 variants).

Each bundle is written into a hidden temp directory beside its destination and
renamed into place only when complete, so a failed export leaves no half bundle.
Variants are sibling bundles: OUT-fp16/ and OUT-int8/ (see variant_dir).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from capbatch.training.checkpoint import load_checkpoint, model_from_checkpoint, resolve_checkpoint

from capbatch.errors import BundleError, CapbatchError, ExportError
from capbatch.manifest import open_verified, sha256_file

from .domain_source import DomainImages, DomainOptions, fit_bundle_domain, plan_domain
from .manifest import (
    build_manifest,
    vocab_from_tokenizer_json,
    write_manifest,
    write_vocab_files,
)
from .specs import (
    DEFAULT_OPSET,
    ENCODER,
    FP16_BLOCKED_OPS,
    INT8_OPS,
    MIN_OPSET,
    TRACE_BATCH,
    VARIANT_MIN_AGREEMENT,
    GraphSpec,
    decoder_step_spec,
)
from .validate import (
    Hypothesis,
    VariantAgreementError,
    caption_agreement,
    ort_greedy,
    ort_session,
    validate_captions,
    validate_graphs,
    validation_images,
)
from .wrappers import DecoderStepGraph, EncoderGraph, export_copy

VARIANTS = ("fp16", "int8")


def variant_dir(out_dir: Path | str, variant: str) -> Path:
    """Where a variant bundle goes: a sibling directory OUT-<variant>."""
    if variant == "fp32":
        return Path(out_dir)
    out_dir = Path(out_dir)
    return out_dir.with_name(f"{out_dir.name}-{variant}")


@dataclass(frozen=True)
class ExportResult:
    """The bundles written (fp32 first, then the variants) and, when they carry
    no domain statistics, the one line that says why."""

    bundles: tuple[Path, ...]
    domain_note: str = ""


def export_bundle(ckpt_path: Path | str, out_dir: Path | str, **options) -> Path:
    """export_bundles(...) for callers that only need the fp32 bundle's path."""
    return export_bundles(ckpt_path, out_dir, **options).bundles[0]


def export_bundles(
    ckpt_path: Path | str,
    out_dir: Path | str,
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    int8: bool = False,
    validate: bool = True,
    validate_images: Path | str | None = None,
    top_k: int = 0,
    force: bool = False,
    overwrite: bool = False,
    name: str | None = None,
    domain: DomainOptions | None = None,
) -> ExportResult:
    """Export ckpt_path to the bundle out_dir (fp32) and the requested variants.

    With `domain`, every bundle gets domain statistics fitted with its own
    encoder (see domain_source.plan_domain for where the images come from);
    without, none. Raises CheckpointError for an unusable checkpoint, UsageError
    for unusable domain images, and ExportError (ValidationError,
    VariantAgreementError) when export or validation fails; nothing is left at a
    destination on failure.
    """
    out_dir = Path(out_dir)
    targets = [out_dir] + [variant_dir(out_dir, v) for v, on in zip(VARIANTS, (fp16, int8)) if on]
    _check_arguments(name, opset, targets, overwrite)
    ckpt_path = resolve_checkpoint(ckpt_path)
    checkpoint = load_checkpoint(ckpt_path)
    plan = plan_domain(domain or DomainOptions(enabled=False), checkpoint.get("extra"))
    model = export_copy(model_from_checkpoint(checkpoint))
    config = model.config
    vocab = vocab_from_tokenizer_json(checkpoint["tokenizer"], config.vocab_size)
    checkpoint_sha256 = sha256_file(ckpt_path)
    step_spec = decoder_step_spec(top_k)
    images = validation_images(
        config.preprocess, Path(validate_images) if validate_images else None
    )

    def finish(bundle: Path, variant: str, validation: dict | None) -> None:
        write_vocab_files(bundle, vocab, checkpoint["tokenizer"])
        manifest = build_manifest(
            bundle,
            config=config,
            checkpoint=checkpoint,
            checkpoint_sha256=checkpoint_sha256,
            decoder_spec=step_spec,
            top_k=top_k,
            opset=opset,
            variant=variant,
            validation=validation,
            model_name=name,
        )
        write_manifest(bundle, manifest)
        if plan.images is not None:
            _fit_domain(bundle, variant, plan.images)
        _verify_written(bundle, variant)

    with ExitStack() as stack:
        # Every destination is staged up front and renamed only when all succeeded.
        staged = stack.enter_context(_staging(out_dir, overwrite))
        encoder_path, step_path = export_graphs(model, staged, opset=opset, top_k=top_k)
        validation = None
        if validate:
            validation = _validate(model, encoder_path, step_path, images, top_k)
        finish(staged, "fp32", validation)
        reference = _greedy(staged, images, config) if (fp16 or int8) else []

        for variant, wanted in zip(VARIANTS, (fp16, int8)):
            if not wanted:
                continue
            variant_staged = stack.enter_context(_staging(variant_dir(out_dir, variant), overwrite))
            _write_variant(variant, staged, variant_staged)
            agreement = caption_agreement(reference, _greedy(variant_staged, images, config))
            finish(variant_staged, variant, _variant_gate(variant, agreement, len(images), force))
    return ExportResult(tuple(targets), "" if domain is None else plan.note)


def _variant_gate(variant: str, agreement: float, images: int, force: bool) -> dict:
    """A variant's validation record; VariantAgreementError when its greedy captions
    agree with fp32's on fewer than VARIANT_MIN_AGREEMENT of the images (unless force)."""
    if agreement < VARIANT_MIN_AGREEMENT and not force:
        raise VariantAgreementError(
            f"{variant} variant agrees with fp32 on {agreement:.0%} of "
            f"{images} validation images (< {VARIANT_MIN_AGREEMENT:.0%}); "
            "not written (pass --force to write it anyway)"
        )
    return {
        "images": images,
        "caption_agreement": agreement,
        "min_agreement": VARIANT_MIN_AGREEMENT,
        "forced": agreement < VARIANT_MIN_AGREEMENT,
    }


def _check_arguments(name: str | None, opset: int, targets: list[Path], overwrite: bool) -> None:
    """What can be refused before the checkpoint is even read."""
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        # The id lands in every output row and file name: keep it plain.
        raise ExportError(f"--name must be letters, digits, '.', '_' or '-' (got {name!r})")
    if opset < MIN_OPSET:
        raise ExportError(
            f"opset {opset} is too old: LSTMCell/attention export needs >= {MIN_OPSET}"
        )
    for target in targets:
        if target.exists() and not overwrite:
            raise ExportError(f"{target} already exists (pass --overwrite to replace it)")


def _validate(model, encoder_path: Path, step_path: Path, images, top_k: int) -> dict:
    """ORT vs PyTorch: names, shapes and values, then identical greedy captions."""
    validation = validate_graphs(model, encoder_path, step_path, images, top_k=top_k)
    # Near-ties: log_probs within twice their tolerance of each other.
    tie_gap = 2 * decoder_step_spec(top_k).outputs[0].tolerance_for(0.0)
    validation.update(validate_captions(model, encoder_path, step_path, images, tie_gap=tie_gap))
    return validation


def _fit_domain(bundle: Path, variant: str, images: DomainImages) -> None:
    try:
        fit_bundle_domain(bundle, images)
    except CapbatchError as exc:  # e.g. none of the images decode
        raise ExportError(f"domain statistics for the {variant} bundle: {exc}") from exc


def _verify_written(bundle: Path, variant: str) -> None:
    """The runtime's own checks (schema, hashes, self-contained graphs), so export
    never renames into place a bundle `capbatch caption` would refuse."""
    try:
        open_verified(bundle, load=False)
    except BundleError as exc:
        raise ExportError(f"the {variant} bundle does not verify: {exc}") from exc


# --------------------------------------------------------------------------- graphs


def export_graphs(model, out_dir: Path, *, opset: int, top_k: int = 0) -> tuple[Path, Path]:
    """Trace both graphs from a CPU eval copy (see wrappers.export_copy) into out_dir.

    The TorchScript exporter (dynamo=False) is used: it handles nn.LSTMCell and
    dynamic_axes maturely and is fast (~seconds); the dynamo exporter is slower and
    its output for the step graph is larger for no gain here.
    """
    config = model.config
    size = config.preprocess.size
    images = torch.randint(0, 256, (TRACE_BATCH, size, size, 3), dtype=torch.uint8)
    encoder_path = out_dir / ENCODER.file
    _trace(EncoderGraph(model), (images,), encoder_path, ENCODER, opset)
    with torch.no_grad():
        features, projected, h, c = EncoderGraph(model)(images)
    tokens = torch.full((TRACE_BATCH,), config.start_id, dtype=torch.long)
    step_spec = decoder_step_spec(top_k)
    step_path = out_dir / step_spec.file
    _trace(
        DecoderStepGraph(model, top_k),
        (tokens, h, c, features, projected),
        step_path,
        step_spec,
        opset,
    )
    check_static_encoder(encoder_path)
    return encoder_path, step_path


def _trace(module, args: tuple, path: Path, spec: GraphSpec, opset: int) -> None:
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter's deprecation and tracer warnings are noise here.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(),
                args,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes(),
                do_constant_folding=True,
            )
    except Exception as exc:  # the exporter raises many unrelated types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"exporting {spec.file} failed: {first}") from exc


def dynamic_pad_nodes(path: Path) -> list[str]:
    """Pad nodes whose pads depend on a run-time shape (a Shape node or a graph input).

    The TorchScript exporter lowers a constant F.pad through a small
    ConstantOfShape/Concat/Slice chain; that is static and ORT folds it at load.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {output: node for node in graph.node for output in node.output}
    graph_inputs = {i.name for i in graph.input}

    def depends_on_runtime_shape(name: str, seen: set[str]) -> bool:
        if name in graph_inputs:
            return True
        node = producer.get(name)
        if node is None or name in seen:
            return False  # initializer, or already visited
        seen.add(name)
        if node.op_type == "Shape":
            return True
        return any(depends_on_runtime_shape(i, seen) for i in node.input if i)

    return [
        node.name
        for node in graph.node
        if node.op_type == "Pad"
        and len(node.input) > 1
        and depends_on_runtime_shape(node.input[1], set())
    ]


def check_static_encoder(path: Path) -> None:
    dynamic = dynamic_pad_nodes(path)
    if dynamic:
        raise ExportError(
            f"{path.name} computes padding at run time ({len(dynamic)} Pad nodes); "
            "a dynamic-SAME conv was not frozen"
        )


# --------------------------------------------------------------------------- variants


def _write_variant(variant: str, fp32_dir: Path, out: Path) -> None:
    for spec in (ENCODER, decoder_step_spec()):
        source, target = fp32_dir / spec.file, out / spec.file
        if variant == "fp16":
            convert_fp16(source, target)
        else:
            quantize_int8(source, target)


def convert_fp16(source: Path, target: Path) -> None:
    """float16 weights/compute, float32 I/O, softmax-family ops kept in float32."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(source))
    _separate_graph_outputs(model)
    # The converter types tensors from value_info: give it a complete one.
    model = onnx.shape_inference.infer_shapes(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=list(FP16_BLOCKED_OPS)
        )
    _retarget_float_casts(converted)
    onnx.save(converted, str(target))


def _separate_graph_outputs(model) -> None:
    """Give every graph output that other nodes also read its own Identity.

    With keep_io_types the converter casts an output back to float32 under its
    name, and nodes that read it internally (ReduceMean and U read `features`)
    then receive float32 where they were typed float16.
    """
    from onnx import helper

    graph = model.graph
    outputs = {o.name for o in graph.output}
    read = {i for node in graph.node for i in node.input}
    for name in outputs & read:
        internal = f"{name}__internal"
        for node in graph.node:
            node.output[:] = [internal if o == name else o for o in node.output]
            node.input[:] = [internal if i == name else i for i in node.input]
        graph.node.append(helper.make_node("Identity", [internal], [name], name=f"{name}__output"))


def _retarget_float_casts(model) -> None:
    """Make Casts to float32 whose outputs the converter retyped to float16 cast to float16.

    onnxconverter-common changes the output's value_info but not the Cast's `to`
    (the encoder's uint8 -> float Cast), which ORT rejects at load. Blocking Cast
    instead sends the converter into an endless loop (its inserted nodes are Casts).
    """
    from onnx import TensorProto

    half = {
        v.name
        for v in model.graph.value_info
        if v.type.tensor_type.elem_type == TensorProto.FLOAT16
    }
    for node in model.graph.node:
        if node.op_type != "Cast" or node.output[0] not in half:
            continue
        for attribute in node.attribute:
            if attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.FLOAT16


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of MatMul/Gemm weights (activations stay float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" advice is for static quantisation
    try:
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(INT8_OPS),
        )
    finally:
        root.setLevel(level)


def _greedy(bundle: Path, images: np.ndarray, config) -> list[Hypothesis]:
    return ort_greedy(
        ort_session(bundle / ENCODER.file),
        ort_session(bundle / decoder_step_spec().file),
        images,
        start_id=config.start_id,
        end_id=config.end_id,
        max_len=config.max_len,
    )


# --------------------------------------------------------------------------- atomic dirs


@contextmanager
def _staging(destination: Path, overwrite: bool) -> Iterator[Path]:
    """A temp dir beside destination, renamed onto it when the block succeeds."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{destination.name}.tmp-", dir=destination.parent))
    # mkdtemp makes 0700; a bundle is meant to be shared like any directory (umask applies).
    umask = os.umask(0)
    os.umask(umask)
    staged.chmod(0o777 & ~umask)
    try:
        yield staged
        if destination.exists():
            if not overwrite:
                raise ExportError(f"{destination} appeared during export; not replaced")
            old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
            os.replace(destination, old)
            os.replace(staged, destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staged, destination)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
