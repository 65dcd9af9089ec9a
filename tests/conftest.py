"""Shared fixtures: the reference goldens, synthetic weights, small exports, and the command
line. Constants needed at collection time are in ``helpers.py``."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import Result

from exporter.checkpoint import Weights, synthetic_weights
from exporter.config import ExportConfig
from exporter.images import to_eager_input, to_model_input
from helpers import DATA, GOLDEN_CONFIG

# OpenVINO's converter (and NNCF outside pytest) send usage telemetry to Google Analytics
# from a forked process unless opted out: traffic to an address that is not ours, and a fork
# taken while another thread resolves a name deadlocks and hangs the run at exit (seen here).
# Their opt-out outside a consent file is a CI job's: tests, and the commands they start in
# subprocesses, run as one.
os.environ["CI"] = "true"


@pytest.fixture(scope="session")
def load_golden() -> Callable[[str], dict[str, np.ndarray]]:
    """``load_golden(backbone)``: the reference outputs of the original for one backbone, read once."""

    @functools.cache
    def load(backbone: str) -> dict[str, np.ndarray]:
        with np.load(DATA / f"golden_{backbone}.npz") as data:
            return {key: data[key] for key in data.files}

    return load


@pytest.fixture(scope="session")
def golden_config(load_golden) -> Callable[[str], ExportConfig]:
    """``golden_config(backbone)``: the MobileNetV2 golden's setting, or the refine settings
    stored in a ResNet golden."""

    def config(backbone: str) -> ExportConfig:
        if backbone == "mobilenetv2":
            return GOLDEN_CONFIG
        golden = load_golden(backbone)
        return GOLDEN_CONFIG.replace(
            backbone=backbone, sample_pixels=int(golden["sample_pixels"]), threshold=float(golden["threshold"])
        )

    return config


@pytest.fixture(scope="session")
def recipe_weights() -> Callable[..., Weights]:
    """``recipe_weights(backbone, seed=0)``: the synthetic recipe, built once per session
    (ResNet-101's takes seconds)."""

    @functools.cache
    def recipe(backbone: str, seed: int = 0) -> Weights:
        return synthetic_weights(seed, backbone)

    return recipe


@pytest.fixture(scope="session")
def golden(load_golden) -> dict[str, np.ndarray]:
    return load_golden("mobilenetv2")


@pytest.fixture(scope="session")
def golden_rgb(golden) -> tuple[torch.Tensor, torch.Tensor]:
    """The goldens' inputs as the original saw them: RGB, NCHW, /255."""

    return torch.from_numpy(to_eager_input(golden["src_rgb_u8"])), torch.from_numpy(
        to_eager_input(golden["bgr_rgb_u8"])
    )


@pytest.fixture(scope="session")
def golden_feeds(golden) -> dict[str, np.ndarray]:
    """The same inputs as the exported model takes them: BGR, NCHW, 0..255."""
    return {"src": to_model_input(golden["src_rgb_u8"]), "bgr": to_model_input(golden["bgr_rgb_u8"])}


@pytest.fixture(scope="session")
def weights(recipe_weights) -> Weights:
    return recipe_weights("mobilenetv2")


@pytest.fixture(scope="session")
def golden_onnx(tmp_path_factory, weights) -> Path:
    from exporter.export.onnx import export_onnx

    path = tmp_path_factory.mktemp("golden") / "golden.onnx"
    export_onnx(GOLDEN_CONFIG, weights, path)
    return path


@pytest.fixture(scope="session")
def onnx_weight_variants(tmp_path_factory, weights) -> dict[str, Path]:
    """The golden setting exported with its weights stored as FP16 and as INT8 (``--onnx-weights``)."""
    from exporter.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("onnx-weights")
    return {
        storage: export_onnx(GOLDEN_CONFIG.replace(onnx_weights=storage), weights, root / f"{storage}.onnx").path
        for storage in ("FP16", "INT8")
    }


@pytest.fixture(scope="session")
def golden_irs(tmp_path_factory, golden_onnx) -> dict[str, Path]:
    from exporter.export.openvino import export_ir

    root = tmp_path_factory.mktemp("golden-ir")
    return {p: export_ir(golden_onnx, root / p / "golden.xml", p).xml for p in ("FP32", "FP16")}


@pytest.fixture(scope="session")
def int8_ir(tmp_path_factory, golden_onnx) -> Path:
    """The golden ONNX quantized with the default options (an NNCF run: tests using it are slow)."""
    from exporter.export.openvino import export_ir

    return export_ir(golden_onnx, tmp_path_factory.mktemp("int8") / "INT8" / "golden.xml", "INT8").xml


@pytest.fixture()
def bench_without_pauses(monkeypatch) -> None:
    """bench's pauses that let a runtime's threads settle between measurements: timings are
    never asserted, so the tests do without them (a minute of sleeping per full suite)."""
    from exporter import bench

    monkeypatch.setattr(bench, "SETTLE_SECONDS", 0.0)


@pytest.fixture(scope="session")
def cli() -> Callable[..., Result]:
    """``cli("info", path, ...)``: ``bgm-export`` run in this process, its stdout and stderr
    apart; arguments may be paths."""
    from typer.testing import CliRunner

    from exporter.cli import app

    runner = CliRunner()
    return lambda *argv: runner.invoke(app, [str(arg) for arg in argv])


@pytest.fixture(scope="session")
def one_error() -> Callable[..., None]:
    """``one_error(result, message, code=2)``: the run exited ``code``, and its last stderr
    line is its one ``error:`` line, holding ``message``; no traceback."""

    def check(result: Result, message: str, code: int = 2) -> None:
        assert result.exit_code == code, result.output
        *_, last = result.stderr.splitlines() or [""]
        assert last.startswith("error: ") and message in last, result.stderr
        assert result.stderr.count("error:") == 1 and "Traceback" not in result.output, result.stderr

    return check
