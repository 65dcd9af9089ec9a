"""Shared fixtures: the reference goldens, synthetic weights, and small exports."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from exporter.checkpoint import Weights, synthetic_weights
from exporter.config import ExportConfig
from exporter.images import to_eager_input, to_model_input

DATA = Path(__file__).parent / "data"
BACKBONES = ("mobilenetv2", "resnet50", "resnet101")

# The goldens' setting: 192x320, backbone scale 1/4, 16,000 sampled pixels, threshold 0.3.
GOLDEN_CONFIG = ExportConfig(height=192, width=320, sample_pixels=16_000, threshold=0.3)


@functools.cache
def load_golden(backbone: str) -> dict[str, np.ndarray]:
    with np.load(DATA / f"golden_{backbone}.npz") as data:
        return {key: data[key] for key in data.files}


def golden_config(backbone: str) -> ExportConfig:
    """The MobileNetV2 golden's setting, or the refine settings stored in a ResNet golden."""
    if backbone == "mobilenetv2":
        return GOLDEN_CONFIG
    golden = load_golden(backbone)
    return GOLDEN_CONFIG.replace(
        backbone=backbone, sample_pixels=int(golden["sample_pixels"]), threshold=float(golden["threshold"])
    )


@functools.cache
def recipe_weights(backbone: str, seed: int = 0) -> Weights:
    """The synthetic recipe, built once per session (ResNet-101's takes seconds)."""
    return synthetic_weights(seed, backbone)


@pytest.fixture(scope="session")
def golden() -> dict[str, np.ndarray]:
    return load_golden("mobilenetv2")


@pytest.fixture(scope="session")
def golden_rgb(golden) -> tuple[torch.Tensor, torch.Tensor]:
    """The goldens' inputs as the original saw them: RGB, NCHW, /255."""

    return torch.from_numpy(to_eager_input(golden["src_rgb_u8"])), torch.from_numpy(
        to_eager_input(golden["bgr_rgb_u8"])
    )


@pytest.fixture(scope="session")
def golden_bgr255(golden) -> tuple[np.ndarray, np.ndarray]:
    """The same inputs as the exported model takes them: BGR, NCHW, 0..255."""
    return to_model_input(golden["src_rgb_u8"]), to_model_input(golden["bgr_rgb_u8"])


@pytest.fixture(scope="session")
def weights():
    return recipe_weights("mobilenetv2")


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
