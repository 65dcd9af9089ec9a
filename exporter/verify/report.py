"""Presenting a ``VerifyReport``: a terminal table, JSON, and PNGs a person can look at."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from exporter.errors import OutputError
from exporter.files import atomic_outputs, check_not_input, check_writable
from exporter.table import format_table
from exporter.verify.metrics import METRICS
from exporter.verify.run import ArtifactResult, VerifyReport

__all__ = ["check_outputs", "format_report", "isa_lines", "verdict_line", "write_previews"]


def _e(value: float) -> str:
    return f"{value:.1e}"


def _pct(value: float) -> str:
    return f"{value * 100:.3f}%"


def check_lines(result: ArtifactResult) -> list[str]:
    """``PASSED | pha | max |d| ... 3.1e-06 <= 1e-04`` per bar, with the bound that would pass."""
    lines = []
    judged = [(name, check) for name, comparison in result.outputs.items() for check in comparison.checks]
    for name, check in judged + [("accuracy", check) for check in result.accuracy]:
        if check.passed:
            lines.append(f"PASSED | {result.name} | {name} | {check.name} {check.value:.3g} ≤ {check.bound:g}")
        else:
            lines.append(
                f"FAILED | {result.name} | {name} | {check.name} {check.value:.3g} > {check.bound:g}"
                f" (would pass with a bound of {check.value:.3g})"
            )
    return lines


def missed_bars(report: VerifyReport) -> list[str]:
    """Each bar a run missed, short: ``pha patches off by > 0.05 0.0303 > 0.02 (bf16)``."""
    missed = []
    for result in report.artifacts:
        arithmetic = f" ({result.arithmetic})"
        judged = [(name, check) for name, comparison in result.outputs.items() for check in comparison.checks]
        for name, check in judged + [("accuracy", check) for check in result.accuracy]:
            if not check.passed:
                missed.append(f"{name} {check.name} {check.value:.3g} > {check.bound:g}{arithmetic}")
    return missed


def format_report(report: VerifyReport) -> str:
    rows = [("artifact [runtime]", "prec", "bars", "out", "max|d|", "mean|d|", "p99.9", ">1/255", "patches≠", "ms")]
    for a in report.artifacts:
        for name, c in a.outputs.items():
            rows.append(
                (a.name, a.precision, a.bars, name, _e(c.max_abs), _e(c.mean_abs), _e(c.p999_abs),
                 _pct(c.share_over_level), _pct(c.patch_share), f"{a.milliseconds:.0f}")
            )  # fmt: skip
    table = format_table(rows)
    lines = [
        f"Reference: eager PyTorch from {report.checkpoint}; cases: {', '.join(report.case_names)}",
        *isa_lines(report),
        "",
        *table,
        "",
    ]
    lines += [line for a in report.artifacts for line in check_lines(a)]
    lines += ["", *format_accuracy(report)]
    lines += [f"warning: {w}" for w in report.warnings]
    lines.append(verdict_line(report))
    return "\n".join(lines)


def isa_lines(report: VerifyReport) -> list[str]:
    """The CPU the runs computed on: its INT8 kernel class (capped or not) and how it sums
    INT8 products, which make an INT8 IR's numbers this machine's (``exporter.isa``)."""
    if report.isa is None:
        return []
    return [f"CPU: {report.isa.description}; {report.isa.int8_arithmetic}"]


def format_accuracy(report: VerifyReport) -> list[str]:
    """The Open Model Zoo table, "Original model | Converted model", with deltas."""
    with_metrics = [a for a in report.artifacts if a.metrics]
    if not with_metrics:
        return ["Accuracy: no ground truth (give --images with pha/ and fgr/) — parity only."]
    rows = [("artifact [runtime]", "metric", "Original model", "Converted model", "delta")]
    for a in with_metrics:
        for metric in METRICS:
            if metric in a.metrics:
                original, converted = a.reference_metrics[metric], a.metrics[metric]
                rows.append((a.name, metric, f"{original:.4f}", f"{converted:.4f}", f"{converted - original:+.4f}"))
    out = ["Accuracy against ground truth (Original model = eager PyTorch, equal to the original implementation):"]
    out += format_table(rows)
    return [*out, ""]


def verdict_line(report: VerifyReport) -> str:
    failed = [a for a in report.artifacts if not a.passed]
    if not failed:
        return f"VERIFIED: all {len(report.artifacts)} artifact runs meet every bar."
    names = ", ".join(f"{a.name} ({', '.join(n for n, c in a.outputs.items() if not c)})" for a in failed)
    return f"NOT VERIFIED: {len(failed)} of {len(report.artifacts)} artifact runs miss a bar: {names}"


def check_outputs(json_path: Path | None, previews: Path | None, *inputs: object) -> None:
    """Before the work: neither output is an input, the JSON can be written, and the
    previews' folder is not a file."""
    for output in (json_path, previews):
        check_not_input(output, *inputs)
    if json_path is not None:
        check_writable(json_path)
    if previews is not None and previews.exists() and not previews.is_dir():
        raise OutputError(f"--report {previews} is a file; give a folder for the PNG reports")


