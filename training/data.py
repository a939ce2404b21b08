"""Caption datasets: the layouts people already have, read into one shape.

Layouts (detected from the files in the data directory):

* captions CSV: `captions.csv` with header `image,caption`, one row per
  reference; optional `splits.json` ({"train": [names], "val": [...], ...}).
  The generated-scenes layout is this one plus `splits.json` and `scenes.jsonl`.
* Flickr8k: `Flickr8k.token.txt` (`name.jpg#i<TAB>caption`) and, when present,
  `Flickr_8k.trainImages.txt` / `Flickr_8k.devImages.txt` / `Flickr_8k.testImages.txt`.
* Karpathy: `dataset_flickr8k.json` with each image's `split` and `sentences`.

Every reference of an image is kept (metrics need them all). Malformed rows,
unknown names in split files and missing images are one DatasetError raised
before training starts, listing every problem (up to MAX_LISTED) with its
file and row, rather than the first one halfway through an epoch. Captions of
images that no split file lists are reported in `CaptionDataset.warnings`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from capbatch.errors import CapbatchError

CSV_FILE = "captions.csv"
SPLITS_FILE = "splits.json"
FLICKR_TOKEN_FILE = "Flickr8k.token.txt"
FLICKR_SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
KARPATHY_FILE = "dataset_flickr8k.json"
# Where images live, relative to the data directory, tried in order.
IMAGE_DIRS = ("images", "Flicker8k_Dataset", "Flickr8k_Dataset", ".")
# Without split files, images are assigned by a hash of their name (stable
# across runs and machines) in these proportions.
DEFAULT_SPLIT_FRACTIONS = (("train", 0.9), ("val", 0.05), ("test", 0.05))
MAX_LISTED = 10  # problems named in one error; the rest are counted


class DatasetError(CapbatchError):
    """A dataset file is missing or malformed; the message names the file and row."""


class Problems:
    """Every problem found in a dataset, raised together as one DatasetError line."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)

    def raise_any(self, summary: str = "") -> None:
        if not self.items:
            return
        if len(self.items) == 1 and not summary:
            raise DatasetError(self.items[0])
        shown = "; ".join(self.items[:MAX_LISTED])
        more = len(self.items) - MAX_LISTED
        head = summary or f"{len(self.items)} problems"
        raise DatasetError(f"{head}: {shown}" + (f"; and {more} more" if more > 0 else ""))


@dataclass(frozen=True)
class CaptionedImage:
    name: str  # file name relative to the image directory, the key everywhere
    path: Path
    captions: tuple[str, ...]  # every reference, in file order


@dataclass(frozen=True)
class CaptionDataset:
    root: Path
    layout: str  # "csv" | "flickr8k" | "karpathy"
    image_dir: Path
    splits: dict[str, list[CaptionedImage]]
    warnings: tuple[str, ...] = ()  # not errors, but worth saying (e.g. unused captions)

    def split(self, name: str) -> list[CaptionedImage]:
        if name not in self.splits:
            raise DatasetError(
                f"{self.root}: no split {name!r}; this dataset has {sorted(self.splits)}"
            )
        return self.splits[name]

    @property
    def scenes_file(self) -> Path | None:
        """The generated-scenes facts file, when this is a scenes dataset."""
        path = self.root / "scenes.jsonl"
        return path if path.is_file() else None


