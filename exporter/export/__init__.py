"""Exporters: torch model -> ONNX -> OpenVINO IR."""
