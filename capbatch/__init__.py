"""capbatch: batch image captioning with an exported ONNX runtime.

    from capbatch import Captioner
    captioner = Captioner()              # the built-in model (docs/model-card.md)
    result = captioner("a.jpg")          # one result; a list gives a list

    from capbatch import CaptionRequest, RunOptions, caption
    result = caption(CaptionRequest(job=RunOptions(inputs=("photos/",), out=Path("c.csv"))))
    result.summary                       # what `capbatch caption` does, as a library call

These are imported on first use, so `import capbatch` stays cheap (no
onnxruntime, numpy or Pillow until a model is wanted).
"""

__version__ = "0.2.0"
__all__ = [
    "CaptionRequest", "CaptionResult", "Captioner", "CaptionerArgs", "RunOptions", "caption",
    "__version__",
]  # fmt: skip

_LAZY = {
    "Captioner": "capbatch.captioner",
    "CaptionResult": "capbatch.captioner",
    "CaptionerArgs": "capbatch.captioner",
    "CaptionRequest": "capbatch.request",
    "RunOptions": "capbatch.job",
    "caption": "capbatch.api",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'capbatch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
