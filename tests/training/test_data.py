"""Dataset readers: the three layouts from tiny fixtures, and clear errors naming the row."""

from __future__ import annotations

import json

import pytest
from capbatch.training.data import DatasetError, hash_splits, read_dataset

from tests.training.datasets import (
    shape_scenes,
    write_csv_dataset,
    write_flickr_dataset,
    write_karpathy_dataset,
)


@pytest.fixture(scope="module")
def scenes():
    return shape_scenes(limit=8)


def test_csv_layout_with_splits_keeps_every_reference(tmp_path, scenes):
    names = [s[0] for s in scenes]
    splits = {"train": names[:6], "val": names[6:7], "test": names[7:], "seed": 3}
    extra = {names[0]: ["another reference", "and a third"]}
    root = write_csv_dataset(tmp_path, scenes, splits, extra)
    dataset = read_dataset(root)
    assert dataset.layout == "csv"
    assert [im.name for im in dataset.split("train")] == names[:6]
    first = dataset.split("train")[0]
    assert first.captions == (scenes[0][1], "another reference", "and a third")
    assert first.path == root / "images" / names[0] and first.path.is_file()
    assert set(dataset.splits) == {"train", "val", "test"}  # "seed" is metadata
    with pytest.raises(DatasetError, match="no split 'test_novel'"):
        dataset.split("test_novel")


def test_csv_layout_without_splits_uses_stable_hash_split(tmp_path, scenes):
    dataset = read_dataset(write_csv_dataset(tmp_path, scenes))
    together = sorted(im.name for split in dataset.splits.values() for im in split)
    assert together == sorted(s[0] for s in scenes)
    assert hash_splits([s[0] for s in scenes]) == {
        k: [im.name for im in v] for k, v in dataset.splits.items()
    }


def test_csv_malformed_row_names_file_and_row(tmp_path, scenes):
    root = write_csv_dataset(tmp_path, scenes)
    path = root / "captions.csv"
    lines = path.read_text().splitlines()
    lines.insert(4, "shape_001.png,a caption,an extra field")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"captions.csv row 5: expected 2 fields"):
        read_dataset(root)


def test_csv_bad_header_and_empty_caption(tmp_path, scenes):
    root = write_csv_dataset(tmp_path, scenes)
    path = root / "captions.csv"
    text = path.read_text()
    path.write_text(text.replace("image,caption", "file,text", 1))
    with pytest.raises(DatasetError, match="row 1: header must be 'image,caption'"):
        read_dataset(root)
    path.write_text(text + "shape_000.png,   \n")
    with pytest.raises(DatasetError, match=r"row 10: empty caption for 'shape_000.png'"):
        read_dataset(root)


def test_missing_image_is_named(tmp_path, scenes):
    root = write_csv_dataset(tmp_path, scenes)
    (root / "images" / scenes[3][0]).unlink()
    with pytest.raises(DatasetError, match=rf"image '{scenes[3][0]}' \(in captions\) not found at"):
        read_dataset(root)


def test_splits_json_naming_unknown_image(tmp_path, scenes):
    root = write_csv_dataset(tmp_path, scenes, {"train": ["nope.png"]})
    with pytest.raises(DatasetError, match=r"splits.json: train\[0\] 'nope.png' has no captions"):
        read_dataset(root)


def test_flickr8k_layout(tmp_path, scenes):
    dataset = read_dataset(write_flickr_dataset(tmp_path, scenes))
    assert dataset.layout == "flickr8k"
    assert dataset.image_dir == tmp_path / "Flicker8k_Dataset"
    assert [len(dataset.split(s)) for s in ("train", "val", "test")] == [6, 1, 1]
    image = dataset.split("test")[0]
    assert image.captions == (scenes[-1][1], scenes[-1][1].upper() + " .")


def test_flickr8k_malformed_line_is_named(tmp_path, scenes):
    root = write_flickr_dataset(tmp_path, scenes)
    path = root / "Flickr8k.token.txt"
    lines = path.read_text().splitlines()
    lines[2] = "shape_001.png a caption without a tab"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DatasetError, match=r"Flickr8k.token.txt line 3: expected 'name.jpg#N<TAB>caption'"
    ):
        read_dataset(root)


def test_flickr8k_split_file_with_unknown_image(tmp_path, scenes):
    root = write_flickr_dataset(tmp_path, scenes)
    (root / "Flickr_8k.testImages.txt").write_text("ghost.jpg\n")
    with pytest.raises(DatasetError, match=r"testImages.txt line 1: 'ghost.jpg' has no captions"):
        read_dataset(root)


def test_karpathy_layout_restval_counts_as_train(tmp_path, scenes):
    dataset = read_dataset(write_karpathy_dataset(tmp_path, scenes))
    assert dataset.layout == "karpathy"
    assert len(dataset.split("train")) == 4  # train + restval
    assert len(dataset.split("val")) == 2 and len(dataset.split("test")) == 2
    assert dataset.split("val")[0].captions == (scenes[2][1], scenes[2][1] + ".")


def test_karpathy_malformed_entry_is_named(tmp_path, scenes):
    root = write_karpathy_dataset(tmp_path, scenes)
    path = root / "dataset_flickr8k.json"
    data = json.loads(path.read_text())
    del data["images"][5]["sentences"][1]["raw"]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"images\[5\].sentences\[1\]: lacks 'raw'"):
        read_dataset(root)


def test_no_dataset_files(tmp_path):
    with pytest.raises(DatasetError, match="no dataset found"):
        read_dataset(tmp_path)
