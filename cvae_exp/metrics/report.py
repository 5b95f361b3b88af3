"""The lab's grader, batched in torch.

Every function mirrors one line of the grading protocol so that scores computed
during training match the numbers the grader would produce from saved PNGs.
"""

from __future__ import annotations

import torch
from torch import Tensor

SSIM_WIN_SIZE = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DATA_RANGE = 255.0


def quantize_uint8(images: Tensor) -> Tensor:
    """Quantise float images in [0, 1] to uint8 the way a PNG written by
    torchvision's ``save_image`` stores them, since the grader reads PNGs back."""
    return (images * 255 + 0.5).clamp(0, 255).to(torch.uint8)


def _check_uint8_pair(orig: Tensor, recon: Tensor) -> None:
    """Refuse float inputs: the grader's data_range of 255 only holds for uint8."""
    if orig.dtype != torch.uint8 or recon.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {orig.dtype} and {recon.dtype}; use quantize_uint8 first")
    if orig.shape != recon.shape:
        raise ValueError(f"shape mismatch: {tuple(orig.shape)} vs {tuple(recon.shape)}")


def _window_means(maps: Tensor) -> Tensor:
    """Means over every SSIM_WIN_SIZE x SSIM_WIN_SIZE window inside (n, c, H, W) maps
    (valid mode), from running sums along each axis. On 8-bit images every sum is an
    integer below 2**53, so this is exact in float64, and 2x faster on a CPU than
    avg_pool2d's 49 additions per pixel (a box filter no library offers in this form)."""
    w = SSIM_WIN_SIZE
    sums = maps.cumsum(-1)
    sums = torch.cat([sums[..., w - 1 : w], sums[..., w:] - sums[..., :-w]], dim=-1)
    sums = sums.cumsum(-2)
    sums = torch.cat([sums[..., w - 1 : w, :], sums[..., w:, :] - sums[..., :-w, :]], dim=-2)
    return sums / w**2


def _ssim_chunk(x: Tensor, y: Tensor) -> Tensor:
    """Mean SSIM of (n, 1, H, W) float64 images over the border-cropped map.

    skimage filters the full image and crops (win_size - 1) // 2 pixels per side;
    the windows left never touch the border, so valid-mode window means are exact.
    """
    stats = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    ux, uy, uxx, uyy, uxy = _window_means(stats).unbind(dim=1)
    num_window_pixels = SSIM_WIN_SIZE**2
    cov_norm = num_window_pixels / (num_window_pixels - 1)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (SSIM_K1 * DATA_RANGE) ** 2
    c2 = (SSIM_K2 * DATA_RANGE) ** 2
    ssim_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return ssim_map.flatten(1).mean(dim=1)


def ssim_per_image(orig: Tensor, recon: Tensor, *, chunk_size: int = 1024) -> Tensor:
    """Per-image SSIM equal to ``skimage.metrics.structural_similarity(o, r,
    data_range=255)`` with its defaults, for uint8 (N, 1, H, W) or (N, H, W) input.

    Returns a float64 tensor (N,). Images are processed ``chunk_size`` at a time so
    that a whole test set fits in memory.
    """
    _check_uint8_pair(orig, recon)
    if orig.dim() == 3:
        orig, recon = orig.unsqueeze(1), recon.unsqueeze(1)
    if orig.dim() != 4 or orig.shape[1] != 1:
        raise ValueError(f"expected (N, 1, H, W) or (N, H, W), got {tuple(orig.shape)}")
    if min(orig.shape[-2:]) < SSIM_WIN_SIZE:
        raise ValueError(f"images must be at least {SSIM_WIN_SIZE}x{SSIM_WIN_SIZE}")
    return torch.cat(
        [_ssim_chunk(o.double(), r.double()) for o, r in zip(orig.split(chunk_size), recon.split(chunk_size))]
    )


def mse_per_image(orig: Tensor, recon: Tensor) -> Tensor:
    """Per-image mean of (orig/255 - recon/255)^2 over pixels, float64 (N,)."""
    _check_uint8_pair(orig, recon)
    diff = orig.double() / DATA_RANGE - recon.double() / DATA_RANGE
    return diff.square().flatten(1).mean(dim=1)


def simplified_fid(
    generated: Tensor,
    generated_labels: Tensor,
    real: Tensor,
    real_labels: Tensor,
    num_classes: int,
) -> Tensor:
    """Per-class pixel-space "FID" between generated and real uint8 images.

    For each class the per-pixel mean and population variance of both sets are
    compared as independent Gaussians: ||mu_g - mu_r||^2 + sum(v_g + v_r -
    2 sqrt(v_g v_r)). Returns float64 (num_classes,); the grader's FID is its mean.
    """
    if generated.dtype != torch.uint8 or real.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {generated.dtype} and {real.dtype}")
    gen = generated.flatten(1).double() / DATA_RANGE
    ref = real.flatten(1).double() / DATA_RANGE
    if gen.shape[1] != ref.shape[1]:
        raise ValueError(f"pixel count mismatch: {gen.shape[1]} vs {ref.shape[1]}")
    per_class = []
    for c in range(num_classes):
        gen_c = gen[generated_labels == c]
        ref_c = ref[real_labels == c]
        if len(gen_c) == 0 or len(ref_c) == 0:
            raise ValueError(
                f"class {c} has {len(gen_c)} generated and {len(ref_c)} real images; both must be non-empty"
            )
        mu_g, mu_r = gen_c.mean(dim=0), ref_c.mean(dim=0)
        v_g, v_r = gen_c.var(dim=0, correction=0), ref_c.var(dim=0, correction=0)
        per_class.append((mu_g - mu_r).square().sum() + (v_g + v_r - 2 * (v_g * v_r).sqrt()).sum())
    return torch.stack(per_class)


def bonus(latent_dim: int, num_pixels: int = 784) -> float:
    """Score multiplier that rewards a smaller latent space."""
    return 0.2 + (1 - latent_dim / num_pixels)


def report_score(ssim: float, mse: float, latent_dim: int, fid: float | None = None) -> tuple[float, float]:
    """Grader score as (capped, uncapped).

    With ``fid`` it is the conditional task (cap 30), without it the unconditional
    one (cap 10). The uncapped value is kept because the cap hides progress near
    the top.
    """
    if fid is None:
        raw, cap = ssim * 5 + max(0.1 - mse, 0.0) * 50, 10.0
    else:
        raw, cap = ssim * 10 + max(0.1 - mse, 0.0) * 100 + max(10 - fid, 0.0), 30.0
    uncapped = raw * bonus(latent_dim)
    return min(uncapped, cap), uncapped
