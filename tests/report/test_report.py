"""`capbatch report` without a browser: reading outputs, thumbnails, escaping, the CLI.

The page itself is exercised in a real Chromium by tests/report/test_browser.py.
"""

from __future__ import annotations

import base64
import csv
import importlib.util
import io
import json
import re
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from capbatch.attention_maps import save_attention_map
from capbatch.cli import main
from capbatch.report import open_rows, write_report
from capbatch.report.attention import find_sheet, sheet_layout
from capbatch.report.rows import to_report_row
from tests.io_fixtures import BLUE, GREEN, RED, encode, solid
from tests.runtime_fakes import make_fake_bundle

FIELDS = ["key", "path", "caption", "score", "status", "error", "width", "height", "model_id"]
HOSTILE_KEY = "<script>alert(1)</script>.png"


def page_rows(html: Path) -> list[dict]:
    """The rows embedded in a report page, as the page's script sees them."""
    text = html.read_text(encoding="utf-8")
    match = re.search(
        r'<script type="application/json" id="report-rows">(.*?)</script>', text, re.S
    )
    assert match, "no rows block in the page"
    return json.loads(match.group(1))


def write_csv(path: Path, records: list[dict], fields: list[str] | None = None) -> Path:
    fields = fields or FIELDS
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fields)
        writer.writeheader()
        for record in records:
            writer.writerow({name: record.get(name, "") for name in fields})
    return path


def record(key: str, caption: str = "a red square", **fields) -> dict:
    base = {
        "key": key, "path": key, "caption": caption, "score": -0.5, "status": "ok",
        "error": None, "width": 40, "height": 30, "model_id": "m-1",
    }  # fmt: skip
    base.update(fields)
    return base


def decode_uri(uri: str) -> Image.Image:
    assert uri.startswith("data:image/")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")


def mean_colour(image: Image.Image) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(image, dtype=np.float64).mean(axis=(0, 1)).round())


# -- reading outputs --------------------------------------------------------------------


def test_csv_jsonl_and_parquet_outputs_read_the_same(tmp_path):
    records = [
        record("a.png", score=-0.25),
        record("b.png", caption=None, score=None, status="error", error="truncated PNG"),
    ]
    write_csv(tmp_path / "run.csv", records)
    (tmp_path / "run.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    readers = [open_rows(tmp_path / "run.csv"), open_rows(tmp_path / "run.jsonl")]
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(records), tmp_path / "run.parquet")
    readers.append(open_rows(tmp_path / "run.parquet"))
    seen = [
        [(r.key, r.caption, r.score, r.status, r.error, r.width) for r in rows] for rows in readers
    ]
    assert seen[0] == [
        ("a.png", "a red square", -0.25, "ok", None, 40),
        ("b.png", None, None, "error", "truncated PNG", 40),
    ]
    assert seen[1] == seen[0] and seen[2] == seen[0]
    assert [rows.fmt for rows in readers] == ["csv", "jsonl", "parquet"]


def test_unknown_columns_are_kept_and_missing_ones_are_none():
    row = to_report_row(
        {"key": "x.jpg", "caption": "two dots", "in_domain": "False", "truncated": "1",
         "repeated": "true", "domain_distance": "0.75", "lang": "en", "score": "nan"},
        index=4,
    )  # fmt: skip
    assert (row.index, row.key, row.caption, row.status) == (4, "x.jpg", "two dots", "ok")
    assert (row.in_domain, row.truncated, row.domain_distance) == (False, True, 0.75)
    assert row.repeated is True
    assert row.score is None and row.width is None and row.model_id is None
    assert row.extra == {"lang": "en"}
    failed = to_report_row({"key": "y.jpg", "status": "error"}, index=0)
    assert not failed.ok and failed.error == "error (no reason given)"


def test_a_torn_jsonl_tail_is_counted_not_fatal(tmp_path):
    out = tmp_path / "run.jsonl"
    out.write_text(json.dumps(record("a.png")) + "\n" + '{"key": "b.png", "capt')
    html = write_report(out, tmp_path / "r.html").out
    assert [row["key"] for row in page_rows(html)] == ["a.png"]
    assert 'id="count-unreadable">1 (skipped)' in html.read_text()


def test_a_ray_shards_folder_is_read_in_shard_order(tmp_path):
    shards = tmp_path / "out.shards"
    shards.mkdir()
    for index, keys in enumerate([["a", "b"], ["c"]]):
        lines = [json.dumps({"shard": index, "end": False, **record(k)}) for k in keys]
        lines.append(json.dumps({"shard": index, "end": True, "count": len(keys), "key": ""}))
        (shards / f"shard-{index:05d}.jsonl").write_text("\n".join(lines) + "\n")
    rows = list(open_rows(shards))
    assert [r.key for r in rows] == ["a", "b", "c"] and rows[0].extra == {}


