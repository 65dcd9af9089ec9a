"""bgm-export: BackgroundMattingV2 (MobileNetV2) to ONNX and OpenVINO IR, with proof of parity."""

__version__ = "0.1.0"
