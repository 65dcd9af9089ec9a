"""An IR made from weights and, for INT8, verified as ``verify`` would when it is made:
post-training quantization can miss the INT8 bars (calibrated on frames unlike the cases,
say), and a user should not learn that from a later command. Above both the export and the
verification (the export layer imports neither this nor ``exporter.verify``)."""

from __future__ import annotations

from pathlib import Path

from exporter.checkpoint import Weights
from exporter.config import ExportConfig
from exporter.export.openvino import IRExport, export_ir_from_weights
from exporter.verify import verify
from exporter.verify.report import missed_bars
from exporter.verify.run import DEFAULT_CASES

__all__ = ["export_checked_ir", "int8_shortfall"]


def export_checked_ir(
    config: ExportConfig, weights: Weights, output: Path | None, precision: str, **options: object
) -> IRExport:
    """``export_ir_from_weights``; an INT8 IR is then verified against ``weights``, and each bar
    it misses is said in ``warnings`` (the IR is kept: it may still be what the user wants)."""
    result = export_ir_from_weights(config, weights, output, precision, **options)
    if precision == "INT8":
        result.warnings.extend(filter(None, [int8_shortfall(result.xml, weights)]))
    return result


def int8_shortfall(xml: Path, weights: Weights) -> str | None:
    """What ``verify`` would say of a new INT8 IR; None when every bar holds."""
    missed = missed_bars(verify([xml], weights))
    if not missed:
        return None
    return (
        f"{xml} misses verify's INT8 bars on {DEFAULT_CASES} synthetic composites: {'; '.join(missed)}. "
        "Calibrating on frames of the deployment (--calibration DIR) or --max-drop may close the gap, "
        "or use the FP16 IR; `bgm-export verify` gives the whole report"
    )
