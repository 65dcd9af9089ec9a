"""Convert the exported ONNX to OpenVINO IR (``.xml`` + ``.bin``), FP32, FP16 or INT8.

The IR carries the same metadata as the ONNX in ``rt_info`` (under ``model_info``, where
Open Model Zoo tools look), plus the precision and, for INT8, how it was calibrated
(``exporter.export.int8``).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from exporter.artifact import RT_INFO_SECTION, artifact_kind, artifact_metadata
from exporter.checkpoint import Weights, is_synthetic_label
from exporter.config import ExportConfig, default_artifact_path
from exporter.errors import ArtifactError, ConfigError, OutputError, shown
from exporter.export.int8 import (
    SYNTHETIC_CALIBRATION_WARNING,
    Int8Options,
    calibration_frames,
    check_int8_request,
    quantize_model,
)
from exporter.export.onnx import export_onnx
from exporter.files import atomic_outputs, check_not_input, check_writable, sha256_of, write_failure
from exporter.isa import isa_metadata
from exporter.stages import Stages

__all__ = ["IRExport", "export_ir", "export_ir_from_weights"]

# OpenVINO names the nodes it creates "<Type>_<n>" from a counter global to the process,
# so the same conversion twice in one process would give different bytes.
_GENERATED_NAME = re.compile(r"^([A-Za-z]+)_\d+$")


@dataclass
class IRExport:
    """What ``export_ir`` made."""

    xml: Path
    bin: Path
    precision: str
    config: ExportConfig
    xml_sha256: str
    bin_sha256: str
    xml_size: int
    bin_size: int
    durations: dict[str, float] = field(default_factory=dict)
    int8: dict[str, str] = field(default_factory=dict)  # how an INT8 IR was calibrated (its rt_info)
    # What the user should know of the IR made (an INT8 IR that misses verify's bars), said by the caller.
    warnings: list[str] = field(default_factory=list)


def _stable_names(model: object) -> None:
    """Renumber generated node names by graph order, so bytes depend on the graph alone."""
    for index, op in enumerate(model.get_ordered_ops()):
        match = _GENERATED_NAME.match(op.get_friendly_name())
        if match:
            op.set_friendly_name(f"{match.group(1)}_{index}")


def _first_reason(exc: Exception) -> str:
    """The line of an OpenVINO report that says what is wrong: its reports open with the
    C++ check that failed ("Check 'false' failed at src/...") and a stack of frontends."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reasons = [line for line in lines if not line.startswith(("Check ", "Exception from ", "-- "))]
    return shown((reasons or lines or [type(exc).__name__])[-1])


