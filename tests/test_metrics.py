"""PSNR and SSIM against their definitions and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from omnifield.scenes.metrics import psnr, ssim


def _skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=1, channel_axis=-1)


def test_psnr_definition():
    a = torch.zeros(4, 5, 3)
    b = torch.full((4, 5, 3), 0.1)
    assert psnr(a, b) == pytest.approx(20.0)  # -10 log10(0.01)
    assert psnr(a, a) == math.inf
    u8 = torch.full((4, 5, 3), 255, dtype=torch.uint8)
    assert psnr(u8, torch.ones(4, 5, 3)) == math.inf  # uint8 is scaled to [0, 1]
    with pytest.raises(ValueError, match="shape"):
        psnr(a, torch.zeros(4, 4, 3))


@pytest.mark.parametrize("shape", [(32, 40, 3), (11, 17, 3), (64, 48, 3)])
def test_ssim_matches_skimage(shape, tol):
    rng = np.random.default_rng(sum(shape))
    gt = rng.random(shape)
    noisy = np.clip(gt + rng.normal(0, 0.1, shape), 0, 1)
    smooth = np.clip(0.7 * gt + 0.2, 0, 1)
    for other in (noisy, smooth, rng.random(shape)):
        ours = ssim(torch.from_numpy(other).float(), torch.from_numpy(gt).float())
        ref = _skimage_ssim(other.astype(np.float32).astype(np.float64), gt.astype(np.float32).astype(np.float64))
        assert ours == pytest.approx(ref, abs=tol["ssim_vs_skimage"]["atol"])


def test_ssim_identity_and_small_images():
    img = torch.rand(6, 6, 3)
    assert ssim(img, img) == pytest.approx(1.0)
    assert ssim(img, 1 - img) < 0.5  # images smaller than the 11-pixel window still work
    u8 = (img * 255).to(torch.uint8)
    assert ssim(u8, u8) == pytest.approx(1.0)
