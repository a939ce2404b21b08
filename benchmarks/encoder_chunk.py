"""Encoder speed with the whole batch in one run vs in chunks (Bundle.encode's ENCODER_CHUNK).

    python benchmarks/encoder_chunk.py --out-json benchmarks/results/encoder_chunk.json

Times Bundle.encode on one --batch of photo-like images with each --chunks
setting in turn, for --rounds interleaved rounds (medians). Peak memory of the
same settings: benchmarks/memory.py before/after (docs/benchmarks.md).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as common  # noqa: E402


def parse_args(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--config", default="lite0", choices=sorted(common.CONFIGS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--chunks", default="64,16")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.tiny:
        args.config, args.batch, args.chunks, args.rounds = "tiny", 8, "8,4", 1
    return args


def main(argv=None) -> dict:
    import capbatch.bundle as bundle_module
    from capbatch.captioner import Captioner
    from capbatch.image_decode import decode_image

    args = parse_args(argv)
    bundle = common.build_bundle(common.CONFIGS[args.config], args.cache_dir, max_len=4)
    captioner = Captioner(bundle, device="cpu")
    files = common.jpeg_files(common.make_jpeg_folder(args.cache_dir, args.batch), args.batch)
    pixels = np.stack([decode_image(p.read_bytes(), captioner.preprocess).pixels for p in files])
    chunks = [int(c) for c in args.chunks.split(",")]
    idle = common.wait_until_idle(args.no_wait or args.tiny)
    machine = common.machine_info()
    default_chunk = bundle_module.ENCODER_CHUNK
    times: dict[int, list[float]] = {c: [] for c in chunks}
    try:
        for round_ in range(args.rounds + 1):  # round 0 warms up
            for chunk in chunks:
                bundle_module.ENCODER_CHUNK = chunk
                start = time.perf_counter()
                captioner.bundle.encode(pixels)
                if round_:
                    times[chunk].append(time.perf_counter() - start)
    finally:
        bundle_module.ENCODER_CHUNK = default_chunk
    rows = [{"chunk": c, "encoder_ms_per_img": 1e3 * statistics.median(times[c]) / args.batch}
            for c in chunks]  # fmt: skip
    for row in rows:
        row["speed_vs_first"] = rows[0]["encoder_ms_per_img"] / row["encoder_ms_per_img"]
    common.print_table(f"encoder, batch {args.batch}", rows, list(rows[0]))
    results = {"command": common.command_line(), "machine": machine, "idle": idle,
               "config": args.config, "batch": args.batch, "rows": rows,
               "load_average_after": common.machine_info()["load_average"]}  # fmt: skip
    common.write_json(args.out_json, results)
    return results


if __name__ == "__main__":
    main()