# -- the page ---------------------------------------------------------------------------


def test_every_user_string_is_escaped(tmp_path):
    nasty_caption = "</script><script>alert(2)</script>"
    nasty_reason = '<img src=x onerror="alert(3)"> & more'
    run = write_csv(
        tmp_path / "run.csv",
        [
            record(HOSTILE_KEY, caption=nasty_caption, model_id="<b>model</b>"),
            record("e.png", caption=None, status="error", error=nasty_reason),
        ],
    )
    html = write_report(run, tmp_path / "r.html").out
    text = html.read_text(encoding="utf-8")
    assert len(re.findall(r"<script", text)) == 3  # config, rows, the page's own script
    assert "alert(1)" not in text.replace("\\u003cscript\\u003ealert(1)", "")
    for raw in (HOSTILE_KEY, nasty_caption, nasty_reason, "<b>model</b>"):
        assert raw not in text
    assert "&lt;b&gt;model&lt;/b&gt;" in text  # header: autoescaped
    assert "&lt;img src=x onerror=&#34;alert(3)&#34;&gt; &amp; more" in text  # error list
    rows = page_rows(html)
    assert (rows[0]["key"], rows[0]["caption"]) == (HOSTILE_KEY, nasty_caption)
    assert rows[1]["error"] == nasty_reason


def test_the_page_asks_for_nothing_from_the_network(tmp_path):
    run = write_csv(tmp_path / "run.csv", [record("a.png")])
    text = write_report(run, tmp_path / "r.html").out.read_text()
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text)
    assert "@import" not in text and "url(http" not in text
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', text).group(1)
    assert policy.startswith("default-src &#39;none&#39;; img-src data:;")


def test_header_counts_errors_by_reason_and_flags_when_present(tmp_path):
    records = [
        record("a.png", in_domain="true", truncated="false", repeated="true"),
        record("b.png", in_domain="false", truncated="true", repeated="false"),
        record("c.png", status="error", caption="", error="image too large: 900 pixels > limit 10"),
        record("d.png", status="error", caption="", error="image too large: 800 pixels > limit 10"),
        record("e.png", status="error", caption="", error="empty file (0 bytes)"),
    ]
    run = write_csv(tmp_path / "run.csv", records, FIELDS + ["in_domain", "truncated", "repeated"])
    result = write_report(run, tmp_path / "r.html")
    text = result.out.read_text()
    assert 'id="count-errors">3 (60.0 %)' in text
    assert 'id="count-out-of-domain">1 (20.0 %)' in text and 'id="count-in-domain">1' in text
    assert 'id="count-truncated">1 (20.0 %)' in text
    assert 'id="out-of-domain"' in text and 'id="truncated"' in text
    assert 'id="count-repeated">1 (20.0 %)' in text and 'id="repeated"' in text
    assert [row.get("repeated") for row in page_rows(result.out)] == [True, False, None, None, None]
    groups = {g.pattern: g.count for g in result.summary.reasons}
    assert groups == {"image too large: # pixels > limit #": 2, "empty file (# bytes)": 1}
    assert [row.get("reason") for row in page_rows(result.out)] == [None, None, 0, 0, 1]

    plain = write_report(write_csv(tmp_path / "p.csv", records[:1]), tmp_path / "p.html")
    plain_text = plain.out.read_text()
    assert 'id="count-out-of-domain"' not in plain_text and 'id="truncated"' not in plain_text
    assert 'id="repeated"' not in plain_text


# -- thumbnails -------------------------------------------------------------------------