def _heat(error: np.ndarray) -> np.ndarray:
    """|d| on a log scale from 1e-7 (black) through red to 1 (white), as RGB uint8."""
    level = np.clip((np.log10(np.maximum(error, 1e-12)) + 7) / 7, 0, 1)
    red = np.clip(level * 2, 0, 1)
    green = np.clip(level * 2 - 0.7, 0, 1)
    blue = np.clip(level * 3 - 2, 0, 1)
    return (np.stack([red, green, blue], axis=-1) * 255).astype(np.uint8)


def _patch_map(reference: np.ndarray, flips: np.ndarray, scale: int) -> np.ndarray:
    """Refined patches white, flips red, upscaled by ``scale`` to the image's size."""
    image = np.zeros((*reference.shape, 3), np.uint8)
    image[reference] = 255
    image[flips] = (255, 40, 40)
    return image.repeat(scale, 0).repeat(scale, 1)


def write_previews(report: VerifyReport, folder: Path) -> list[Path]:
    """Per artifact run, one PNG: |d| of pha and fgr (log heat-map, 1e-7..1), the
    reference's refined patches, and the artifact's (the reference's, with every patch
    that differs flipped and drawn red)."""
    folder = Path(folder)
    created = not folder.exists()
    written: list[Path] = []
    try:
        for a in report.artifacts:
            written.append(_write_preview(a, folder))
    except BaseException:  # a full disk or an interrupt: no partial set of reports is left
        for path in written:
            path.unlink(missing_ok=True)
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return written


def _write_preview(a: ArtifactResult, folder: Path) -> Path:
    """One artifact run's PNG in ``folder``, written atomically."""
    from PIL import Image, ImageDraw

    p = a.preview
    reference = p["reference_ref"]
    artifact = reference ^ p["flips"]
    panels = [
        ("pha |d| (log, 1e-7..1)", _heat(p["pha_error"])),
        ("fgr |d| (log, 1e-7..1)", _heat(p["fgr_error"])),
        ("reference: refined patches", _patch_map(reference, np.zeros_like(reference), 4)),
        ("artifact: refined (red: differs)", _patch_map(artifact, p["flips"], 4)),
    ]
    h, w = panels[0][1].shape[:2]
    canvas = Image.new("RGB", (2 * w, 2 * h + 40), (30, 30, 30))
    draw = ImageDraw.Draw(canvas)
    for i, (label, image) in enumerate(panels):
        x, y = (i % 2) * w, (i // 2) * (h + 20)
        canvas.paste(Image.fromarray(image), (x, y + 20))
        draw.text((x + 4, y + 4), label, fill=(255, 255, 255))
    name = re.sub(r"[^\w.-]+", "_", f"{a.path.parent.name}_{a.path.stem}_{a.runtime}")
    target = folder / f"{name}.png"
    if max(canvas.size) > 2600:
        canvas = canvas.resize((canvas.size[0] // 2, canvas.size[1] // 2))
    with atomic_outputs(target) as (temporary,):
        canvas.save(temporary, format="PNG")
    return target
