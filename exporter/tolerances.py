"""Every numerical bar of the project, in one place, with where each number comes from."""

from __future__ import annotations

__all__ = [
    "INT8_CALIBRATION_FRAMES",
    "INT8_FGR_MEAN_ATOL",
    "INT8_HARD_MEAN_ATOL",
    "INT8_MAX_DROP_BELOW_FLOOR",
    "INT8_MIN_PIXELS",
    "INT8_HARD_PATCH_SHARE",
    "INT8_MEAN_ATOL",
    "INT8_METRIC_RISE",
    "INT8_PATCH_DELTA",
    "INT8_PATCH_SHARE",
    "INT8_SYNTHETIC_MEAN_ATOL",
    "INT8_SYNTHETIC_METRIC_RISE",
    "INT8_SYNTHETIC_PATCH_SHARE",
    "INT8_VALIDATION_FRAMES",
    "FP16_MEAN_ATOL",
    "FP16_PATCH_DELTA",
    "FP16_PATCH_SHARE",
    "FP32_ATOL",
    "FP32_PATCH_DELTA",
    "FP32_PATCH_SHARE",
    "GOLDEN_ATOL",
    "HARD_FP16_PHA_FLOOR",
    "HARD_INT8_PHA_FLOOR",
    "OFF_BY_ONE_LEVEL",
    "REDUCED_FGR_MEAN_ATOL",
    "SERVED_ATOL",
]

# Our eager model against the original's golden outputs (float32, same weights and
# inputs). Measured: 4.2e-7 max; the bar leaves room for other BLAS kernels only.
GOLDEN_ATOL = 1e-5

# FP32 artifacts (ONNX in ONNX Runtime or OpenVINO, IR FP32 in OpenVINO with f32
# inference) against the eager model: the export issue's bar, held outside patches that
# differ by more than FP32_PATCH_DELTA. Measured at 720p on synthetic composites: 6e-6.
FP32_ATOL = 1e-4
# A 4x4 patch "differs" when its largest |d| exceeds this: a refinement-selection flip
# (an error value within float rounding of the k-th largest), not arithmetic noise.
FP32_PATCH_DELTA = 1e-3
# Share of patches allowed to differ in FP32: 0.05%, 2.5 of the 5,000 refined at 720p.
FP32_PATCH_SHARE = 0.0005

# FP16 artifacts, mean |d| over a whole output. Random synthetic weights amplify fp16
# weight rounding about ten times more than trained weights: a plain compress_to_fp16 IR
# of the original measured 2.1e-3 on random weights, 2.1e-4 on the official ones.
FP16_MEAN_ATOL = 3e-3
# In FP16 a patch differs when off by more than 0.05 (a visible change), and at most 1%
# may: the same plain IR flipped 0.44% of patches on random weights, 0.05% on trained.
FP16_PATCH_DELTA = 0.05
FP16_PATCH_SHARE = 0.01