def read_dataset(
    root: Path | str, check_images: bool = True, group_by: str = ""
) -> CaptionDataset:
    """Detect the layout of `root` and read every split. Without split files,
    images are hash-split; `group_by` (a regex) keeps a group together."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data directory not found: {root}")
    if (root / KARPATHY_FILE).is_file():
        layout, captions, splits = "karpathy", *_read_karpathy(root / KARPATHY_FILE)
    elif (root / FLICKR_TOKEN_FILE).is_file():
        layout, captions = "flickr8k", _read_flickr_tokens(root / FLICKR_TOKEN_FILE)
        splits = _read_flickr_splits(root, captions)
    elif (root / CSV_FILE).is_file():
        layout, captions = "csv", _read_csv(root / CSV_FILE)
        splits = _read_splits_json(root / SPLITS_FILE, captions)
    else:
        raise DatasetError(
            f"{root}: no dataset found; expected one of {CSV_FILE}, {FLICKR_TOKEN_FILE}, "
            f"{KARPATHY_FILE}"
        )
    hashed = splits is None
    if splits is None:
        splits = hash_splits(list(captions), group_by)
    image_dir = _find_image_dir(root, next(iter(captions), None))
    out = {
        split: [CaptionedImage(n, image_dir / n, tuple(captions[n])) for n in names]
        for split, names in splits.items()
    }
    if check_images:
        _check_images(out, image_dir, not hashed)
    warnings = () if hashed else _unlisted(captions, splits)
    return CaptionDataset(root, layout, image_dir, out, warnings)


def _check_images(
    splits: dict[str, list[CaptionedImage]], image_dir: Path, from_split_files: bool
) -> None:
    """One error naming every missing image, and where each was listed: a split
    file, or (hash split) only the captions file."""
    missing: dict[str, CaptionedImage] = {}
    where: dict[str, str] = {}
    for split, images in splits.items():
        for image in images:
            if image.name not in missing and not image.path.is_file():
                missing[image.name] = image
                where[image.name] = f"split {split!r}" if from_split_files else "captions"
    if len(missing) == 1:
        ((name, image),) = missing.items()
        raise DatasetError(f"image {name!r} (in {where[name]}) not found at {image.path}")
    problems = Problems()
    for name in missing:
        problems.add(f"{name!r} (in {where[name]})")
    problems.raise_any(f"{len(missing)} images not found in {image_dir}")


def _unlisted(captions: dict[str, list[str]], splits: dict[str, list[str]]) -> tuple[str, ...]:
    listed = {name for names in splits.values() for name in names}
    unlisted = [name for name in captions if name not in listed]
    if not unlisted:
        return ()
    examples = ", ".join(repr(n) for n in unlisted[:3])
    return (
        f"{len(unlisted)} captioned images are in no split file and are not used "
        f"(e.g. {examples})",
    )


def group_key(name: str, pattern: re.Pattern | None) -> str:
    """What an image is split by: its name, or with --group-by the regex's first
    group (or whole match) in it, so augmented copies of one photo share a split."""
    match = pattern.search(name) if pattern else None
    if match is None:
        return name
    return match.group(1) if pattern.groups else match.group(0)


def hash_splits(names: list[str], group_by: str = "") -> dict[str, list[str]]:
    """Assign each image to a split by a hash of its group key (stable, order-free)."""
    pattern = re.compile(group_by) if group_by else None
    splits: dict[str, list[str]] = {split: [] for split, _ in DEFAULT_SPLIT_FRACTIONS}
    for name in names:
        digest = hashlib.sha256(group_key(name, pattern).encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64
        edge = 0.0
        for split, fraction in DEFAULT_SPLIT_FRACTIONS:
            edge += fraction
            if point < edge or split == DEFAULT_SPLIT_FRACTIONS[-1][0]:
                splits[split].append(name)
                break
    return splits


# --------------------------------------------------------------------------- readers


def _add_caption(
    captions: dict[str, list[str]], name: str, caption: str, where: str, problems: Problems
) -> None:
    name, caption = name.strip(), " ".join(caption.split())
    if not name:
        problems.add(f"{where}: empty image name")
    elif not caption:
        problems.add(f"{where}: empty caption for {name!r}")
    else:
        captions.setdefault(name, []).append(caption)


def _read_csv(path: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header] != ["image", "caption"]:
            raise DatasetError(f"{path} row 1: header must be 'image,caption', got {header!r}")
        problems = Problems()
        for row in reader:
            where = f"{path} row {reader.line_num}"
            if not row:
                continue
            if len(row) != 2:
                problems.add(f"{where}: expected 2 fields (image,caption), got {len(row)}")
                continue
            _add_caption(captions, row[0], row[1], where, problems)
    problems.raise_any()
    if not captions:
        raise DatasetError(f"{path}: no captions")
    return captions


def _read_flickr_tokens(path: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    problems = Problems()
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            where = f"{path} line {number}"
            key, tab, caption = line.partition("\t")
            if not tab:
                problems.add(f"{where}: expected 'name.jpg#N<TAB>caption', got {line[:80]!r}")
                continue
            # `#N` numbers the references; a line without it is just as clear.
            name, _, index = key.rpartition("#")
            _add_caption(captions, name if index.isdigit() and name else key, caption, where, problems)
    problems.raise_any()
    if not captions:
        raise DatasetError(f"{path}: no captions")
    return captions


def _read_flickr_splits(root: Path, captions: dict[str, list[str]]) -> dict[str, list[str]] | None:
    present = {s: root / f for s, f in FLICKR_SPLIT_FILES.items() if (root / f).is_file()}
    if not present:
        return None
    splits, problems = {}, Problems()
    for split, path in present.items():
        names = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            name = line.strip()
            if not name:
                continue
            if name not in captions:
                problems.add(f"{path} line {number}: {name!r} has no captions")
            names.append(name)
        splits[split] = names
    problems.raise_any()
    return splits


# Lists in splits.json that are not splits: a partial scenes dataset (--only)
# records which splits it wrote.
NOT_SPLITS = frozenset({"only"})


def _read_splits_json(path: Path, captions: dict[str, list[str]]) -> dict[str, list[str]] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected an object of split name -> image names")
    if not any(isinstance(v, list) for v in data.values()):
        raise DatasetError(f"{path}: no split lists (expected e.g. {{'train': [names]}})")
    splits, problems = {}, Problems()
    for split, names in data.items():
        if not isinstance(names, list) or split in NOT_SPLITS:
            continue  # metadata beside the splits (the scenes generator records its seed)
        for index, name in enumerate(names):
            if name not in captions:
                problems.add(f"{path}: {split}[{index}] {name!r} has no captions")
        splits[split] = list(names)
    problems.raise_any()
    return splits


def _read_karpathy(path: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DatasetError(f"{path}: expected an object with an 'images' list")
    captions: dict[str, list[str]] = {}
    splits: dict[str, list[str]] = {}
    problems = Problems()
    for index, entry in enumerate(images):
        where = f"{path} images[{index}]"
        if not isinstance(entry, dict):
            raise DatasetError(f"{where}: expected an object")
        for key in ("filename", "split", "sentences"):
            if key not in entry:
                raise DatasetError(f"{where}: lacks {key!r}")
        name = entry["filename"]
        if not isinstance(entry["sentences"], list) or not entry["sentences"]:
            raise DatasetError(f"{where}: 'sentences' must be a non-empty list")
        for s_index, sentence in enumerate(entry["sentences"]):
            if not isinstance(sentence, dict) or not isinstance(sentence.get("raw"), str):
                raise DatasetError(f"{where}.sentences[{s_index}]: lacks 'raw' text")
            _add_caption(
                captions, name, sentence["raw"], f"{where}.sentences[{s_index}]", problems
            )
        # Karpathy's "restval" images are training images held out of val.
        split = "train" if entry["split"] == "restval" else entry["split"]
        splits.setdefault(split, []).append(name)
    problems.raise_any()
    if not captions:
        raise DatasetError(f"{path}: no images")
    return captions, splits


def _find_image_dir(root: Path, example: str | None) -> Path:
    for candidate in IMAGE_DIRS:
        folder = root / candidate
        if folder.is_dir() and (example is None or (folder / example).is_file()):
            return folder
    return root / IMAGE_DIRS[0] if (root / IMAGE_DIRS[0]).is_dir() else root