@pytest.fixture
def image_tree(tmp_path):
    """photos/red.png, shards.tar (green.jpg, blue.png), more.zip (blue.png)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "red.png").write_bytes(encode(solid(RED, (60, 40)), "PNG"))
    with tarfile.open(tmp_path / "shards.tar", "w") as tar:
        for name, data in (
            ("green.jpg", encode(solid(GREEN), "JPEG")),
            ("blue.png", encode(solid(BLUE), "PNG")),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with zipfile.ZipFile(tmp_path / "more.zip", "w") as archive:
        archive.writestr("blue.png", encode(solid(BLUE), "PNG"))
    return tmp_path


def test_thumbnails_from_files_and_archive_members(image_tree, monkeypatch):
    monkeypatch.chdir(image_tree)
    keys = ["photos/red.png", "shards.tar::blue.png", "shards.tar::green.jpg", "more.zip::blue.png",
            "shards.tar::gone.png", "photos/missing.png"]  # fmt: skip
    records = [record(k, path="" if "::" in k else k) for k in keys]
    run = write_csv(image_tree / "run.csv", records)
    result = write_report(run, image_tree / "r.html", thumb_size=32, workers=2)
    rows = page_rows(result.out)
    colours = [mean_colour(decode_uri(row["img"])) for row in rows[:4]]
    # Out of archive order on purpose: blue.png comes after green.jpg in shards.tar.
    assert [c.index(max(c)) for c in colours] == [0, 2, 1, 2]
    assert all(decode_uri(row["img"]).size == (32, 32) for row in rows[:4])
    assert rows[4]["imgError"] == "member not found in the archive"
    assert rows[5]["imgError"] == "image not found"
    assert result.thumbnails == 4


def test_thumbnails_keep_row_order_through_the_pool(tmp_path):
    records = []
    for index in range(60):
        colour = (index * 4, 255 - index * 4, 128)
        path = tmp_path / f"{index:03d}.png"
        solid(colour, (20 + index, 30)).save(path)
        records.append(record(str(path)))
    run = write_csv(tmp_path / "run.csv", records)
    rows = page_rows(write_report(run, tmp_path / "r.html", thumb_size=32, workers=3).out)
    assert [row["i"] for row in rows] == list(range(60))
    for index, row in enumerate(rows):
        red, green, _ = mean_colour(decode_uri(row["img"]))
        assert abs(red - index * 4) <= 3 and abs(green - (255 - index * 4)) <= 3


def test_link_images_references_originals_relative_to_the_page(image_tree, monkeypatch):
    monkeypatch.chdir(image_tree)
    odd = image_tree / "photos" / "a b#1.png"
    odd.write_bytes(encode(solid(RED), "PNG"))
    (image_tree / "photos" / "grey.ppm").write_bytes(encode(solid((90, 90, 90)), "PPM"))
    records = [
        record("photos/a b#1.png"),
        record("photos/grey.ppm"),
        record("shards.tar::green.jpg", path=""),
    ]
    run = write_csv(image_tree / "run.csv", records)
    (image_tree / "site").mkdir()
    rows = page_rows(write_report(run, image_tree / "site" / "r.html", link_images=True).out)
    assert rows[0]["img"] == "../photos/a%20b%231.png"
    assert rows[1]["img"].startswith("data:image/")  # browsers cannot show PPM: embedded
    assert rows[2]["img"].startswith("data:image/")  # archive members have nothing to link
    assert "img-src data: file: &#39;self&#39;" in (image_tree / "site" / "r.html").read_text()


# -- attention --------------------------------------------------------------------------


def test_sheet_layout_reads_attention_maps_geometry(tmp_path):
    pixels = np.full((64, 64, 3), 200, np.uint8)
    for words, columns, rows in ((["one"], 2, 1), (["a"] * 6, 5, 2), (["a"] * 4, 5, 1)):
        alphas = np.full((len(words) + 1, 16), 1 / 16, np.float32)
        sheet = save_attention_map(tmp_path, "k.png", pixels, words, alphas)
        with Image.open(sheet) as image:
            layout = sheet_layout(*image.size, steps_hint=len(words) + 1)
        assert (layout.panel, layout.columns, layout.rows) == (64, columns, rows)
    assert sheet_layout(100, 37, 3) is None


def test_attention_is_found_by_key_or_by_column(tmp_path):
    pixels = np.zeros((48, 48, 3), np.uint8)
    alphas = np.eye(3, 9, dtype=np.float32)
    sheet = save_attention_map(tmp_path / "maps", "photos/a.png", pixels, ["two", "dots"], alphas)
    assert find_sheet("photos/a.png", None, tmp_path / "maps", tmp_path) == sheet
    assert find_sheet("other.png", sheet.name, tmp_path / "maps", tmp_path) == sheet
    assert find_sheet("photos/b.png", None, tmp_path / "maps", tmp_path) is None

    run = write_csv(tmp_path / "run.csv", [record("photos/a.png", caption="two dots")])
    rows = page_rows(write_report(run, tmp_path / "r.html", attention_dir=tmp_path / "maps").out)
    attention = rows[0]["attention"]
    assert (attention["panel"], attention["columns"], attention["rows"], attention["steps"]) == (
        48,
        3,
        1,
        3,
    )
    assert attention["src"].startswith("data:image/")


# -- the CLI ----------------------------------------------------------------------------


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_cli_captions_then_reports_with_attention(tmp_path, capsys):
    bundle = make_fake_bundle(tmp_path / "bundle")
    photos = tmp_path / "photos"
    photos.mkdir()
    for index, colour in enumerate((RED, GREEN, BLUE)):
        solid(colour, (40 + index, 30)).save(photos / f"{index}.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    run = tmp_path / "run.jsonl"
    code, _ = run_cli(capsys, "caption", photos, "--out", run, "--model", bundle,
                      "--attention-dir", tmp_path / "maps", "--quiet")  # fmt: skip
    assert code == 1  # broken.jpg is an error row
    code, err = run_cli(capsys, "report", run, "--out", tmp_path / "r.html",
                        "--attention-dir", tmp_path / "maps")  # fmt: skip
    assert code == 0, err
    assert "report of 4 rows (3 captioned, 1 errors, 3 with images)" in err
    rows = page_rows(tmp_path / "r.html")
    assert [row["ok"] for row in rows] == [True, True, True, False]
    assert all(row["img"].startswith("data:image/") for row in rows[:3])
    assert all(row["attention"]["steps"] >= 1 for row in rows[:3])
    assert rows[3]["error"] == "truncated JPEG" and "img" not in rows[3]


def test_cli_says_when_no_image_was_found(tmp_path, capsys):
    run = write_csv(tmp_path / "run.csv", [record("photos/elsewhere.png")])
    code, err = run_cli(capsys, "report", run, "--out", tmp_path / "r.html", "-q")
    assert code == 0 and "no image of the run was found" in err
    assert page_rows(tmp_path / "r.html")[0]["imgError"] == "image not found"


def test_cli_refuses_bad_input_in_one_line(tmp_path, capsys):
    code, err = run_cli(capsys, "report", tmp_path / "nothing.csv", "--out", tmp_path / "r.html")
    assert (
        code == 2
        and err.strip() == f"capbatch: error: no such output file: {tmp_path / 'nothing.csv'}"
    )
    run = write_csv(tmp_path / "run.csv", [record("a.png")])
    code, err = run_cli(capsys, "report", run, "--out", run)
    assert code == 2 and "would overwrite the run output" in err
    assert run.read_text().startswith("key,path")
    code, err = run_cli(capsys, "report", tmp_path, "--out", tmp_path / "r.html")
    assert code == 2 and "folder without capbatch shards" in err
    assert not (tmp_path / "r.html").exists()


def test_the_docs_python_example_runs(tmp_path, monkeypatch):
    docs = (Path(__file__).resolve().parents[2] / "docs" / "report.md").read_text()
    example = re.search(r"```python\n(.*?)```", docs, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    write_csv(
        tmp_path / "captions.csv", [record("a.png"), record("b.png", status="error", error="x")]
    )
    (tmp_path / "maps").mkdir()
    namespace: dict = {}
    exec(compile(example, "docs/report.md", "exec"), namespace)
    assert (namespace["result"].summary.rows, namespace["result"].summary.errors) == (2, 1)
    assert (tmp_path / "report.html").is_file()


def test_scale_benchmark_runs_tiny(tmp_path):
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "report_scale.py"
    spec = importlib.util.spec_from_file_location("report_scale", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main(["--rows", "24", "--small", "8", "--distinct", "3", "--no-browser",
                          "--workers", "1", "--out-json", str(tmp_path / "r.json")])  # fmt: skip
    assert report["large_embedded"]["peak_rss_mb"] > 0
    assert report["large_embedded"]["html_mb"] > report["large_linked"]["html_mb"]
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == 24


def test_report_runs_without_torch(tmp_path):
    from tests.runtime.test_captioner import run_without_torch

    solid(RED).save(tmp_path / "a.png")
    write_csv(tmp_path / "run.csv", [record("a.png")])
    done = run_without_torch(
        tmp_path,
        """
        import sys
        from capbatch.cli import main
        code = main(["report", "run.csv", "--out", "r.html", "-q"])
        assert code == 0, code
        assert "torch" not in sys.modules
        print("ok")
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_csv_cells_guarded_against_formulas_read_back_as_they_were(tmp_path):
    from capbatch.report.rows import open_rows

    out = tmp_path / "run.csv"
    out.write_text(
        "key,path,caption,score,status,error,width,height,model_id\n"
        "'=HYPERLINK(1).png,'=HYPERLINK(1).png,a red circle,-0.1,ok,,10,10,m\n",
        encoding="utf-8",
    )
    (row,) = list(open_rows(out))
    assert row.key == "=HYPERLINK(1).png"