def export_ir(
    onnx_path: Path,
    output: Path | None,
    precision: str,
    *,
    int8: Int8Options | None = None,
    on_stage: Callable[[str, float], None] | None = None,
    progress: bool | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> IRExport:
    """Convert ``onnx_path`` to IR at ``output`` (``.xml``; the ``.bin`` beside it), atomically.
    Without ``output``: ``models/<PRECISION>/<model name>.xml``. ``int8``: how to calibrate
    and quantize, for ``INT8`` only (default: synthetic frames, no accuracy control).
    ``progress``: show NNCF's progress bars while quantizing; by default, when stages are
    reported (``on_stage``; a quiet command passes none)."""
    import openvino as ov

    if int8 is not None and precision != "INT8":
        raise ConfigError(f"calibration options apply to INT8 only, not {precision}")
    if artifact_kind(onnx_path) != ".onnx":
        raise ArtifactError(f"--onnx {onnx_path} is an IR; give the .onnx it was converted from")
    metadata = artifact_metadata(onnx_path)
    config = ExportConfig.from_metadata(metadata).replace(precision=precision)
    if config.onnx_weights != "FP32":
        # Rounded weights would be rounded again, and the IR's metadata would claim FP32 ones.
        raise ArtifactError(
            f"--onnx {onnx_path} stores its weights as {config.onnx_weights}, a variant for ONNX Runtime and "
            f"browsers; ir converts an ONNX with FP32 weights and makes its own precisions (--precision)"
        )
    if config.dynamic and precision == "INT8":
        raise ConfigError("INT8 is made from a static export only: export without --dynamic to quantize")
    synthetic = is_synthetic_label(metadata.get("checkpoint", ""))
    if precision == "INT8":
        check_int8_request(config, int8 or Int8Options(), synthetic)
    output = Path(output) if output is not None else default_artifact_path(config.model_name, precision)
    if output.suffix != ".xml":
        raise ConfigError(f"IR output {output} must end in .xml (the .bin is written beside it)")
    bin_path = output.with_suffix(".bin")
    check_not_input(bin_path, onnx_path)
    # Both files before any work: a .bin path that is a folder would otherwise be found by
    # the save, after minutes of quantization.
    check_writable(output)
    check_writable(bin_path)
    stages = Stages(on_stage)
    if precision == "INT8":
        int8 = int8 or Int8Options()
        if int8.calibration is None and on_warning is not None:  # said once nothing refuses the work
            on_warning(SYNTHETIC_CALIBRATION_WARNING)
        with stages("calibration data"):
            frames = calibration_frames(config, int8, synthetic)
    metadata["precision"] = precision
    with stages("convert"):
        try:
            model = ov.convert_model(str(onnx_path))
        except Exception as exc:  # OpenVINO raises RuntimeError, OpConversionFailure, ... with a long report
            raise ArtifactError(f"--onnx {onnx_path} cannot be converted by OpenVINO: {_first_reason(exc)}") from None
    int8_metadata: dict[str, str] = {}
    if precision == "INT8":
        shown = on_stage is not None if progress is None else progress
        quantized = quantize_model(model, frames, int8, stage=stages, progress=shown)
        model = quantized.model
        # The kernels it was calibrated (and, from a checkpoint, verified) with: INT8 computes by the ISA.
        int8_metadata = {**quantized.metadata, **isa_metadata()}
        metadata.update(int8_metadata)
    with stages("name"):
        _stable_names(model)
        for key, value in metadata.items():
            model.set_rt_info(value, [RT_INFO_SECTION, key])
    with stages("save IR"), atomic_outputs(output, bin_path) as (xml_tmp, _):
        try:
            ov.save_model(model, str(xml_tmp), compress_to_fp16=precision == "FP16")
        except RuntimeError as exc:  # OpenVINO's writer reports no errno
            raise OutputError(f"cannot write {output}: {write_failure(xml_tmp.parent, exc)}") from None
    return IRExport(
        xml=output,
        bin=bin_path,
        precision=precision,
        config=config,
        xml_sha256=sha256_of(output),
        bin_sha256=sha256_of(bin_path),
        xml_size=output.stat().st_size,
        bin_size=bin_path.stat().st_size,
        durations=stages.durations,
        int8=int8_metadata,
    )


def export_ir_from_weights(
    config: ExportConfig,
    weights: Weights,
    output: Path | None,
    precision: str,
    *,
    int8: Int8Options | None = None,
    on_stage: Callable[[str, float], None] | None = None,
    progress: bool | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> IRExport:
    """Export the ONNX to a temporary folder first, then convert it; no ONNX is left behind.
    ``exporter.checked_ir`` also verifies an INT8 IR made this way."""
    config = config.replace(precision=precision)  # a bad precision fails before the export
    if config.onnx_weights != "FP32":
        raise ConfigError(
            f"ONNX weights {config.onnx_weights} apply to ONNX artifacts; an IR is made from FP32 weights in "
            "its own precision (--precision)"
        )
    if config.dynamic and precision == "INT8":  # before the export, not after it
        raise ConfigError("INT8 is made from a static export only: export without --dynamic to quantize")
    output = Path(output) if output is not None else default_artifact_path(config.model_name, precision)
    check_not_input(output, weights.source)
    check_not_input(output.with_suffix(".bin"), weights.source)
    check_writable(output)
    check_writable(output.with_suffix(".bin"))
    if precision == "INT8":  # not after minutes of ONNX export
        check_int8_request(config, int8 or Int8Options(), weights.synthetic)
    with tempfile.TemporaryDirectory(prefix="bgm-export-") as scratch:
        onnx_file = export_onnx(config, weights, Path(scratch) / f"{config.model_name}.onnx", on_stage=on_stage)
        result = export_ir(
            onnx_file.path, output, precision, int8=int8, on_stage=on_stage, progress=progress, on_warning=on_warning
        )
    result.durations = {**onnx_file.durations, **result.durations}
    return result
