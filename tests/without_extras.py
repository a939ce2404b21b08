"""pytest plugin: run the suite as on a runtime-only install (no torch, no onnx,
no ray, no scikit-image or matplotlib).

    python -m pytest -p tests.without_extras -q tests/cli/test_caption.py
    CAPBATCH_WITHOUT=ray python -m pytest -p tests.without_extras -q tests/engines

Marks the optional extras' packages as absent (None in sys.modules), so
importlib.util.find_spec answers None and `import` fails as when not installed:
tests that need them skip, and the runtime tests must still run (docs/testing.md).
CAPBATCH_WITHOUT (comma-separated names) hides only those, to check that a test
needing one extra skips without it while the others are installed.
"""

from __future__ import annotations

import os
import sys

EXTRAS = (
    "torch",
    "torchvision",
    "timm",
    "onnx",
    "onnxscript",
    "onnxconverter_common",
    "tokenizers",
    "transformers",
    "ray",  # the ray extra
    "skimage",  # the bench extra
    "matplotlib",
)
HIDDEN = tuple(
    name.strip() for name in os.environ.get("CAPBATCH_WITHOUT", ",".join(EXTRAS)).split(",")
    if name.strip()
)

for _name in HIDDEN:
    if _name in sys.modules and sys.modules[_name] is not None:
        raise RuntimeError(f"{_name} was imported before tests.without_extras could hide it")
    sys.modules[_name] = None
