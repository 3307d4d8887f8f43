"""The 3DGS photometric loss: ``(1 - lambda) L1 + lambda (1 - SSIM)`` with a differentiable float32 SSIM.

:func:`omnifield.scenes.metrics.ssim` is the evaluation metric (float64, returns a Python float);
this is its differentiable twin for training: the same 11-tap Gaussian window (sigma 1.5), the same
constants and valid-region average, in the input's dtype, with the five blurs of one image pair done
by one pair of separable grouped convolutions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_KERNELS: dict[tuple, Tensor] = {}


def _window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``[size]`` Gaussian weights summing to 1 (cached per dtype and device)."""
    key = (size, sigma, dtype, device)
    k = _KERNELS.get(key)
    if k is None:
        x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        w = torch.exp(-0.5 * (x / sigma) ** 2)
        k = (w / w.sum()).to(dtype=dtype, device=device)
        _KERNELS[key] = k
    return k


def ssim(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> Tensor:
    """Differentiable SSIM (Wang et al. 2004) of images ``[..., H, W, C]`` -> scalar mean over the valid
    region, the channels and the leading dimensions.

    Same definition as :func:`omnifield.scenes.metrics.ssim` (Gaussian window, population
    statistics, K1 = 0.01, K2 = 0.03, no padding), computed in the inputs' dtype (float32 in training).
    Differentiable w.r.t. both images.
    """
    if pred.shape != target.shape:
        raise ValueError(f"ssim: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.ndim < 3:
        raise ValueError(f"ssim: expected [..., H, W, C] images, got {tuple(pred.shape)}")
    h, w, c = pred.shape[-3:]
    size = min(window, h, w)
    size -= 1 - size % 2
    x = pred.reshape(-1, h, w, c).permute(0, 3, 1, 2)
    y = target.reshape(-1, h, w, c).permute(0, 3, 1, 2)
    b = x.shape[0]
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [B, 5C, H, W]
    k = _window(size, sigma, pred.dtype, pred.device)
    ch = 5 * c
    blurred = F.conv2d(stack, k.view(1, 1, 1, size).expand(ch, 1, 1, size), groups=ch)
    blurred = F.conv2d(blurred, k.view(1, 1, size, 1).expand(ch, 1, size, 1), groups=ch)
    mu_x, mu_y, xx, yy, xy = blurred.view(b, 5, c, *blurred.shape[-2:]).unbind(1)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    num = (2 * mu_xy + c1) * (2 * (xy - mu_xy) + c2)
    den = (mu_xx + mu_yy + c1) * ((xx - mu_xx) + (yy - mu_yy) + c2)
    return (num / den).mean()


def photometric_loss(pred: Tensor, target: Tensor, ssim_weight: float = 0.2) -> tuple[Tensor, Tensor, Tensor]:
    """3DGS loss of images ``[..., H, W, 3]``: returns ``(loss, l1, ssim)`` (all differentiable scalars)."""
    l1 = (pred - target).abs().mean()
    if ssim_weight == 0:
        return l1, l1, l1.detach() * 0 + 1
    s = ssim(pred, target)
    return (1.0 - ssim_weight) * l1 + ssim_weight * (1.0 - s), l1, s
