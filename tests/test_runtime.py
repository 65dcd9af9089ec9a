"""Running artifacts: which runtimes a file gets, what a runner knows, and refusals."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from exporter.errors import ArtifactError
from exporter.runtime import load_runner, runners_for
from exporter.tolerances import FP32_ATOL


def test_runners_follow_the_suffix(golden_onnx, golden_irs):
    assert [r.runtime for r in runners_for(golden_onnx)] == ["onnxruntime", "openvino"]
    assert [r.runtime for r in runners_for(golden_irs["FP32"])] == ["openvino"]


def test_a_runner_knows_its_shape_and_both_runtimes_agree(golden_onnx, golden_feeds):
    ort, ov = runners_for(golden_onnx)
    assert ort.input_shape == ov.input_shape == (1, 3, 192, 320)
    assert ort.name == f"{golden_onnx.name} [onnxruntime]" and ov.name == f"{golden_onnx.name} [openvino]"
    assert ort.inference_precision == ov.inference_precision == "f32"
    a, b = ort.infer(golden_feeds), ov.infer(golden_feeds)
    assert a["pha"].shape == (1, 1, 192, 320) and a["fgr"].shape == (1, 3, 192, 320)
    for name in ("pha", "fgr"):
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=FP32_ATOL)


def test_submitted_requests_give_outputs_nothing_writes_again(golden_irs, golden_feeds):
    """Each request writes its outputs into arrays handed out as they are: a later request on
    the same runner (the same OpenVINO request, reused) leaves earlier ones alone, and shared
    inputs give what copied ones give."""
    runner = load_runner(golden_irs["FP32"], "openvino", throughput=True)
    try:
        first = runner.submit(golden_feeds).result()
        kept = {name: array.copy() for name, array in first.items()}
        other = {name: np.ascontiguousarray(array[..., ::-1]) for name, array in golden_feeds.items()}
        later = [runner.submit(other, share_inputs=True) for _ in range(2 * runner.parallel)]
        mirrored = [pending.result() for pending in later]
        for name in kept:
            assert np.array_equal(first[name], kept[name])
            assert all(np.array_equal(m[name], mirrored[0][name]) for m in mirrored)
        assert not np.array_equal(mirrored[0]["pha"], kept["pha"])
        np.testing.assert_allclose(runner.infer(other)["pha"], mirrored[0]["pha"], rtol=0, atol=FP32_ATOL)
    finally:
        runner.close()


@pytest.mark.parametrize(
    "artifact, runtime, device, message",
    [
        ("FP32", "onnxruntime", "CPU", "ONNX Runtime runs .onnx files"),
        ("onnx", "tensorrt", "CPU", "runtime 'tensorrt' is not one of onnxruntime, openvino"),
        ("onnx", "openvino", "TPU", "device 'TPU' is not one of CPU, GPU, NPU, AUTO"),
        ("onnx", "openvino", "NPU", "OpenVINO device NPU is not available here"),
        ("missing", "openvino", "CPU", "does not exist"),
    ],
)
def test_refusals(golden_onnx, golden_irs, tmp_path, artifact, runtime, device, message):
    path = {"onnx": golden_onnx, "FP32": golden_irs["FP32"], "missing": tmp_path / "m.onnx"}[artifact]
    with pytest.raises(ArtifactError, match=message):
        load_runner(path, runtime, device)


# Two other Cores (NNCF makes its own) loaded after ours and unloaded out of order: each CPU
# plugin puts back the signal stack it found, so the main thread's ends up on freed memory.
CORES_UNLOADED_OUT_OF_ORDER = """
import gc, signal, sys
import openvino as ov
from exporter.runtime import load_runner
runner = load_runner(sys.argv[1], "openvino")
first = ov.Core(); first.available_devices
second = ov.Core(); second.available_devices
del first; gc.collect()
del second; gc.collect()
runner.close()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
signal.raise_signal(signal.SIGTERM)
"""


def test_a_signal_after_openvino_unloaded_plugins_is_handled_not_a_crash(golden_onnx):
    """Python's handlers run on the alternate signal stack: one left on freed memory by
    OpenVINO's plugins made Ctrl-C and SIGTERM a SIGSEGV (seen in the suite and by users)."""
    code = CORES_UNLOADED_OUT_OF_ORDER
    result = subprocess.run([sys.executable, "-c", code, str(golden_onnx)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 7, (result.returncode, result.stderr[-2000:])
