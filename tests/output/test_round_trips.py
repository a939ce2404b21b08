"""Outputs (capbatch.output): round trips, torn tails, resume, sidecars, the lock."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from capbatch.errors import OutputError, UsageError
from capbatch.output import Output, format_for, open_output, sidecar_path
from capbatch.output_lock import OutputLock, lock_path_for
from capbatch.rows import ROW_FIELDS, Row

TRICKY = [
    'a dog, "running"\non the beach',
    "comma, comma",
    'quote " inside',
    "line\r\nbreaks\rand\ttabs",
    "unicode: café 猫 🐈",
    "",
]


def row(key: str, caption: str | None = "a caption", status: str = "ok", **fields) -> Row:
    values = {
        "key": key,
        "path": fields.pop("path", key),
        "caption": caption if status == "ok" else None,
        "score": fields.pop("score", -0.25 if status == "ok" else None),
        "status": status,
        "error": fields.pop("error", None if status == "ok" else "truncated JPEG"),
        "width": fields.pop("width", 640),
        "height": fields.pop("height", 480),
        "model_id": "scenes-lite0-abc",
    }
    return Row(**values, **fields)


def open_writer(out: Path, fmt: str, *, append: bool, overwrite_sidecars=False) -> Output:
    output = open_output(out, fmt, overwrite_sidecars=overwrite_sidecars)
    output.begin(append=append)
    return output


def read_done(out: Path, fmt: str) -> dict[str, str]:
    return open_output(out, fmt).done()


def drop_keys(out: Path, fmt: str, keys) -> int:
    return open_output(out, fmt).drop(keys)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_row_fields_and_validation():
    assert ROW_FIELDS == tuple(row("k").to_record())
    with pytest.raises(ValueError, match="status"):
        row("k", status="maybe")


def test_non_finite_scores_become_null():
    assert row("k", score=float("-inf")).to_record()["score"] is None
    assert row("k", score=float("nan")).to_record()["score"] is None


def test_format_for():
    assert format_for(Path("x.CSV"), None) == "csv"
    assert format_for(Path("x.ndjson"), None) == "jsonl"
    assert format_for(Path("x.parquet"), None) == "parquet"
    assert format_for(Path("x.anything"), "TXT") == "txt"
    with pytest.raises(UsageError, match="--format"):
        format_for(Path("captions.txt"), None)
    with pytest.raises(UsageError, match="unknown output format"):
        format_for(Path("x.csv"), "xml")


def test_csv_round_trip_with_tricky_text(tmp_path):
    out = tmp_path / "out.csv"
    rows = [row(f'k{i},"odd"\n{i}', caption) for i, caption in enumerate(TRICKY)]
    rows.append(row("photos/caf\udce9.jpg", path="photos/caf\udce9.jpg"))
    rows.append(row("bad.jpg", status="error"))
    writer = open_writer(out, "csv", append=False)
    writer.write(rows[:3])
    writer.write(rows[3:])
    writer.close()
    back = read_csv(out)
    assert [r["key"] for r in back[:-2]] == [r.key for r in rows[:-2]]
    assert [r["caption"] for r in back[: len(TRICKY)]] == TRICKY
    assert back[-2]["key"] == back[-2]["path"] == "photos/caf\\xe9.jpg"
    assert back[-1] == {
        "key": "bad.jpg",
        "path": "bad.jpg",
        "caption": "",
        "score": "",
        "status": "error",
        "error": "truncated JPEG",
        "width": "640",
        "height": "480",
        "model_id": "scenes-lite0-abc",
        "encoder": "",
        "domain_distance": "",
        "in_domain": "",
        "truncated": "",
        "repeated": "",
        "attention": "",
    }
    assert float(back[0]["score"]) == -0.25
    assert out.read_text(encoding="utf-8").count("key,path,caption") == 1
    assert read_done(out, "csv")["bad.jpg"] == "error"


def test_jsonl_round_trip(tmp_path):
    out = tmp_path / "out.jsonl"
    rows = [row(f"k{i}", caption) for i, caption in enumerate(TRICKY)]
    rows.append(row("caf\udce9.jpg", path=None))
    with_writer = open_writer(out, "jsonl", append=False)
    with_writer.write(rows)
    with_writer.close()
    back = read_jsonl(out)
    assert len(out.read_bytes().splitlines()) == len(rows)
    assert [r["caption"] for r in back[: len(TRICKY)]] == TRICKY
    assert back[-1]["key"] == "caf\\xe9.jpg" and back[-1]["path"] is None
    assert back[0]["score"] == -0.25 and back[0]["width"] == 640


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_torn_last_record_is_ignored_then_truncated_on_append(tmp_path, fmt):
    out = tmp_path / f"out.{fmt}"
    writer = open_writer(out, fmt, append=False)
    writer.write([row("a"), row("b", 'multi\nline "caption"')])
    writer.close()
    whole = out.read_bytes()
    # A crash mid-write: half of a row whose caption holds a quoted newline.
    partial = open_writer(tmp_path / f"tmp.{fmt}", fmt, append=False)
    partial.write([row("c", 'torn\n"caption", here')])
    partial.close()
    torn_row = (tmp_path / f"tmp.{fmt}").read_bytes().splitlines(keepends=True)[-1]
    if fmt == "csv":
        torn_row = (tmp_path / f"tmp.{fmt}").read_bytes().split(b"\r\n", 1)[1]
    out.write_bytes(whole + torn_row[: len(torn_row) // 2])

    assert read_done(out, fmt) == {"a": "ok", "b": "ok"}
    writer = open_writer(out, fmt, append=True)
    assert out.read_bytes() == whole  # torn tail cut before appending
    writer.write([row("c")])
    writer.close()
    assert read_done(out, fmt) == {"a": "ok", "b": "ok", "c": "ok"}
    parsed = read_csv(out) if fmt == "csv" else read_jsonl(out)
    assert [r["key"] for r in parsed] == ["a", "b", "c"]


@pytest.mark.parametrize("cut", [0, 5, 40])
def test_csv_torn_header_starts_over(tmp_path, cut):
    out = tmp_path / "out.csv"
    out.write_bytes(b"key,path,caption,score,status,error,width,height,model_id\r\n"[:cut])
    writer = open_writer(out, "csv", append=True)
    writer.write([row("a")])
    writer.close()
    assert [r["key"] for r in read_csv(out)] == ["a"]


def test_csv_append_refuses_a_foreign_file(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("id,label\n1,cat\n")
    with pytest.raises(OutputError, match="not a capbatch CSV"):
        open_writer(out, "csv", append=True)


def test_append_false_starts_over_and_missing_output_reads_empty(tmp_path):
    out = tmp_path / "sub" / "out.jsonl"
    assert read_done(out, "jsonl") == {}
    for key in ("a", "b"):
        writer = open_writer(out, "jsonl", append=False)
        writer.write([row(key)])
        writer.close()
    assert read_done(out, "jsonl") == {"b": "ok"}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_drop_keys_for_retrying_errors(tmp_path, fmt):
    out = tmp_path / f"out.{fmt}"
    writer = open_writer(out, fmt, append=False)
    writer.write([row("a"), row("b", status="error"), row("c")])
    writer.close()
    assert drop_keys(out, fmt, ["b", "zzz"]) == 1
    writer = open_writer(out, fmt, append=True)
    writer.write([row("b")])
    writer.close()
    parsed = read_csv(out) if fmt == "csv" else read_jsonl(out)
    assert [(r["key"], r["status"]) for r in parsed] == [("a", "ok"), ("c", "ok"), ("b", "ok")]


# -- Parquet ------------------------------------------------------------------------------


@pytest.fixture
def parquet():
    return pytest.importorskip("pyarrow.parquet")


def test_parquet_round_trip(tmp_path, parquet):
    out = tmp_path / "out.parquet"
    writer = open_writer(out, "parquet", append=False)
    writer.write([row("a", TRICKY[0]), row("b", status="error")])
    writer.write([row("caf\udce9.jpg", path=None)])
    writer.close()
    table = parquet.read_table(out).to_pylist()
    assert [r["key"] for r in table] == ["a", "b", "caf\\xe9.jpg"]
    assert table[0]["caption"] == TRICKY[0] and table[0]["score"] == -0.25
    assert table[1]["caption"] is None and table[1]["error"] == "truncated JPEG"
    assert list(table[0]) == list(ROW_FIELDS)
    assert not (tmp_path / "out.parquet.parts").exists()


def test_parquet_crash_leaves_readable_parts_and_resume_merges(tmp_path, parquet):
    out = tmp_path / "out.parquet"
    writer = open_writer(out, "parquet", append=False)
    writer.write([row("a"), row("b")])
    writer.write([row("c", status="error")])
    # Killed here: close() never runs; a part was being written when it died.
    parts = tmp_path / "out.parquet.parts"
    (parts / "_writing-part-00000002.parquet").write_bytes(b"PAR1 half a file")
    assert not out.exists()
    readable = parquet.read_table(parts, columns=["key"]).column("key").to_pylist()
    assert readable == ["a", "b", "c"]
    assert read_done(out, "parquet") == {"a": "ok", "b": "ok", "c": "error"}

    drop_keys(out, "parquet", ["c"])  # --retry-errors
    writer = open_writer(out, "parquet", append=True)
    writer.write([row("c"), row("d")])
    writer.close()
    keys = parquet.read_table(out).column("key").to_pylist()
    assert keys == ["a", "b", "c", "d"]
    assert read_done(out, "parquet")["c"] == "ok"
    assert not parts.exists()


def test_parquet_crash_after_merge_does_not_duplicate(tmp_path, parquet):
    out = tmp_path / "out.parquet"
    writer = open_writer(out, "parquet", append=False)
    writer.write([row("a"), row("b")])
    writer.close()
    # Simulate a crash between renaming the merged file and deleting the parts.
    writer = open_writer(out, "parquet", append=True)
    writer.write([row("c")])
    parts = sorted((tmp_path / "out.parquet.parts").iterdir())
    saved = [(p.name, p.read_bytes()) for p in parts]
    writer.close()
    (tmp_path / "out.parquet.parts").mkdir()
    for name, data in saved:
        (tmp_path / "out.parquet.parts" / name).write_bytes(data)
    writer = open_writer(out, "parquet", append=True)
    writer.write([row("d")])
    writer.close()
    assert parquet.read_table(out).column("key").to_pylist() == ["a", "b", "c", "d"]


def test_parquet_refuses_foreign_or_broken_files(tmp_path, parquet):
    import pyarrow as pa

    foreign = tmp_path / "foreign.parquet"
    parquet.write_table(pa.table({"id": [1]}), foreign)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(OutputError, match="not a capbatch Parquet"):
        open_writer(foreign, "parquet", append=True)
    with pytest.raises(OutputError, match="not a readable Parquet"):
        read_done(broken, "parquet")


# -- sidecars -----------------------------------------------------------------------------


def test_sidecars_beside_images_never_clobbered(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.png", "c.jpg", "d.jpg", "odd.txt"):
        (images / name).write_bytes(b"")
    (images / "b.txt").write_text("hand-written caption\n")
    (images / "c.txt").write_text("same caption\n")  # left by a killed run
    journal = tmp_path / "run.jsonl"
    writer = open_writer(journal, "txt", append=False)
    written = writer.write(
        [
            row("a", "a red square", path=str(images / "a.jpg")),
            row("b", "new caption", path=str(images / "b.png")),
            row("c", "same caption", path=str(images / "c.jpg")),
            row("d", status="error", path=str(images / "d.jpg")),
            row("x.tar::m.jpg", "member caption", path=None),
            row("odd", "named .txt", path=str(images / "odd.txt")),
        ]
    )
    writer.close()
    # The write contract: the rows come back as written, the refused one an error.
    assert [r.status for r in written] == ["ok", "error", "ok", "error", "error", "ok"]
    assert written[1].error == "sidecar b.txt exists (use --overwrite-sidecars)"
    assert written[4].error == (
        "archive member: no folder of its own for a sidecar (use --sidecar-dir DIR)"
    )
    assert (images / "a.txt").read_text() == "a red square\n"
    assert (images / "b.txt").read_text() == "hand-written caption\n"
    assert not (images / "d.txt").exists()
    assert (images / "odd.txt.txt").read_text() == "named .txt\n"
    assert sorted(p.name for p in images.iterdir() if ".tmp" in p.name) == []
    records = {r["key"]: r for r in read_jsonl(journal)}
    assert records["b"]["status"] == "error" and "b.txt exists" in records["b"]["error"]
    assert records["c"]["status"] == "ok"
    assert records["x.tar::m.jpg"]["caption"] == "member caption"
    assert read_done(journal, "txt")["d"] == "error"

    writer = open_writer(journal, "txt", append=True, overwrite_sidecars=True)
    writer.write([row("b", "new caption", path=str(images / "b.png"))])
    writer.close()
    assert (images / "b.txt").read_text() == "new caption\n"


def test_sidecar_path():
    assert sidecar_path("d/photo.JPG") == "d/photo.txt"
    assert sidecar_path("d/noext") == "d/noext.txt"


# -- the lock -----------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys
    from capbatch.output_lock import OutputLock
    with OutputLock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()
    """
)


def test_lock_refuses_a_second_run_and_names_it(tmp_path):
    out = tmp_path / "out.csv"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError) as refused:
            OutputLock(out).acquire()
        message = str(refused.value)
        assert f"pid {holder.pid}" in message and str(out) in message
        assert os.uname().nodename in message
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the kernel drops the flock
        holder.wait()
    assert lock_path_for(out).exists()  # a stale file from the killed run...
    with OutputLock(out) as lock:  # ...does not block the next one
        assert lock.held
        assert json.loads(lock_path_for(out).read_text())["pid"] == os.getpid()
    assert not lock_path_for(out).exists()


def test_lock_in_one_process_is_exclusive_too(tmp_path):
    out = tmp_path / "out.jsonl"
    with OutputLock(out):
        with pytest.raises(OutputError, match="being written by another capbatch run"):
            OutputLock(out).acquire()
    with OutputLock(out):
        pass
