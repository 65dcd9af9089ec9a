"""Shared fixtures: the reference goldens, synthetic weights, and small exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from exporter.checkpoint import synthetic_weights
from exporter.config import ExportConfig

DATA = Path(__file__).parent / "data"

# The goldens' setting: 192x320, backbone scale 1/4, 16,000 sampled pixels, threshold 0.3.
GOLDEN_CONFIG = ExportConfig(height=192, width=320, sample_pixels=16_000, threshold=0.3)


@pytest.fixture(scope="session")
def golden() -> dict[str, np.ndarray]:
    with np.load(DATA / "golden_mobilenetv2.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="session")
def golden_rgb(golden) -> tuple[torch.Tensor, torch.Tensor]:
    """The goldens' inputs as the original saw them: RGB, NCHW, /255."""

    def tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255

    return tensor(golden["src_rgb_u8"]), tensor(golden["bgr_rgb_u8"])


@pytest.fixture(scope="session")
def golden_bgr255(golden) -> tuple[np.ndarray, np.ndarray]:
    """The same inputs as the exported model takes them: BGR, NCHW, 0..255."""

    def array(image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32))

    return array(golden["src_rgb_u8"]), array(golden["bgr_rgb_u8"])


@pytest.fixture(scope="session")
def weights():
    return synthetic_weights(0)


@pytest.fixture(scope="session")
def golden_onnx(tmp_path_factory, weights) -> Path:
    from exporter.export.onnx import export_onnx

    path = tmp_path_factory.mktemp("golden") / "golden.onnx"
    export_onnx(GOLDEN_CONFIG, weights, path)
    return path


@pytest.fixture(scope="session")
def golden_irs(tmp_path_factory, golden_onnx) -> dict[str, Path]:
    from exporter.export.openvino import export_ir

    root = tmp_path_factory.mktemp("golden-ir")
    return {p: export_ir(golden_onnx, root / p / "golden.xml", p).xml for p in ("FP32", "FP16")}
