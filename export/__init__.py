"""ONNX export of trained checkpoints (installed as capbatch.export; needs torch and onnx)."""
