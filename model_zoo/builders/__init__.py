"""Small models built directly as ONNX graphs (no torch): demos, tests, benchmarks."""
