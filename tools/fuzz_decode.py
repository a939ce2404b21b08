"""Mutation fuzzing of the decode + preprocess path and the archive readers.

    python tools/fuzz_decode.py --inputs 100000 --seed 1

Each input is a seed file (images in many formats and modes, tar / tar.gz /
zip archives) with random mutations (bit flips, byte overwrites with
interesting values, truncation, insertions, block duplication, splicing of two
seeds). Images go through `capbatch.image_decode.decode_image`; archives are written
to a scratch folder and read with `capbatch.sources.iter_sources`, each member
then decoded. The contract checked:

- decode only ever raises InputDecodeError, with a one-line reason;
- the archive readers never raise, yield one item per key, and write nothing;
- no input takes longer than --per-input-s (a watchdog thread, faulthandler,
  prints "Timeout" and every thread's stack and exits the process with code 1
  if one hangs, even inside C code; with --save the input is kept as
  current-input);
- peak RSS of the process stays under --max-rss-mb.

Prints a JSON summary (counts, outcomes, slowest input, peak RSS) and exits 0
when the contract held, 1 otherwise (the failing inputs are saved with --save).
tests/reliability/test_fuzz.py runs the same harness briefly.
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import json
import os
import random
import resource
import sys
import tarfile
import tempfile
import time
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.bombfiles: the hostile-header seeds

from capbatch.errors import InputDecodeError  # noqa: E402
from capbatch.image_decode import decode_image  # noqa: E402
from capbatch.preprocess import PreprocessSpec  # noqa: E402
from capbatch.sources import iter_sources  # noqa: E402
from tests import bombfiles  # noqa: E402

SPEC = PreprocessSpec(size=32)
INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF)
INTERESTING_WORDS = (
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\x00\x00\x00\x00",
    b"\x00\x01\x00\x00",
)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _picture(size=(48, 32)) -> Image.Image:
    width, height = size
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    pixels = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)  # (H, W, 3)
    return Image.fromarray(pixels, "RGB")


def image_seeds() -> dict[str, bytes]:
    """Small valid files in the formats and modes the decoder handles."""
    picture = _picture()
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [picture, picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    rgba = picture.convert("RGBA")
    rgba.putalpha(128)
    grey16 = Image.fromarray(np.arange(48 * 32, dtype=np.uint16).reshape(32, 48) * 40)
    return {
        "jpeg": _encode(picture, "JPEG", quality=85),
        "jpeg-progressive": _encode(picture, "JPEG", progressive=True),
        "jpeg-exif": _encode(picture, "JPEG", exif=exif.tobytes()),
        "jpeg-cmyk": _encode(picture.convert("CMYK"), "JPEG"),
        "jpeg-grey": _encode(picture.convert("L"), "JPEG"),
        "png": _encode(picture, "PNG"),
        "png-rgba": _encode(rgba, "PNG"),
        "png-palette": _encode(picture.convert("P"), "PNG", transparency=0),
        "png-16bit": _encode(grey16, "PNG"),
        "gif-animated": _encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "tiff-pages": _encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "tiff-lzw": _encode(picture, "TIFF", compression="tiff_lzw"),
        "webp": _encode(picture, "WEBP", quality=70),
        "webp-lossless": _encode(rgba, "WEBP", lossless=True),
        "bmp": _encode(picture, "BMP"),
        "ico": _encode(picture, "ICO"),
        "ppm": _encode(picture, "PPM"),
        "tga": _encode(picture, "TGA"),
        **bomb_seeds(),
    }


def bomb_seeds() -> dict[str, bytes]:
    """Small copies of the issue-18 bomb shapes: the header fields the limits read.

    Full-size bombs cost seconds each; at this size mutations of the same
    headers (screen vs frame, ICO entry vs directory, scan lists, strips,
    IDAT streams) reach the same parsing code in milliseconds.
    """
    return {
        "gif-screen": bombfiles.gif_screen_bomb(300, 200),
        "png-16bit-zeros": bombfiles.png_grey16_bomb(64),
        "tiff-float": bombfiles.tiff_bomb("F", side=48, rows_per_strip=8),
        "tiff-int": bombfiles.tiff_bomb("I", side=48, rows_per_strip=48),
        "png-one-row": bombfiles.png_row_bomb(5000),
        "ico-png-entry": bombfiles.ico_png_bomb(64),
        "jpeg-many-scans": bombfiles.jpeg_many_scans(40, (48, 32)),
        "jpeg-dc-only": bombfiles.jpeg_dc_only((48, 32)),
    }


def _tar(members: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip(members: dict[str, bytes], compression: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def archive_seeds(images: dict[str, bytes]) -> dict[str, bytes]:
    """Keyed by a name whose suffix tells the reader the archive kind."""
    members = {"a/1.jpg": images["jpeg"], "b/2.png": images["png"], "3.txt": b"caption"}
    return {
        "shard.tar": _tar(members),
        "shard.tar.gz": _tar(members, "w:gz"),
        "shard.zip": _zip(members, zipfile.ZIP_DEFLATED),
        "stored.zip": _zip(members, zipfile.ZIP_STORED),
    }


def mutate(data: bytes, rng: random.Random, donors: list[bytes]) -> bytes:
    """1-8 random edits; the header region is hit more often (most parsing lives there)."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if not out:
            out = bytearray(rng.choice(donors)[:16])
        near_head = min(len(out), 256)
        at = rng.randrange(near_head) if rng.random() < 0.6 else rng.randrange(len(out))
        op = rng.randrange(8)
        if op == 0:
            out[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[at] = rng.choice(INTERESTING)
        elif op == 2:
            word = rng.choice(INTERESTING_WORDS)
            out[at : at + len(word)] = word
        elif op == 3:
            del out[rng.randrange(1, len(out) + 1) :]  # truncate
        elif op == 4:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 5:
            length = rng.randint(1, 64)
            out[at:at] = out[at : at + length]  # duplicate a block
        elif op == 6:
            del out[at : at + rng.randint(1, 64)]
        else:
            donor = rng.choice(donors)
            cut = rng.randrange(len(donor) + 1)
            out[at:] = donor[cut:]  # splice another file's tail
    return bytes(out)


def check_decode(data: bytes) -> str:
    """'ok' or 'error'; anything but InputDecodeError (or a bad message) propagates."""
    try:
        decoded = decode_image(data, SPEC)
    except InputDecodeError as exc:
        message = str(exc)
        if not message or "\n" in message or len(message) > 200:
            raise AssertionError(f"unclear decode error: {message!r}") from None
        return "error"
    if decoded.pixels.shape != (SPEC.size, SPEC.size, 3) or decoded.pixels.dtype != np.uint8:
        raise AssertionError(f"bad pixels {decoded.pixels.shape} {decoded.pixels.dtype}")
    return "ok"


def check_archive(data: bytes, name: str, scratch: Path) -> str:
    """Read a (mutated) archive; every member decoded. Never raises, never writes."""
    folder = scratch / "in"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    before = sorted(os.listdir(scratch)), sorted(os.listdir(folder))
    keys, outcomes = [], Counter()
    for item in iter_sources([str(path)]):
        keys.append(item.key)
        if item.error is not None:
            if "\n" in item.error or not item.error:
                raise AssertionError(f"unclear archive error: {item.error!r}")
            outcomes["item-error"] += 1
        else:
            outcomes[check_decode(item.data)] += 1
    if len(keys) != len(set(keys)):
        raise AssertionError(f"duplicate keys from one archive: {keys}")
    if (sorted(os.listdir(scratch)), sorted(os.listdir(folder))) != before:
        raise AssertionError("reading an archive wrote files")
    path.unlink()
    return "+".join(sorted(outcomes)) or "empty"


def peak_rss_mb() -> float:
    """This process's own peak RSS. VmHWM, not ru_maxrss: Linux keeps ru_maxrss
    across exec, so a harness started from a big process (pytest) would report
    its parent's peak."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # KiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_fuzz(
    inputs: int,
    seed: int = 0,
    *,
    per_input_s: float = 10.0,
    max_rss_mb: float = 2048.0,
    archive_share: float = 0.2,
    save: Path | None = None,
) -> dict:
    """The fuzz loop; returns the summary (failures listed in it)."""
    rng = random.Random(seed)
    images = image_seeds()
    archives = archive_seeds(images)
    donors = list(images.values())
    outcomes: Counter[str] = Counter()
    failures: list[dict] = []
    slowest = (0.0, "")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="capbatch-fuzz-") as scratch:
        for index in range(inputs):
            is_archive = rng.random() < archive_share
            name = rng.choice(list(archives if is_archive else images))
            data = mutate((archives if is_archive else images)[name], rng, donors)
            if save is not None:  # a hang exits the process: keep the culprit on disk
                save.mkdir(parents=True, exist_ok=True)
                (save / "current-input").write_bytes(data)
                (save / "current-input.json").write_text(json.dumps([index, name]))
            # A hang (even inside C) dumps every thread's stack and exits the process.
            faulthandler.dump_traceback_later(per_input_s, exit=True)
            began = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if is_archive:
                        outcome = "archive:" + check_archive(data, name, Path(scratch))
                    else:
                        outcome = "image:" + check_decode(data)
            except Exception as exc:  # the contract broke: record it, go on
                outcome = "FAILURE"
                failures.append({"index": index, "seed": name, "error": repr(exc)[:300]})
                if save is not None:
                    save.mkdir(parents=True, exist_ok=True)
                    (save / f"failure-{index}-{name}").write_bytes(data)
            finally:
                faulthandler.cancel_dump_traceback_later()
            took = time.perf_counter() - began
            if took > slowest[0]:
                slowest = (took, name)
            outcomes[outcome] += 1
    rss = peak_rss_mb()
    return {
        "inputs": inputs,
        "seed": seed,
        "elapsed_s": round(time.monotonic() - started, 1),
        "outcomes": dict(sorted(outcomes.items())),
        "failures": failures[:20],
        "failure_count": len(failures),
        "slowest_input_s": round(slowest[0], 4),
        "slowest_seed": slowest[1],
        "per_input_bound_s": per_input_s,
        "peak_rss_mb": round(rss, 1),
        "rss_bound_mb": max_rss_mb,
        "passed": not failures and rss <= max_rss_mb,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--per-input-s", type=float, default=10.0)
    parser.add_argument("--max-rss-mb", type=float, default=2048.0)
    parser.add_argument("--save", type=Path, default=None, help="folder for failing inputs")
    args = parser.parse_args(argv)
    summary = run_fuzz(
        args.inputs,
        args.seed,
        per_input_s=args.per_input_s,
        max_rss_mb=args.max_rss_mb,
        save=args.save,
    )
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