# One 8-bit level: the share of pixels off by more than this is reported, not judged.
OFF_BY_ONE_LEVEL = 1 / 255
# A served model (REST binary, REST JSON, gRPC) against the same artifact run here in the same
# arithmetic: the serving issue's bar. The tensors travel as float32 bits (JSON numbers too,
# printed exactly); measured 0.
SERVED_ATOL = 1e-6
# INT8 (NNCF post-training quantization, refiner.conv4 kept in floating point; see
# exporter.export.int8), judged against the eager FP32 model. Measured on trained_v1.pth (a
# briefly trained original model) at 720p, 16 held-out synthetic composites, 16 calibration
# frames: mean |d| pha 1.35e-3, 1.2% of patches off by > 0.05, alpha MAD +1.5%, MSE +1.4%,
# GRAD +0.6%, foreground MSE +0.9% over FP32. The bars are the INT8 issue's targets.
INT8_MEAN_ATOL = 4e-3
# fgr measured 7.1e-3: most of its error is where alpha is 0 and the colour is never seen;
# where it is seen, the foreground MSE rise below judges it.
INT8_FGR_MEAN_ATOL = 1e-2
INT8_PATCH_DELTA = 0.05
INT8_PATCH_SHARE = 0.02
# INT8 on frames as hard as real ones: verify's hard composites (exporter.data.hard_case) and
# a user's own frames (--images). The mean is issue 30's bar. Hundreds of one-pixel strands
# make many more patches that an 8-bit change moves by > 0.05: trained_v1's 720p INT8 IR
# (calibrated on hard composites) measured pha mean |d| 3.9e-3 and 3.4% of patches off on
# verify's 4 hard composites against 1.1e-3 and 0.97% on the plain ones, identical with AVX2
# and VNNI kernels; of its differing patches, 35% lie on strands the refiner refines in
# neither model (beyond its 80,000 pixels), 20% were refined by one model only, 45% by both.
# Its alpha MAD, GRAD and foreground MSE against the truth rose -0.2%, -0.4%, +1.5%: the
# metric rises (INT8_METRIC_RISE, alpha MAD at most +3%, tighter than issue 30's 1.05x) judge
# what a viewer sees. Keeping decoder.conv4 in floating point as well left 2.6%.
INT8_HARD_MEAN_ATOL = 5e-3
INT8_HARD_PATCH_SHARE = 0.04
# The smallest frame (in pixels) whose INT8 IR holds those bars: made from a trained model
# below it, plain post-training INT8 is refused (accuracy control, --max-drop, may still
# be asked for). Below 720p each 8-bit step moves more of the frame: the same strands cover
# more of it and every refined patch is a larger share. trained_v1, INT8 IR calibrated on 16
# hard composites, verify's 4 hard composites, pha mean |d| / patches off (bars 5e-3 / 4%):
# 1920x1080 3.5e-3 / 3.1% (2 composites), 1280x720 3.9e-3 / 3.4%, 960x540 7.0e-3 / 6.2%,
# 640x360 (the preset's 20,000 refined pixels) 9.8e-3 / 7.4%, 512x288 8.9e-3 / 8.4%.
INT8_MIN_PIXELS = 1280 * 720
# Below INT8_MIN_PIXELS, the largest --max-drop accepted: the agreement score is 100 - alpha
# MAD x1e3 against the FP32 model (there accuracy control always compares with FP32), so a
# drop of 5 is an alpha mean |d| of 5e-3, the bar on hard frames; a larger drop would accept
# the plain INT8 the floor refuses.
INT8_MAX_DROP_BELOW_FLOOR = INT8_HARD_MEAN_ATOL * 1e3
# Largest relative rise of each accuracy metric (against ground truth) over the FP32 model.
INT8_METRIC_RISE = (("alpha MAD", 0.03), ("alpha GRAD", 0.05), ("foreground MSE", 0.05))
# Random synthetic weights amplify 8-bit rounding about fifty times (their alpha and error
# maps are smooth and unsaturated, so every small change moves a patch's rank): the same
# INT8 of the seed-0 recipe measured mean |d| pha 5.2e-2, fgr 3.3e-2, 19% of patches off,
# MAD +0.2%, GRAD +3.1%, foreground MSE +3.3% at 720p. INT8 made from synthetic weights is
# judged by these looser bars (and verify says so); calibrated on black frames it measured
# fgr mean |d| 0.40, 100% of patches off and foreground MSE +684%.
INT8_SYNTHETIC_MEAN_ATOL = 8e-2
INT8_SYNTHETIC_PATCH_SHARE = 0.5
INT8_SYNTHETIC_METRIC_RISE = (("alpha MAD", 0.1), ("alpha GRAD", 0.15), ("foreground MSE", 0.15))
# Calibration frames: 16, as the first probe used; 32 measured the same accuracy at twice
# the quantization time. Validation (held-out) frames for accuracy control: 8.
INT8_CALIBRATION_FRAMES = 16
INT8_VALIDATION_FRAMES = 8

# Reduced arithmetic (OpenVINO computing an FP32 or FP16 IR in bf16 or f16, the CPU's
# default where it has AVX-512 bf16 or AMX): judged by the FP16 bars and the accuracy table
# (INT8's metric rises: it must trade no more accuracy than INT8 does). Measured on
# trained_v1.pth at 720p, IR FP32 in bf16 against the eager model, 4 synthetic composites:
# pha mean |d| 6.0e-4 (max 0.33), 0.55% of patches off by > 0.05, fgr mean |d| 3.0e-3 — at
# the FP16 bar, and as in INT8 mostly where alpha is 0 and the colour is never seen, so fgr
# gets INT8's 1e-2. Synthetic (random) weights amplify it as they do 8 bits (pha mean |d|
# 1.3e-2, 2.3% of patches at 192x320): judged by the synthetic INT8 bars, with a warning.
REDUCED_FGR_MEAN_ATOL = 1e-2

# Difficulty floors of verify's hard synthetic composites (exporter.data.hard_case): errors
# they must keep causing, so that they cannot quietly become easy again. On the golden
# (seed-0 synthetic weights) 192x320 model, 2 cases, f32 arithmetic, measured: FP16 IR pha
# mean |d| 9.0e-4 on the hard cases, 5.5e-4 on the plain ones (synthetic_case); INT8 IR pha
# mean |d| 3.5e-2 on both (random weights amplify 8-bit rounding alike everywhere, see
# INT8_SYNTHETIC_MEAN_ATOL; calibrated on the hard composites since, 3.9e-2 on 4 hard ones).
# Why they are hard shows on trained weights: trained_v1's 360p INT8 IR (calibrated on the
# plain composites) measured pha mean |d| 1.17e-2 on 4 hard cases, 8.1e-3 on room_case composites
# (cluttered room, background moved 1.8 px and 0.3 degrees), 2.1e-3 on the plain ones; with
# AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2 on an AVX-512 VNNI machine) 1.25e-2, 9.1e-3, 2.5e-3.
HARD_FP16_PHA_FLOOR = 7e-4
HARD_INT8_PHA_FLOOR = 2e-2
