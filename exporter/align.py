"""Aligning a hand-held background capture with the frame, as the original's
``--preprocess-alignment`` does: ORB features, brute-force Hamming matches, a RANSAC
homography from the background to the frame, and the background warped onto the frame.

The model compares each frame pixel with the background pixel at the same place; a plate
shifted by a few pixels turns every edge of the room into "foreground". Matches on the
person are outliers to the room's homography, which RANSAC discards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from exporter.errors import InputError

__all__ = ["ALIGN_MIN_INLIERS", "ALIGN_REFRESH_FRAMES", "Alignment", "estimate_alignment"]

ORB_FEATURES = 4000
# A homography has 8 degrees of freedom; fewer than this many RANSAC inliers, or fewer than
# this share of the matches, and the fit is as likely to be noise as the room.
ALIGN_MIN_INLIERS = 40
ALIGN_MIN_INLIER_SHARE = 0.2
RANSAC_PIXELS = 3.0
# A video re-estimates the homography this often (a hand-held capture is aligned to the
# camera's first position; the camera itself may drift), and when the inlier count falls
# below half the first fit's.
ALIGN_REFRESH_FRAMES = 30


@dataclass(frozen=True)
class Alignment:
    """A homography from the background to the frame and how well it is supported."""

    homography: np.ndarray  # (3, 3)
    inliers: int
    matches: int
    size: tuple[int, int]  # (height, width) of the images

    @property
    def shift(self) -> tuple[float, float]:
        """How far (x, y) in pixels the background's centre moves to meet the frame's."""
        height, width = self.size
        x, y, w = self.homography @ np.array([width / 2, height / 2, 1.0])
        return float(x / w - width / 2), float(y / w - height / 2)

    @property
    def rotation(self) -> float:
        """Rotation in degrees (positive: clockwise in image coordinates)."""
        return math.degrees(math.atan2(self.homography[1, 0], self.homography[0, 0]))

    def describe(self) -> str:
        dx, dy = self.shift
        return f"shift ({dx:+.1f}, {dy:+.1f}) px, rotation {self.rotation:+.2f} deg, {self.inliers} inliers"

    def warp(self, background: np.ndarray, frame: np.ndarray) -> np.ndarray:
        """``background`` warped onto ``frame``'s pixels; where it has no pixel (outside its
        borders) the frame's own pixels stand in, as in the original."""
        import cv2

        height, width = frame.shape[:2]
        warped = cv2.warpPerspective(background, self.homography, (width, height), flags=cv2.INTER_LINEAR)
        valid = cv2.warpPerspective(
            np.ones(background.shape[:2], np.uint8), self.homography, (width, height), flags=cv2.INTER_NEAREST
        )
        return np.where(valid[..., None] > 0, warped, frame)


def _gray(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def estimate_alignment(background: np.ndarray, frame: np.ndarray) -> Alignment:
    """The homography mapping ``background`` (RGB uint8) onto ``frame`` (same size).

    Raises ``InputError`` when there is too little texture, or too few consistent matches,
    for a reliable fit: a wrong homography would break the matte worse than none.
    """
    import cv2

    orb = cv2.ORB_create(nfeatures=ORB_FEATURES)
    kp_b, des_b = orb.detectAndCompute(_gray(background), None)
    kp_f, des_f = orb.detectAndCompute(_gray(frame), None)
    if des_b is None or des_f is None or len(kp_b) < ALIGN_MIN_INLIERS or len(kp_f) < ALIGN_MIN_INLIERS:
        found = min(len(kp_b), len(kp_f))
        raise InputError(
            f"cannot align the background: {found} features found, at least {ALIGN_MIN_INLIERS} are needed "
            "(a background without texture or corners cannot be aligned; capture it again, or leave out --align)"
        )
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(des_b, des_f)
    if len(matches) < ALIGN_MIN_INLIERS:
        raise InputError(
            f"cannot align the background: {len(matches)} feature matches with the frame, at least "
            f"{ALIGN_MIN_INLIERS} are needed"
        )
    source = np.float32([kp_b[m.queryIdx].pt for m in matches])
    target = np.float32([kp_f[m.trainIdx].pt for m in matches])
    homography, mask = cv2.findHomography(source, target, cv2.RANSAC, RANSAC_PIXELS)
    inliers = int(mask.sum()) if mask is not None else 0
    if homography is None or inliers < max(ALIGN_MIN_INLIERS, ALIGN_MIN_INLIER_SHARE * len(matches)):
        raise InputError(
            f"cannot align the background: only {inliers} of {len(matches)} matches agree on one "
            "homography (is it the same room?)"
        )
    return Alignment(homography, inliers, len(matches), frame.shape[:2])
