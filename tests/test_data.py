"""The one data module: named uses of synthetic frames that never share a frame, and image
folders in the Open Model Zoo layout with every bad input named."""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exporter import tolerances as tol
from exporter.data import SEED_SPAN, SEEDS, hard_case, image_cases, seeds_for, synthetic_case, synthetic_cases
from exporter.errors import ConfigError, InputError
from exporter.verify.run import DEFAULT_CASES
from helpers import huge_png

# How many frames each use takes by default: verify's cases, INT8's calibration and
# validation frames, bench's one frame and bench --matte's distinct frames.
DEFAULT_COUNTS = {
    "verify": DEFAULT_CASES,
    "calibration": tol.INT8_CALIBRATION_FRAMES,
    "validation": tol.INT8_VALIDATION_FRAMES,
    "bench": 1,
    "bench-matte": 8,
}


def test_every_use_is_named_and_keeps_its_seeds():
    assert set(DEFAULT_COUNTS) == set(SEEDS)
    # The seeds verification and INT8 always used: numbers recorded with them still hold.
    assert [case.name for case in synthetic_cases(32, 48, 2)] == ["synthetic-0", "synthetic-1"]
    assert [case.name for case in synthetic_cases(32, 48, 2, "calibration")] == ["synthetic-1000", "synthetic-1001"]
    assert [case.name for case in synthetic_cases(32, 48, 2, "validation")] == ["synthetic-2000", "synthetic-2001"]
    (first,) = synthetic_cases(32, 48, 1, "calibration")
    again = synthetic_case(32, 48, 1_000)
    assert np.array_equal(first.src, again.src) and np.array_equal(first.pha, again.pha)


@pytest.mark.parametrize("counts", [DEFAULT_COUNTS, dict.fromkeys(SEEDS, SEED_SPAN)], ids=["default", "most"])
def test_named_uses_never_share_a_frame(counts):
    seeds = {use: set(seeds_for(use, count)) for use, count in counts.items()}
    for a, b in itertools.combinations(seeds, 2):
        assert not seeds[a] & seeds[b], (a, b)
    assert all(len(seeds[use]) == counts[use] for use in seeds)


def test_a_use_may_not_run_into_another():
    message = r"1001 synthetic calibration frames from seed 1000 would reuse the validation frames' seeds \(2000"
    with pytest.raises(ConfigError, match=message):
        seeds_for("calibration", SEED_SPAN + 1)
    # verify --seed 998 --cases 4 would verify INT8 on two of its calibration frames.
    with pytest.raises(ConfigError, match="would reuse the calibration frames' seeds"):
        seeds_for("verify", 4, start=998)
    assert seeds_for("verify", 4, start=996) == range(996, 1_000)
    beyond = max(SEEDS.values()) + SEED_SPAN
    assert seeds_for("verify", 4, start=beyond) == range(beyond, beyond + 4)  # past every use: free
    with pytest.raises(ValueError, match="is not one of verify, calibration"):
        seeds_for("training", 1)


def test_the_data_module_imports_no_torch():
    """Calibration (exporter.export.int8) and the deployment side read frames without torch."""
    code = "import sys, exporter.data; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def layout(root: Path, count: int = 2, size: tuple[int, int] = (48, 80), pha: bool = False) -> Path:
    """``count`` frames in the Open Model Zoo HumanMatting layout."""
    for i in range(count):
        case = synthetic_case(*size, 40 + i)
        images = {"com": case.src, "bgr": case.bgr} | ({"pha": (case.pha * 255).astype(np.uint8)} if pha else {})
        for sub, image in images.items():
            (root / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / sub / f"{i}.png")
    return root


def test_image_cases_read_resize_and_limit(tmp_path):
    folder = layout(tmp_path / "frames", 3, pha=True)
    cases = image_cases(folder, 96, 160, same_aspect=True, limit=2)
    assert [case.name for case in cases] == ["0", "1"]
    assert cases[0].src.shape == (96, 160, 3) and cases[0].src.dtype == np.uint8
    assert cases[0].pha.shape == (96, 160) and 0 <= cases[0].pha.min() and cases[0].pha.max() <= 1
    assert cases[0].fgr is None


def bad_folder(kind: str, root: Path) -> tuple[Path, bool, str]:
    """A folder with one mistake, whether the model's aspect is required, and the message."""
    folder = root / "frames"
    if kind == "missing":
        return folder, False, "does not exist or is not a folder"
    if kind == "no-bgr":
        (folder / "com").mkdir(parents=True)
        return folder, False, "needs com/ and bgr/ subfolders"
    if kind == "no-images":
        (folder / "com").mkdir(parents=True)
        (folder / "bgr").mkdir()
        (folder / "com" / "notes.txt").write_text("x")
        return folder, False, "holds no images"
    layout(folder)
    if kind == "bgr-missing":
        (folder / "bgr" / "1.png").unlink()
        return folder, False, "bgr/1.png is missing: every com/ image needs a bgr/ image"
    if kind == "unreadable":
        (folder / "com" / "0.png").write_bytes(b"not a png")
        return folder, False, "cannot read image"
    if kind in ("bomb", "bomb-aspect"):  # 240 megapixels: Pillow refuses it on opening
        huge_png(folder / "com" / "0.png", 20_000, 12_000)
        return folder, kind == "bomb-aspect", "com/0.png is larger than the"
    if kind == "com-aspect":
        Image.fromarray(synthetic_case(48, 48, 1).src).save(folder / "com" / "1.png")
        return folder, True, "com/1.png is 48x48, an aspect other than the model's 160x96"
    if kind == "bgr-aspect":
        Image.fromarray(synthetic_case(48, 48, 1).bgr).save(folder / "bgr" / "1.png")
        return folder, True, "bgr/1.png is 48x48, an aspect other than the model's 160x96"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["missing", "no-bgr", "no-images", "bgr-missing", "unreadable", "bomb", "bomb-aspect", "com-aspect", "bgr-aspect"],
)
def test_image_cases_name_every_bad_input(kind, tmp_path):
    folder, aspect, message = bad_folder(kind, tmp_path)
    with pytest.raises(InputError, match=message.replace(".", r"\.")):
        image_cases(folder, 96, 160, same_aspect=aspect)


