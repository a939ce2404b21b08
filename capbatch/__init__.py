"""capbatch: batch image captioning with an exported ONNX runtime."""

__version__ = "0.1.0"
