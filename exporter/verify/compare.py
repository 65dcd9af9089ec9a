"""Comparing an artifact's outputs with the reference's: statistics and bars, as data.

Statistics are small pure functions over ``|actual - reference|``; a comparison returns an
``OutputComparison`` whose ``checks`` say which bar held and which did not. Printing is
``exporter.verify.report``'s job.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from exporter import tolerances as tol
from exporter.errors import ConfigError

__all__ = [
    "BARS",
    "HARD_FRAME_INT8_BARS",
    "DIAGNOSTIC_OUTPUTS",
    "Bars",
    "REDUCED_ARITHMETIC_BARS",
    "SYNTHETIC_INT8_BARS",
    "Check",
    "bars_for",
    "OutputComparison",
    "compare_metrics",
    "compare_output",
    "differing_patches",
    "overridden_bars",
]

PATCH = 4  # the refiner's patch size at full resolution


@dataclass(frozen=True)
class Bars:
    """What an artifact of one precision must meet, per output.

    Args:
        max_abs: largest |d| allowed outside differing patches (None: not judged).
        mean_abs: largest mean |d| allowed (None: not judged).
        patch_delta: a 4x4 patch differs when its largest |d| exceeds this.
        patch_share: largest share of differing patches allowed.
        metric_rise: ``(metric, largest relative rise over the reference)`` pairs, judged
            where there is ground truth (INT8 trades accuracy; FP32 and FP16 must not).
        output_mean_abs: ``(output, mean_abs)`` pairs overriding ``mean_abs`` per output.
        name: what the report calls these bars (which judged an artifact).
    """

    max_abs: float | None
    mean_abs: float | None
    patch_delta: float
    patch_share: float
    metric_rise: tuple[tuple[str, float], ...] = ()
    output_mean_abs: tuple[tuple[str, float], ...] = ()
    name: str = ""


# Outputs for diagnosis, not for deployment: MattingBase's 32 hidden channels (unbounded
# features, not 0..1 values, so bars made for alpha and colour do not fit them) and the
# refine model's err_sm / ref_sm (--extra-outputs; ref_sm is 0 or 1, so any patch chosen
# differently is a whole patch off). They are judged by the FP32 bars in f32 arithmetic,
# where they must equal the original's; in reduced precision they are compared and reported
# only (INT8 of synthetic weights measured: hid 78% of patches off by > 0.05, mean |d| 0.012).
DIAGNOSTIC_OUTPUTS = frozenset({"hid", "err_sm", "ref_sm"})

BARS: dict[str, Bars] = {
    "FP32": Bars(
        max_abs=tol.FP32_ATOL,
        mean_abs=None,
        patch_delta=tol.FP32_PATCH_DELTA,
        patch_share=tol.FP32_PATCH_SHARE,
        name="FP32",
    ),
    "FP16": Bars(
        max_abs=None,
        mean_abs=tol.FP16_MEAN_ATOL,
        patch_delta=tol.FP16_PATCH_DELTA,
        patch_share=tol.FP16_PATCH_SHARE,
        name="FP16",
    ),
    "INT8": Bars(
        max_abs=None,
        mean_abs=tol.INT8_MEAN_ATOL,
        patch_delta=tol.INT8_PATCH_DELTA,
        patch_share=tol.INT8_PATCH_SHARE,
        metric_rise=tol.INT8_METRIC_RISE,
        output_mean_abs=(("fgr", tol.INT8_FGR_MEAN_ATOL),),
        name="INT8",
    ),
}
# INT8 judged on frames as hard as real ones (the hard composites, a user's --images): see
# INT8_HARD_* in exporter.tolerances.
HARD_FRAME_INT8_BARS = dataclasses.replace(
    BARS["INT8"],
    mean_abs=tol.INT8_HARD_MEAN_ATOL,
    patch_share=tol.INT8_HARD_PATCH_SHARE,
    name="INT8 (hard frames)",
)
# INT8 of synthetic (random) weights: see INT8_SYNTHETIC_* in exporter.tolerances.
SYNTHETIC_INT8_BARS = Bars(
    max_abs=None,
    mean_abs=tol.INT8_SYNTHETIC_MEAN_ATOL,
    patch_delta=tol.INT8_PATCH_DELTA,
    patch_share=tol.INT8_SYNTHETIC_PATCH_SHARE,
    metric_rise=tol.INT8_SYNTHETIC_METRIC_RISE,
    name="synthetic INT8",
)

# An FP32 or FP16 IR computed in bf16 or f16: see REDUCED_FGR_MEAN_ATOL in exporter.tolerances.
REDUCED_ARITHMETIC_BARS = Bars(
    max_abs=None,
    mean_abs=tol.FP16_MEAN_ATOL,
    patch_delta=tol.FP16_PATCH_DELTA,
    patch_share=tol.FP16_PATCH_SHARE,
    metric_rise=tol.INT8_METRIC_RISE,
    output_mean_abs=(("fgr", tol.REDUCED_FGR_MEAN_ATOL),),
    name="reduced arithmetic",
)


def bars_for(precision: str, arithmetic: str, synthetic: bool, bars: dict[str, Bars], overridden: set[str]) -> Bars:
    """The bars an artifact of ``precision`` run in ``arithmetic`` meets: its precision's in
    f32; in bf16 or f16, ``REDUCED_ARITHMETIC_BARS`` (INT8's own bars already allow 8-bit
    error). Synthetic weights amplify 8-bit and bf16 rounding alike: ``SYNTHETIC_INT8_BARS``
    then (for INT8, unless the user set INT8's bars; a user's FP32 and FP16 bars judge f32
    arithmetic only)."""
    reduced = arithmetic != "f32" and precision != "INT8"
    if synthetic and (reduced or (precision == "INT8" and "INT8" not in overridden)):
        return SYNTHETIC_INT8_BARS
    return REDUCED_ARITHMETIC_BARS if reduced else bars[precision]


# The bars a user may override, by option name: (precision, Bars field).
BAR_OPTIONS = {
    "fp32_max_abs": ("FP32", "max_abs"),
    "fp32_patch_share": ("FP32", "patch_share"),
    "fp16_mean_abs": ("FP16", "mean_abs"),
    "fp16_patch_share": ("FP16", "patch_share"),
}


def overridden_bars(**values: float | None) -> dict[str, Bars]:
    """The bars of the precisions that the given ``BAR_OPTIONS`` values (None: not given)
    change, for ``verify(bars=...)``; ``ConfigError`` for a value that is not a number >= 0."""
    bars: dict[str, Bars] = {}
    for option, value in values.items():
        if value is None:
            continue
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"--{option.replace('_', '-')} {value}: a bar is a number >= 0")
        precision, name = BAR_OPTIONS[option]
        bars[precision] = dataclasses.replace(
            bars.get(precision, BARS[precision]), **{name: value}, name=f"{precision} as given"
        )
    return bars


@dataclass
class Check:
    """One bar: ``value <= bound``."""

    name: str
    value: float
    bound: float

    @property
    def passed(self) -> bool:
        return bool(self.value <= self.bound)


@dataclass
class OutputComparison:
    """Statistics of one output over every case, and the bars' verdicts."""

    output: str
    max_abs: float
    mean_abs: float
    p999_abs: float
    share_over_level: float
    patch_share: float
    max_abs_outside: float
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def __bool__(self) -> bool:
        return self.passed


