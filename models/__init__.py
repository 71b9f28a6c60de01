"""Model repository, configuration, and runtimes (ONNX Runtime, PyTorch)."""
