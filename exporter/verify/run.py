"""Verification: every artifact against the eager model, in every runtime, as data.

The reference is our eager ``MattingRefine`` (proven equal to the original by the golden
tests) built from the artifact's own metadata and the same checkpoint, fed RGB / 255. The
artifact gets the same images as BGR 0..255. Outputs are compared per output with the
bars of the artifact's precision (an ONNX's: its weights' storage); with ground truth, the
Open Model Zoo accuracy metrics are computed for the reference and for the artifact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exporter.artifact import artifact_metadata
from exporter.checkpoint import Weights, build_model, resolve_weights
from exporter.config import PRECISIONS, ExportConfig, default_artifact_path
from exporter.data import FAMILIES, Case, image_cases, image_names, seeds_for, synthetic_cases
from exporter.eager import EagerRunner
from exporter.errors import ArtifactError, ConfigError
from exporter.isa import Isa, cpu_isa
from exporter.resources import CASE_BYTES_PER_PIXEL, require_frame_memory, require_memory
from exporter.runtime import check_inference_precision, default_inference_precision, runners_for
from exporter.verify.compare import (
    BAR_OPTIONS,
    BARS,
    DIAGNOSTIC_OUTPUTS,
    HARD_FRAME_INT8_BARS,
    SYNTHETIC_INT8_BARS,
    Bars,
    Check,
    OutputComparison,
    bars_for,
    compare_metrics,
    compare_output,
    differing_patches,
)
from exporter.verify.metrics import METRICS, matting_metrics

__all__ = [
    "DEFAULT_CASES",
    "VERIFY_FAMILY",
    "ArtifactResult",
    "Reference",
    "VerifyReport",
    "default_artifacts",
    "case_bars",
    "judged_precision",
    "verify",
]

# Synthetic composites verified when no number is given (verify's and the card's default).
DEFAULT_CASES = 4
# The kind of synthetic composite verify judges (exporter.data.FAMILIES): the hard ones, with
# hair strands, colours close to the background's, texture, noise and a moved background.
# The plain ones flattered INT8 (trained_v1's INT8 IR erred a fifth as much on them as on the
# hard ones; see HARD_INT8_PHA_FLOOR, issue 30); FP32 and FP16 meet their bars on both. A user's own frames
# (``images``) judge better than either.
VERIFY_FAMILY = "hard"


@dataclass
class Reference:
    """The eager model's outputs on every case, stacked ``(N, C, H, W)``, and its metrics."""

    config: ExportConfig
    cases: list[Case]
    pha: np.ndarray
    fgr: np.ndarray
    ref: np.ndarray  # (N, H/4, W/4), 1 where refined
    metrics: dict[str, float]
    # Every output beyond pha and fgr an artifact of ``config`` has (err, hid, ...), stacked.
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def output(self, name: str) -> np.ndarray:
        return self.extra[name] if name in self.extra else getattr(self, name)


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
    arithmetic: str = "f32"  # what the runtime computed in (OpenVINO's inference precision)
    bars: str = ""  # the name of the bars that judged it (``Bars.name``)
    accuracy: list[Check] = field(default_factory=list)  # metric rises, where the bars judge them
    preview: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        arithmetic = "" if self.arithmetic == "f32" else f", {self.arithmetic}"
        size = f" at {self.config.height}x{self.config.width}" if self.config.dynamic else ""
        return f"{self.path}{size} [{self.runtime}{arithmetic}]"

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
    isa: Isa | None = None  # the CPU's kernels the runs computed on (INT8 computes by them)

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
            "cpu": self.isa.to_dict() if self.isa else None,
            "artifacts": [
                {
                    "path": str(a.path),
                    "runtime": a.runtime,
                    "arithmetic": a.arithmetic,
                    "precision": a.precision,
                    "bars": a.bars,
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
    """The eager model's outputs, run as every artifact is run (``EagerRunner``)."""
    runner = EagerRunner(build_model(config, weights), config, weights.label)
    outputs = [runner.infer(case.feeds()) for case in cases]
    pha, fgr, ref = (np.concatenate([out[name] for out in outputs]) for name in ("pha", "fgr", "ref"))
    extra = {name: np.concatenate([out[name] for out in outputs]) for name in config.outputs[2:]}
    return Reference(config, cases, pha, fgr, ref[:, 0], _case_metrics(cases, pha, fgr), extra)


def case_bars(images: Path | None, family: str) -> dict[str, Bars]:
    """Each precision's bars on these cases: on frames as hard as real ones (the hard
    composites, a user's own) INT8 meets its bars for them, on the plain composites the
    older, tighter ones."""
    hard_frames = images is not None or family != "plain"
    return {**BARS, **({"INT8": HARD_FRAME_INT8_BARS} if hard_frames else {})}


def _arithmetics(inference_precision: str | None) -> tuple[str, ...]:
    if inference_precision is None:
        return tuple(dict.fromkeys(("f32", default_inference_precision())))
    if check_inference_precision(inference_precision) == "auto":
        return (default_inference_precision(),)
    return (inference_precision,)


def judged_precision(config: ExportConfig) -> str:
    """The precision whose bars judge an artifact: an ONNX's weight storage where it is not
    FP32 (its weights are rounded as that IR's are), else the IR's precision (FP32 for ONNX).
    The storage is the graph's: ``artifact_metadata`` refuses a metadata that says otherwise."""
    return config.onnx_weights if config.onnx_weights != "FP32" else config.precision


def _option(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _check_overrides(overrides: dict[str, Bars], precisions: set[str]) -> None:
    """``ConfigError`` for a bar given for a precision no artifact has: it would be ignored."""
    for precision, bar in overrides.items():
        if precision in precisions:
            continue
        # The options that changed the bars, when they can be told (a value equal to the
        # default changes nothing to tell); else the precision's bars as a whole.
        options = [
            _option(name) for name, (p, field_name) in BAR_OPTIONS.items()
            if p == precision and getattr(bar, field_name) != getattr(BARS[precision], field_name)
        ]  # fmt: skip
        subject = ", ".join(options) if options else f"the {precision} bars"
        verb = "applies" if len(options) == 1 else "apply"
        raise ConfigError(
            f"{subject} {verb} to {precision} artifacts, and none is verified "
            f"(the artifacts are {', '.join(sorted(precisions))})"
        )


def verify(
    artifacts: Sequence[Path],
    weights: Weights | None = None,
    *,
    cases: int | None = None,
    seed: int | None = None,
    family: str | None = None,
    images: Path | None = None,
    bars: dict[str, Bars] | None = None,
    inference_precision: str | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Verify each artifact (``.onnx`` in ONNX Runtime and OpenVINO, ``.xml`` in OpenVINO).

    OpenVINO runs each in f32 arithmetic and, where the device's default differs (bf16 on
    CPUs that have it), in that too: what users' ``compile_model`` and ``matte`` run is
    checked, by ``bars_for``. ``inference_precision`` (``auto`` = the device's default, or
    ``f32``, ``bf16``, ``f16``) checks that arithmetic only.

    ``weights``: the checkpoint the artifacts were made from; without it, each artifact's
    backbone gets its default checkpoint, else the synthetic recipe (with a warning).
    ``cases`` synthetic composites (default ``DEFAULT_CASES``) from the ``seed``-th of
    verify's (default 0) of ``family`` (default ``VERIFY_FAMILY``, the hard composites), or
    the frames of the ``images`` folder — a user's own frames, the best judge of all: None
    means not given, and giving ``cases``, ``seed`` or ``family`` with ``images`` is an
    error, not silently ignored. ``bars``
    overrides the bars of some precisions; each must be a precision of an artifact.
    """
    if images is not None:
        given = [
            _option(name) for name, value in (("cases", cases), ("seed", seed), ("family", family)) if value is not None
        ]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise ConfigError(f"{', '.join(given)} {verb} to synthetic composites, not to --images {images}")
    cases = DEFAULT_CASES if cases is None else cases
    seed = 0 if seed is None else seed
    family = VERIFY_FAMILY if family is None else family
    if family not in FAMILIES:
        raise ConfigError(f"synthetic family {family!r} is not one of {', '.join(FAMILIES)}")
    overrides = dict(bars or {})
    bars = {**case_bars(images, family), **overrides}
    if not artifacts:
        raise ArtifactError("no artifacts to verify: give .onnx / .xml files, or run `make export` first")
    if cases < 1:
        raise ArtifactError(f"--cases {cases}: at least one case is needed")
    if seed < 0:
        raise ArtifactError(f"--seed {seed}: seeds are whole numbers from 0")
    # Every artifact's metadata first: a mistake in any of them, or a bar for a precision
    # none has, is found before minutes of work.
    paths = [Path(path) for path in artifacts]
    metadatas = [artifact_metadata(path) for path in paths]
    _check_overrides(overrides, {judged_precision(ExportConfig.from_metadata(metadata)) for metadata in metadatas})
    if images is None:  # seeds that are another use's (INT8 calibration) are refused now, not later
        seeds_for("verify", cases, seed)
    # Cases that could never fit in memory are refused before one is read or made.
    count = cases if images is None else len(image_names(images))
    for config in {ExportConfig.from_metadata(metadata) for metadata in metadatas}:
        require_frame_memory(config, count, "verification", CASE_BYTES_PER_PIXEL)
    arithmetics = _arithmetics(inference_precision)
    report = VerifyReport(checkpoint="", case_names=[], artifacts=[], isa=cpu_isa())
    resolved: dict[str, Weights] = {} if weights is None else {weights.backbone: weights}
    references: dict[ExportConfig, Reference] = {}
    # A dynamic artifact is verified at the size in its metadata and at a second one.
    entries: list[tuple[Path, dict[str, str], tuple[int, int] | None]] = []
    for path, metadata in zip(paths, metadatas, strict=True):
        stated = ExportConfig.from_metadata(metadata)
        sizes = [(stated.height, stated.width), stated.second_resolution()] if stated.dynamic else [None]
        entries += [(path, metadata, size) for size in sizes]
    for path, metadata, size in entries:
        config = ExportConfig.from_metadata(metadata)
        if size is not None:
            config = config.replace(height=size[0], width=size[1])
        precision = judged_precision(config)
        key = config.replace(precision="FP32", onnx_weights="FP32")  # one reference for every variant
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
                else synthetic_cases(config.height, config.width, cases, "verify", seed, family)
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
        for runner in runners_for(path, metadata, arithmetics, size):
            if on_progress:
                on_progress(f"running {runner.name}")
            actual: dict[str, list[np.ndarray]] = {name: [] for name in config.outputs}
            first = reference.cases[0]
            runner.infer(first.feeds())  # warm-up, not timed
            start = time.perf_counter()
            for case in reference.cases:
                result = runner.infer(case.feeds())
                for name in config.outputs:
                    actual[name].append(result[name])
            milliseconds = (time.perf_counter() - start) * 1000 / len(reference.cases)
            got = {name: np.concatenate(v) for name, v in actual.items()}
            arithmetic = runner.inference_precision
            asked = inference_precision not in (None, "auto") and runner.runtime == "openvino"
            if asked and arithmetic != inference_precision:  # OpenVINO falls back without a word
                note = (
                    f"{path}: --inference-precision {inference_precision} was asked, but this CPU computes "
                    f"{arithmetic} (it has no {inference_precision} arithmetic): judged as {arithmetic}"
                )
                if note not in report.warnings:
                    report.warnings.append(note)
            bar = bars_for(precision, arithmetic, artifact_weights.synthetic, bars, set(overrides))
            if bar is SYNTHETIC_INT8_BARS:
                what = "INT8" if precision == "INT8" else f"{arithmetic} arithmetic"
                note = f"{path}: {what} of synthetic weights is judged by the looser synthetic INT8 bars"
                if note not in report.warnings:
                    report.warnings.append(note)
            comparisons = {
                name: compare_output(name, reference.output(name), got[name], bar) for name in config.outputs
            }
            if precision != "FP32" or arithmetic != "f32":  # reported, not judged (DIAGNOSTIC_OUTPUTS)
                for name in DIAGNOSTIC_OUTPUTS & set(comparisons):
                    comparisons[name].checks = []
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
                    arithmetic=arithmetic,
                    bars=bar.name,
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
