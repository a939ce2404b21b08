"""PNG plots from the benchmark JSON files (needs matplotlib: the `bench` extra).

    python benchmarks/plots.py --model-json benchmarks/results/model_cpu.json \
        --e2e-json benchmarks/results/end_to_end.json --out-dir docs --out-json benchmarks/results/plots.json

* bench_throughput.png: images/s vs batch size, per configuration: capbatch, PyTorch
  eager batched, and the one-image reference loop (flat: it has no batch);
* bench_split.png: capbatch's time per image split into JPEG decode + preprocess
  (end_to_end.json), encoder and decoder steps (model_cpu.json), per batch size; each
  stage on all cores, so a bar is 1 / limit of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as common  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-json", type=Path, required=True)
    parser.add_argument("--e2e-json", type=Path, default=None)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--out-json", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="accepted for the smoke test")
    return parser.parse_args(argv)


def plot_throughput(model: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = model["configs"]
    figure, axes = plt.subplots(1, len(configs), figsize=(4.5 * len(configs), 3.8), squeeze=False)
    for axis, config in zip(axes[0], configs):
        batches = [r["batch"] for r in config["rows"]]
        for key, label, style in (("capbatch_img_s", "capbatch (ONNX Runtime)", "o-"),
                                  ("torch_batched_img_s", "PyTorch eager, batched", "s--"),
                                  ("reference_img_s", "reference loop (1 image)", ":")):  # fmt: skip
            axis.plot(batches, [r[key] for r in config["rows"]], style, label=label)
        axis.set_xscale("log", base=2)
        axis.set_xticks(batches, [str(b) for b in batches])
        axis.set_xlabel("batch size")
        axis.set_ylabel("images/s")
        axis.set_title(f"{config['config']}, {config['steps']} steps/image")
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.suptitle(f"model only, CPU ({model['machine']['usable_cores']} cores)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_split(model: dict, e2e: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Wall ms per image with each stage on all cores: the bars add up to 1 / limit.
    decode_ms = 1e3 / e2e["result"]["decode_img_s"] if e2e else 0.0
    labels, encoder, steps = [], [], []
    for config in model["configs"]:
        for row in config["rows"]:
            labels.append(f"{config['config']}\nb{row['batch']}")
            encoder.append(row["encoder_ms_per_img"])
            steps.append(row["steps_ms_per_img"])
    figure, axis = plt.subplots(figsize=(max(6, 0.8 * len(labels)), 4))
    positions = range(len(labels))
    decode = [decode_ms] * len(labels)
    axis.bar(positions, decode, label="JPEG decode + resize")
    axis.bar(positions, encoder, bottom=decode, label="encoder.onnx")
    bottoms = [d + e for d, e in zip(decode, encoder)]
    axis.bar(positions, steps, bottom=bottoms, label="decoder steps")
    axis.set_xticks(list(positions), labels, fontsize=7)
    axis.set_ylabel("wall ms per image, all cores")
    axis.set_title("capbatch time per image")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None) -> dict:
    args = parse_args(argv)
    model = json.loads(args.model_json.read_text())
    e2e = json.loads(args.e2e_json.read_text()) if args.e2e_json else None
    args.out_dir.mkdir(parents=True, exist_ok=True)
    throughput, split = args.out_dir / "bench_throughput.png", args.out_dir / "bench_split.png"
    plot_throughput(model, throughput)
    plot_split(model, e2e, split)
    results = {"command": common.command_line(), "plots": [str(throughput), str(split)]}
    common.print_table("plots", [{"file": str(p)} for p in (throughput, split)], ["file"])
    common.write_json(args.out_json, results)
    return results


if __name__ == "__main__":
    main()
