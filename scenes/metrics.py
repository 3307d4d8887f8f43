"""Image quality metrics of the NeRF literature: PSNR and SSIM.

SSIM follows Wang et al. 2004 as used by NeRF / mip-NeRF / Instant-NGP evaluations: an 11-tap
Gaussian window with sigma 1.5, population covariances, ``K1 = 0.01``, ``K2 = 0.03``, averaged
over the valid region (no padding) and over the colour channels. It equals
``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1, channel_axis=-1)`` (checked in tests/test_metrics.py).

LPIPS is left out on purpose: it needs pretrained network weights that omnifield does not ship.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _as_float(image: Tensor, name: str) -> Tensor:
    """uint8 images become [0, 1] floats; float images are taken as they are."""
    if not isinstance(image, Tensor):
        image = torch.as_tensor(image)
    if image.dtype == torch.uint8:
        return image.double() / 255.0
    if not image.is_floating_point():
        raise TypeError(f"{name} must be uint8 or floating point, got {image.dtype}")
    return image.double()


def _check_pair(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    pred, target = _as_float(pred, "pred"), _as_float(target, "target").to(pred.device)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    return pred, target


def mse(pred: Tensor, target: Tensor) -> float:
    """Mean squared error of two images ``[..., 3]`` (uint8 or [0, 1] floats)."""
    pred, target = _check_pair(pred, target)
    return float(((pred - target) ** 2).mean())


def psnr_from_mse(value: float, data_range: float = 1.0) -> float:
    """PSNR in dB for a mean squared error (``inf`` for a perfect match)."""
    if value <= 0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / value)


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of ``pred`` vs ``target`` (same shape, e.g. ``[H, W, 3]``).

    uint8 inputs are scaled to [0, 1]; not differentiable (returns a Python float).
    """
    return psnr_from_mse(mse(pred, target), data_range)


def _gaussian_kernel(size: int, sigma: float, dtype, device) -> Tensor:
    """1-D Gaussian weights of odd length ``size`` summing to 1 (as scipy.ndimage.gaussian_filter)."""
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def ssim(
    pred: Tensor,
    target: Tensor,
    data_range: float = 1.0,
    window: int = 11,
    sigma: float = 1.5,
) -> float:
    """Structural similarity of two images ``[H, W, C]`` (uint8 or [0, 1] floats), mean over pixels and channels.

    Gaussian window ``window`` x ``window`` with std ``sigma``, valid region only. Images smaller
    than the window use the largest odd window that fits (same sigma); skimage refuses those.
    Computed in float64; not differentiable (returns a Python float).
    """
    pred, target = _check_pair(pred, target)
    if pred.ndim == 2:
        pred, target = pred[..., None], target[..., None]
    if pred.ndim != 3:
        raise ValueError(f"ssim expects [H, W, C] images, got {tuple(pred.shape)}")
    h, w, c = pred.shape
    size = min(window, h, w)
    size -= 1 - size % 2  # odd
    if size < 1:
        raise ValueError(f"image too small for SSIM: {tuple(pred.shape)}")
    k = _gaussian_kernel(size, sigma, pred.dtype, pred.device)
    kx = k.view(1, 1, 1, size).expand(c, 1, 1, size)
    ky = k.view(1, 1, size, 1).expand(c, 1, size, 1)

    def blur(x: Tensor) -> Tensor:  # [1, C, H, W] -> valid region
        return F.conv2d(F.conv2d(x, kx, groups=c), ky, groups=c)

    x = pred.permute(2, 0, 1)[None]
    y = target.permute(2, 0, 1)[None]
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return float((num / den).mean())
