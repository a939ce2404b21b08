"""`capbatch report` at scale: generation time and peak RSS, then the page in headless Chromium.

    python benchmarks/report_scale.py --rows 10000 --out-json benchmarks/results/report_scale.json

Makes --distinct 640x480 JPEGs (shapes on noise, photo-like to compress) and a
CSV of --rows rows cycling over them (2 % error rows, in_domain/truncated
columns), so every row costs a real decode + thumbnail. Each report is
written by a fresh `python -m capbatch report` process; its peak RSS is the
kernel's VmHWM of that process, polled from /proc. Runs --small rows too, to
show memory stays flat in the number of rows. The page is then opened from
file:// in the system Chromium (Playwright): load = navigation start until the
script has rendered the first page (body[data-ready]); page turn = "next"
click until the new cards are in; scroll = the longest gap between animation
frames while scrolling one page of cards. A measurement, never a test bound.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

FIELDS = ["key", "path", "caption", "score", "status", "error", "width", "height", "model_id",
          "in_domain", "truncated"]  # fmt: skip
WORDS = ("a", "large", "small", "red", "green", "blue", "circle", "square", "above", "below")


def make_images(directory: Path, count: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        # Smooth colour fields plus fine grain: compresses like a photo, not like pure noise.
        coarse = Image.fromarray(rng.integers(40, 220, (12, 16, 3), dtype=np.uint8), "RGB")
        smooth = np.asarray(coarse.resize((640, 480), Image.Resampling.BICUBIC), dtype=np.int16)
        grain = rng.integers(-12, 13, (480, 640, 3), dtype=np.int16)
        image = Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y, r = (
                int(rng.integers(40, 600)),
                int(rng.integers(40, 440)),
                int(rng.integers(20, 90)),
            )
            draw.ellipse(
                (x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3))
            )
        path = directory / f"img-{index:05d}.jpg"
        image.save(path, quality=85)
        paths.append(path)
    return paths


def write_rows(path: Path, images: list[Path], rows: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(FIELDS)
        for index in range(rows):
            image = images[index % len(images)]
            key = f"{image.parent.name}/{index:06d}/{image.name}"
            if rng.random() < 0.02:
                writer.writerow(
                    [key, str(image), "", "", "error", "truncated JPEG", "", "", "m", "", ""]
                )
                continue
            caption = " ".join(rng.choice(WORDS, int(rng.integers(3, 10))))
            score = f"{-rng.random():.6f}"
            writer.writerow([key, str(image), caption, score, "ok", "", 640, 480, "bench-model",
                             str(rng.random() > 0.1).lower(), str(rng.random() < 0.05).lower()])  # fmt: skip


def peak_rss_run(command: list[str]) -> tuple[float, int, str]:
    """(seconds, peak RSS in bytes, stderr) of one child process."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    peak = 0
    while child.poll() is None:
        try:
            status = Path(f"/proc/{child.pid}/status").read_text()
            line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
            peak = max(peak, int(line.split()[1]) * 1024)
        except (OSError, StopIteration, ValueError):
            pass
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    stderr = child.stderr.read()
    if child.returncode != 0:
        raise SystemExit(f"report failed ({child.returncode}): {stderr}")
    return elapsed, peak, stderr


def generate(run: Path, html: Path, link_images: bool, workers: int | None) -> dict:
    command = [sys.executable, "-m", "capbatch", "report", str(run), "--out", str(html)]
    command += ["--link-images"] if link_images else []
    command += ["--workers", str(workers)] if workers else []
    elapsed, peak, _ = peak_rss_run(command)
    return {"generate_s": round(elapsed, 2), "peak_rss_mb": round(peak / 2**20, 1),
            "html_mb": round(html.stat().st_size / 2**20, 1)}  # fmt: skip


SCROLL_PROBE = """async () => {
  const gaps = []; let last = performance.now();
  const end = document.body.scrollHeight - innerHeight;
  for (let y = 0; y <= end; y += 60) {
    scrollTo(0, y);
    await new Promise(r => requestAnimationFrame(r));
    const now = performance.now(); gaps.push(now - last); last = now;
  }
  gaps.sort((a, b) => a - b);
  const ms = (x) => Math.round(x * 10) / 10;
  return {frames: gaps.length, median: ms(gaps[gaps.length >> 1]), max: ms(gaps[gaps.length - 1])};
}"""


def browse(html: Path, chromium: str, loads: int = 3) -> dict:
    from playwright.sync_api import sync_playwright

    results = {"load_s": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        for _ in range(loads):  # a fresh context each time: no cache carried over
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            started = time.perf_counter()
            page.goto(html.resolve().as_uri(), timeout=120_000)
            page.wait_for_selector("body[data-ready=true]", timeout=120_000)
            results["load_s"].append(round(time.perf_counter() - started, 2))
            context.close()
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.goto(html.resolve().as_uri(), timeout=120_000)
        page.wait_for_selector("body[data-ready=true]", timeout=120_000)
        results["cards_in_dom"] = page.locator(".card").count()
        started = time.perf_counter()
        page.click("#next")
        page.wait_for_function("document.getElementById('page').textContent.startsWith('page 2')")
        results["page_turn_ms"] = round((time.perf_counter() - started) * 1000, 1)
        results["scroll_frames_ms"] = page.evaluate(SCROLL_PROBE)
        context.close()
        browser.close()
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=1_000, help="a smaller run, for flat memory")
    parser.add_argument(
        "--distinct", type=int, default=500, help="distinct images the rows cycle over"
    )
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--out-json", type=Path)
    args = parser.parse_args(argv)
    report = {"rows": args.rows, "small": args.small, "distinct_images": args.distinct,
              "loadavg_at_start": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="report-scale-") as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        images = make_images(root / "images", args.distinct)
        for label, rows in (("small", args.small), ("large", args.rows)):
            run = root / f"{label}.csv"
            write_rows(run, images, rows)
            report[f"{label}_embedded"] = generate(run, root / f"{label}.html", False, args.workers)
        report["large_linked"] = generate(
            root / "large.csv", root / "linked.html", True, args.workers
        )
        if not args.no_browser:
            report["browser_embedded"] = browse(root / "large.html", args.chromium)
            report["browser_linked"] = browse(root / "linked.html", args.chromium)
    report["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
