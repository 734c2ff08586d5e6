import math

import numpy as np
import pytest

from core.fidelity import psnr, ssim


def test_psnr_of_a_known_error() -> None:
    reference = np.zeros((2, 16, 16, 3), dtype=np.float32)
    assert psnr(reference + 0.1, reference) == pytest.approx(20.0)
    assert psnr(reference, reference) == math.inf


def test_ssim_bounds() -> None:
    rng = np.random.default_rng(0)
    frames = rng.random((3, 32, 32, 3)).astype(np.float32)
    other = rng.random((3, 32, 32, 3)).astype(np.float32)
    assert ssim(frames, frames) == pytest.approx(1.0)
    assert ssim(frames, other) < 0.05
    slightly = np.clip(frames + rng.normal(0, 0.02, frames.shape), 0, 1).astype(np.float32)
    assert 0.8 < ssim(slightly, frames) < 1.0
    # A constant brightness shift keeps structure but not luminance.
    assert ssim(np.clip(frames * 0.5 + 0.25, 0, 1), frames) < ssim(slightly, frames)