def test_another_aspect_is_resized_where_it_is_allowed(tmp_path):
    """verify --images resizes any frame to the artifact's size; only calibration refuses."""
    folder, _, _ = bad_folder("bgr-aspect", tmp_path)
    assert image_cases(folder, 96, 160)[1].bgr.shape == (96, 160, 3)


# verify's hard composites (exporter.data.hard_case): each property real frames have and the
# plain composites lack, measured on the case itself; the plain case is the negative.
HARD = hard_case(192, 320, 0)
PLAIN = synthetic_case(192, 320, 0)


def thin_fraction(case) -> float:
    """Share of the frame in structures a 3x3 opening removes (strands, wires) whose alpha
    lies strictly between 0 and 1 somewhere along them."""
    import cv2

    mask = (case.pha > 0.1).astype(np.uint8)
    opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    thin = (mask > opened) & (case.pha < 0.99)
    return float(thin.mean())


def close_colour_share(case) -> float:
    """Share of the opaque subject whose colour is within 0.05 of the background behind it."""
    opaque = case.pha > 0.99
    close = np.abs(case.fgr - case.background).max(axis=2) < 0.05
    return float((opaque & close).sum() / opaque.sum())


def background_shift(case) -> float:
    """How far (pixels) the captured background moved from the true one (phase correlation)."""
    import cv2

    true = case.background.mean(axis=2).astype(np.float64)
    captured = case.bgr.mean(axis=2).astype(np.float64) / 255
    (dx, dy), _ = cv2.phaseCorrelate(true, captured)
    return float(np.hypot(dx, dy))


def noise_level(case) -> float:
    """Standard deviation (8-bit levels) of the frame around its exact composite."""
    alpha = case.pha[..., None]
    exact = (alpha * case.fgr + (1 - alpha) * case.background) * 255
    return float((case.src - exact).std())


def touches_sides(case) -> bool:
    """The subject reaches the frame's left or right edge (cut by it)."""
    return bool((case.pha[:, 0] > 0.5).any() or (case.pha[:, -1] > 0.5).any())


def test_hard_cases_have_strands_and_thin_lines():
    assert thin_fraction(HARD) > 0.01  # measured 1.3% of the frame
    yy, xx = np.mgrid[0:192, 0:320]
    blob = np.clip(1.5 - np.hypot(yy - 96, xx - 160) / 40, 0, 1).astype(np.float32)  # soft, no strands
    assert thin_fraction(dataclasses.replace(HARD, pha=blob)) == 0


def test_hard_cases_have_colours_close_to_the_background():
    assert close_colour_share(HARD) > 0.1
    assert close_colour_share(PLAIN) < 0.05


def test_hard_cases_captured_background_moved():
    assert 0.5 < background_shift(HARD) < 3
    assert background_shift(PLAIN) < 0.1  # only exposure and noise


def test_hard_cases_have_sensor_noise():
    assert noise_level(HARD) > 1.5
    plain = dataclasses.replace(
        HARD,
        src=np.clip(
            np.rint(HARD.pha[..., None] * HARD.fgr * 255 + (1 - HARD.pha[..., None]) * HARD.background * 255), 0, 255
        ).astype(np.uint8),
    )
    assert noise_level(plain) < 0.5  # the measure sees no noise where there is none


def test_hard_cases_subject_is_cut_by_the_frame():
    assert touches_sides(HARD) and (HARD.pha[-1] > 0.5).any()
    assert not touches_sides(PLAIN)


def test_hard_cases_have_soft_and_translucent_edges():
    """A wide band of partial alpha (blur, halo), not only a one-pixel rim."""
    partial = (HARD.pha > 0.05) & (HARD.pha < 0.95)
    assert partial.mean() > 2 * ((PLAIN.pha > 0.05) & (PLAIN.pha < 0.95)).mean()


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_every_hard_case_has_every_property(seed):
    case = hard_case(96, 160, seed)
    assert case.name == f"hard-{seed}"
    assert np.array_equal(case.src, hard_case(96, 160, seed).src)  # deterministic
    assert thin_fraction(case) > 0.005 and close_colour_share(case) > 0.05
    assert 0.5 < background_shift(case) < 3 and touches_sides(case)


def test_families_are_named():
    assert [c.name for c in synthetic_cases(32, 48, 2, family="hard")] == ["hard-0", "hard-1"]
    with pytest.raises(ValueError, match="family 'easy' is not one of plain, hard"):
        synthetic_cases(32, 48, 1, family="easy")
