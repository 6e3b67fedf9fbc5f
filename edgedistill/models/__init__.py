"""Models: the built-in zoo, one factory for every architecture, weight files, feature taps, the one ONNX reader,
and teachers from every format."""
