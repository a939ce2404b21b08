"""pytest plugin: run the suite as on a runtime-only install (no torch, no onnx).

    python -m pytest -p tests.without_extras -q tests/cli/test_caption.py

Marks the export/train extras' packages as absent (None in sys.modules), so
importlib.util.find_spec answers None and `import` fails as when not installed:
tests that need them skip, and the runtime tests must still run (docs/testing.md).
"""

from __future__ import annotations

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
)

for _name in EXTRAS:
    if _name in sys.modules and sys.modules[_name] is not None:
        raise RuntimeError(f"{_name} was imported before tests.without_extras could hide it")
    sys.modules[_name] = None
