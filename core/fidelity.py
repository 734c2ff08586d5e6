"""Fidelity of a cached run against an uncached one: PSNR and SSIM of the decoded frames."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def psnr(frames: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of float frames in [0, 1]; inf when identical."""
    mse = float(np.mean((frames.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(frames: np.ndarray, reference: np.ndarray, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window, K1=0.01, K2=0.03) over frames and channels."""
    x = torch.from_numpy(frames).double().permute(0, 3, 1, 2)
    y = torch.from_numpy(reference).double().permute(0, 3, 1, 2)
    channels = x.shape[1]
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    gauss = torch.exp(-(coords**2) / (2 * sigma**2))
    gauss /= gauss.sum()
    kernel = (gauss[:, None] * gauss[None, :]).expand(channels, 1, window, window).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


def delivered_fidelity(frames: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """PSNR (capped at IDENTICAL_PSNR for identical frames) and SSIM of two videos' 8-bit frames (what the MP4
    gets), as frontiers and receipts measure them."""
    from core.contract.frontier import IDENTICAL_PSNR

    x, y = frames.astype(np.float32) / 255, reference.astype(np.float32) / 255
    return min(psnr(x, y), IDENTICAL_PSNR), ssim(x, y)
