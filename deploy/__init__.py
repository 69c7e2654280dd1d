"""robometa's on-device adaptation runtime: numpy and onnxruntime only."""
