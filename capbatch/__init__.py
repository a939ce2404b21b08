"""capbatch: batch image captioning with an exported ONNX runtime.

    from capbatch import Captioner
    captioner = Captioner()              # the built-in model (docs/model-card.md)
    result = captioner("a.jpg")          # one result; a list gives a list

`Captioner` is imported on first use, so `import capbatch` stays cheap (no
onnxruntime, numpy or Pillow until a model is wanted).
"""

__version__ = "0.2.0"
__all__ = ["Captioner", "CaptionResult", "__version__"]

_LAZY = {"Captioner": "capbatch.captioner", "CaptionResult": "capbatch.captioner"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'capbatch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