def patch_max(error: np.ndarray) -> np.ndarray:
    """``(N, C, H, W)`` -> largest value in each 4x4 patch over channels, ``(N, H/4, W/4)``."""
    n, c, h, w = error.shape
    return error.reshape(n, c, h // PATCH, PATCH, w // PATCH, PATCH).max(axis=(1, 3, 5))


def differing_patches(reference: np.ndarray, actual: np.ndarray, delta: float) -> np.ndarray:
    """Boolean ``(N, H/4, W/4)``: patches whose largest |d| exceeds ``delta``."""
    return patch_max(np.abs(actual - reference)) > delta


def compare_output(name: str, reference: np.ndarray, actual: np.ndarray, bars: Bars) -> OutputComparison:
    """Compare ``actual`` with ``reference`` (both ``(N, C, H, W)``, N cases) under ``bars``."""
    if reference.shape != actual.shape:
        raise ValueError(f"{name}: shape {actual.shape} differs from the reference's {reference.shape}")
    error = np.abs(actual.astype(np.float64) - reference.astype(np.float64))
    # A NaN is as far off as it gets: "not within the delta", so a NaN patch differs.
    differing = ~(patch_max(error) <= bars.patch_delta)
    outside = np.repeat(np.repeat(~differing, PATCH, axis=1), PATCH, axis=2)[:, None]
    outside_error = np.where(outside, error, 0.0)
    result = OutputComparison(
        output=name,
        max_abs=float(error.max()),
        mean_abs=float(error.mean()),
        p999_abs=float(np.quantile(error, 0.999)),
        share_over_level=float((error > tol.OFF_BY_ONE_LEVEL).mean()),
        patch_share=float(differing.mean()),
        max_abs_outside=float(outside_error.max()),
    )
    if bars.max_abs is not None:
        result.checks.append(Check("max |d| outside differing patches", result.max_abs_outside, bars.max_abs))
    mean_abs = dict(bars.output_mean_abs).get(name, bars.mean_abs)
    if mean_abs is not None:
        result.checks.append(Check("mean |d|", result.mean_abs, mean_abs))
    result.checks.append(Check(f"patches off by > {bars.patch_delta:g}", result.patch_share, bars.patch_share))
    return result


def compare_metrics(reference: dict[str, float], actual: dict[str, float], bars: Bars) -> list[Check]:
    """The relative rise of each accuracy metric ``bars`` judges, where both sides have it."""
    return [
        Check(f"{metric} rise over the original", actual[metric] / reference[metric] - 1, bound)
        for metric, bound in bars.metric_rise
        if metric in actual and reference.get(metric, 0) > 0
    ]
