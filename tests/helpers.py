"""Constants and pure helpers the tests share where a fixture cannot reach: parametrize
lists (collection time) and plain functions that build inputs. State lives in fixtures
(``conftest.py``)."""

from __future__ import annotations

import os
import struct
import sys
import zlib
from pathlib import Path

from exporter.config import ExportConfig

DATA = Path(__file__).parent / "data"
# The backbones with goldens and manifests in DATA (test_synthetic checks that every
# backbone of the package has them).
BACKBONES = ("mobilenetv2", "resnet50", "resnet101")

# The goldens' setting: 192x320, backbone scale 1/4, 16,000 sampled pixels, threshold 0.3.
GOLDEN_CONFIG = ExportConfig(height=192, width=320, sample_pixels=16_000, threshold=0.3)

# Whether this run is CI's own (CI=true in the environment pytest was started with): read
# here, before conftest.py sets CI=true for every run (its telemetry opt-out). Tests that
# need a tool the machine may lack (a browser: test_web.py) skip without it, and fail in CI.
CI_RUN = os.environ.get("CI") == "true"

# The command line in a process of its own (real standard streams, signals, C libraries'
# own output on descriptor 2), as the installed `bgm-export` runs it.
CLI_COMMAND = [sys.executable, "-m", "exporter"]


def huge_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says ``width`` x ``height``: all Pillow reads on opening (the pixels
    are never decoded), without the gigabytes of a real one."""
    from PIL import Image

    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])  # size, then depth, colour, ...
    data[12:33] = header + struct.pack(">I", zlib.crc32(header))
    path.write_bytes(bytes(data))
    return path


def with_nan_weights(onnx_path: Path, path: Path) -> Path:
    """``onnx_path`` with the decoder's last convolution's weights NaN: a broken artifact
    that loads and runs, answering NaN everywhere (the backbone's first would not do: its
    ReLU6 clamps NaN to a number in OpenVINO)."""
    import numpy as np
    import onnx

    proto = onnx.load(onnx_path)
    tensor = next(t for t in proto.graph.initializer if t.name == "decoder.conv4.weight")
    nan = np.full_like(onnx.numpy_helper.to_array(tensor), np.nan)
    tensor.CopyFrom(onnx.numpy_helper.from_array(nan, tensor.name))
    onnx.save(proto, path)
    return path
