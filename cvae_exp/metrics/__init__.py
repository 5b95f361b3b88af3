"""Metrics that reproduce the lab's grader (SSIM, MSE, simplified FID, score)."""

from cvae_exp.metrics.report import (
    bonus,
    mse_per_image,
    quantize_uint8,
    report_score,
    simplified_fid,
    ssim_per_image,
)

__all__ = [
    "bonus",
    "mse_per_image",
    "quantize_uint8",
    "report_score",
    "simplified_fid",
    "ssim_per_image",
]
