"""Verification: every artifact against the eager model, in every runtime, as data.

The reference is our eager ``MattingRefine`` (proven equal to the original by the golden
tests) built from the artifact's own metadata and the same checkpoint, fed RGB / 255. The
artifact gets the same images as BGR 0..255. Outputs are compared per output with the
bars of the artifact's precision; with ground truth, the Open Model Zoo accuracy metrics
are computed for the reference and for the artifact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from exporter.artifact import OUTPUT_NAMES, artifact_metadata
from exporter.checkpoint import Weights, build_model, resolve_weights
from exporter.config import PRECISIONS, ExportConfig, default_artifact_path
from exporter.errors import ArtifactError
from exporter.images import to_eager_input, to_model_input
from exporter.resources import require_memory
from exporter.runtime import runners_for
from exporter.verify.compare import (
    BARS,
    SYNTHETIC_INT8_BARS,
    Bars,
    Check,
    OutputComparison,
    compare_metrics,
    compare_output,
    differing_patches,
)
from exporter.verify.data import Case, image_cases, synthetic_cases
from exporter.verify.metrics import METRICS, matting_metrics

__all__ = ["ArtifactResult", "Reference", "VerifyReport", "default_artifacts", "verify"]


@dataclass
class Reference:
    """The eager model's outputs on every case, stacked ``(N, C, H, W)``, and its metrics."""

    config: ExportConfig
    cases: list[Case]
    pha: np.ndarray
    fgr: np.ndarray
    ref: np.ndarray  # (N, H/4, W/4), 1 where refined
    metrics: dict[str, float]


@dataclass
class ArtifactResult:
    """One artifact in one runtime."""

    path: Path
    runtime: str
    precision: str
    config: ExportConfig
    checkpoint: str
    outputs: dict[str, OutputComparison]
    patch_flips: float  # share of patches differing in pha or fgr
    metrics: dict[str, float]
    reference_metrics: dict[str, float]
    milliseconds: float
    accuracy: list[Check] = field(default_factory=list)  # metric rises, where the bars judge them
    preview: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return f"{self.path} [{self.runtime}]"

    @property
    def passed(self) -> bool:
        return all(self.outputs.values()) and all(check.passed for check in self.accuracy)

    def __bool__(self) -> bool:
        return self.passed


@dataclass
class VerifyReport:
    """Every artifact's result; ``passed`` when every bar of every artifact holds."""

    checkpoint: str
    case_names: list[str]
    artifacts: list[ArtifactResult]
    warnings: list[str] = field(default_factory=list)
    synthetic: bool = False  # verified against synthetic weights: accuracy numbers mean nothing

    @property
    def passed(self) -> bool:
        return bool(self.artifacts) and all(self.artifacts)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        def checks(items: list[Check]) -> list[dict]:
            return [{"name": k.name, "value": k.value, "bound": k.bound, "passed": k.passed} for k in items]

        def output(c: OutputComparison) -> dict:
            stats = {k: v for k, v in vars(c).items() if k != "checks"}
            return {**stats, "checks": checks(c.checks), "passed": c.passed}

        return {
            "passed": self.passed,
            "checkpoint": self.checkpoint,
            "synthetic_weights": self.synthetic,
            "cases": self.case_names,
            "warnings": self.warnings,
            "artifacts": [
                {
                    "path": str(a.path),
                    "runtime": a.runtime,
                    "precision": a.precision,
                    "resolution": [a.config.height, a.config.width],
                    "checkpoint": a.checkpoint,
                    "passed": a.passed,
                    "patch_flips": a.patch_flips,
                    "milliseconds_per_frame": a.milliseconds,
                    "outputs": {name: output(c) for name, c in a.outputs.items()},
                    "metrics": a.metrics,
                    "reference_metrics": a.reference_metrics,
                    "accuracy_checks": checks(a.accuracy),
                }
                for a in self.artifacts
            ],
        }


def default_artifacts() -> list[Path]:
    """What ``make export`` (and ``onnx`` / ``ir`` with their defaults, for any backbone)
    writes, those of it that exist."""
    from exporter.backbones import BACKBONES

    candidates = [
        default_artifact_path(backbone.model_name, precision)
        for backbone in BACKBONES.values()
        for precision in (None, *PRECISIONS)
    ]
    return [path for path in candidates if path.is_file()]


def _average(rows: list[dict[str, float]]) -> dict[str, float]:
    return {name: float(np.mean([row[name] for row in rows])) for name in METRICS if rows and name in rows[0]}


def _case_metrics(cases: list[Case], pha: np.ndarray, fgr: np.ndarray) -> dict[str, float]:
    rows = [
        matting_metrics(pha[i, 0], fgr[i].transpose(1, 2, 0), case.pha, case.fgr)
        for i, case in enumerate(cases)
        if case.pha is not None
    ]
    return _average(rows)


def _reference(config: ExportConfig, weights: Weights, cases: list[Case]) -> Reference:
    model = build_model(config, weights)
    outputs: dict[str, list[np.ndarray]] = {"pha": [], "fgr": [], "ref": []}
    with torch.no_grad():
        for case in cases:
            src = torch.from_numpy(to_eager_input(case.src))
            bgr = torch.from_numpy(to_eager_input(case.bgr))
            pha, fgr, *_, ref = model(src, bgr)
            outputs["pha"].append(pha.numpy())
            outputs["fgr"].append(fgr.numpy())
            outputs["ref"].append(ref.numpy()[:, 0])
    stacked = {k: np.concatenate(v) for k, v in outputs.items()}
    return Reference(
        config,
        cases,
        stacked["pha"],
        stacked["fgr"],
        stacked["ref"],
        _case_metrics(cases, stacked["pha"], stacked["fgr"]),
    )


def verify(
    artifacts: Sequence[Path],
    weights: Weights | None = None,
    *,
    cases: int = 4,
    seed: int = 0,
    images: Path | None = None,
    bars: dict[str, Bars] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Verify each artifact (``.onnx`` in ONNX Runtime and OpenVINO, ``.xml`` in OpenVINO).

    ``weights``: the checkpoint the artifacts were made from; without it, each artifact's
    backbone gets its default checkpoint, else the synthetic recipe (with a warning).
    """
    overridden = set(bars or {})
    bars = {**BARS, **(bars or {})}
    if not artifacts:
        raise ArtifactError("no artifacts to verify: give .onnx / .xml files, or run `make export` first")
    if cases < 1 and images is None:
        raise ArtifactError(f"--cases {cases}: at least one case is needed")
    if seed < 0:
        raise ArtifactError(f"--seed {seed}: seeds are whole numbers from 0")
    report = VerifyReport(checkpoint="", case_names=[], artifacts=[])
    resolved: dict[str, Weights] = {} if weights is None else {weights.backbone: weights}
    references: dict[ExportConfig, Reference] = {}
    for path in artifacts:
        path = Path(path)
        metadata = artifact_metadata(path)
        config = ExportConfig.from_metadata(metadata)
        precision = config.precision
        key = config.replace(precision="FP32")
        if config.backbone not in resolved:
            if weights is not None:
                raise ArtifactError(
                    f"{path} is the {config.model_name} model, but checkpoint {weights.source} holds the "
                    f"{weights.backbone} one"
                )
            resolved[config.backbone] = resolve_weights(None, config.backbone)
            if resolved[config.backbone].warning:
                report.warnings.append(resolved[config.backbone].warning)
        artifact_weights = resolved[config.backbone]
        if metadata.get("checkpoint") != artifact_weights.label:
            report.warnings.append(
                f"{path} was exported from {metadata.get('checkpoint')}, but is verified against "
                f"{artifact_weights.label}"
            )
        if key not in references:
            require_memory(config)
            if on_progress:
                on_progress(f"reference: eager PyTorch at {config.height}x{config.width}")
            data = (
                image_cases(images, config.height, config.width)
                if images is not None
                else synthetic_cases(config.height, config.width, cases, seed)
            )
            references[key] = _reference(key, artifact_weights, data)
            # A constant alpha (fgr then just echoes the frame) mattes nothing.
            if np.ptp(references[key].pha) == 0:
                report.warnings.append(
                    f"the eager model's alpha from {artifact_weights.label} is constant: the weights are "
                    "degenerate (all zero?), and parity with them proves little"
                )
            # Artifacts of several resolutions each get their own cases: list them all, once.
            report.case_names += [case.name for case in data if case.name not in report.case_names]
        reference = references[key]
        for runner in runners_for(path, metadata):
            if on_progress:
                on_progress(f"running {runner.name}")
            actual: dict[str, list[np.ndarray]] = {"pha": [], "fgr": []}
            first = reference.cases[0]
            runner.run(to_model_input(first.src), to_model_input(first.bgr))  # warm-up, not timed
            start = time.perf_counter()
            for case in reference.cases:
                result = runner.run(to_model_input(case.src), to_model_input(case.bgr))
                for name in OUTPUT_NAMES:
                    actual[name].append(result[name])
            milliseconds = (time.perf_counter() - start) * 1000 / len(reference.cases)
            got = {name: np.concatenate(v) for name, v in actual.items()}
            bar = bars[precision]
            if precision == "INT8" and artifact_weights.synthetic and "INT8" not in overridden:
                bar = SYNTHETIC_INT8_BARS
                note = f"{path}: INT8 of synthetic weights is judged by the looser synthetic INT8 bars"
                if note not in report.warnings:
                    report.warnings.append(note)
            comparisons = {
                name: compare_output(name, getattr(reference, name), got[name], bar) for name in OUTPUT_NAMES
            }
            flips = differing_patches(reference.pha, got["pha"], bar.patch_delta) | differing_patches(
                reference.fgr, got["fgr"], bar.patch_delta
            )
            metrics = _case_metrics(reference.cases, got["pha"], got["fgr"])
            report.artifacts.append(
                ArtifactResult(
                    path=path,
                    runtime=runner.runtime,
                    precision=precision,
                    config=config,
                    checkpoint=metadata.get("checkpoint", "?"),
                    outputs=comparisons,
                    patch_flips=float(flips.mean()),
                    metrics=metrics,
                    reference_metrics=reference.metrics,
                    milliseconds=milliseconds,
                    accuracy=compare_metrics(reference.metrics, metrics, bar),
                    preview={
                        "pha_error": np.abs(got["pha"][0, 0] - reference.pha[0, 0]),
                        "fgr_error": np.abs(got["fgr"][0] - reference.fgr[0]).max(axis=0),
                        "reference_ref": reference.ref[0] > 0,
                        "flips": flips[0],
                    },
                )
            )
    report.checkpoint = ", ".join(dict.fromkeys(w.label for w in resolved.values()))
    report.synthetic = any(w.synthetic for w in resolved.values())
    return report
