"""End-of-training evaluation with the report's grader (cvae_exp/metrics/report.py).

Reconstructions and samples are quantised to 8 bits as the lab's PNG files are,
then scored: SSIM and MSE on reconstructions of every test image, the per-class
pixel-space FID on `samples_per_class` samples of every class, the bonus and the Score.
"""

from pathlib import Path

import torch
from torchvision.io import write_png

from cvae_exp.metrics import mse_per_image, quantize_uint8, report_score, simplified_fid, ssim_per_image
from cvae_exp.models import CVAE

GRADED_SHAPE = (1, 28, 28)  # the lab's protocol: 28x28 grayscale images


def grader_skipped(cvae: CVAE) -> str | None:
    """Why the lab's grader (SSIM, per-class FID, Score) does not apply to this model's
    runs, or None where it does: it grades 28x28 grayscale images with class labels."""
    if not cvae.labels_condition:
        kind = "an image" if cvae.condition_kind == "image" else "a vector of attributes"
        return f"its condition is {kind}, not a class label"
    if tuple(cvae.image_shape) != GRADED_SHAPE:
        shapes = f"{list(cvae.image_shape)}, the grader's {list(GRADED_SHAPE)}"
        return f"its images are {shapes} ([channels, height, width])"
    return None


@torch.no_grad()
def generate_per_class(
    cvae: CVAE, samples_per_class: int, batch_size: int, device, sampler=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`samples_per_class` uint8 images of every label from z ~ p(z | label) (N(0, I) for the
    lab's CVAE) or from a fitted latent sampler (cvae_exp/samplers.py), label-major."""
    labels = torch.arange(cvae.num_classes, device=device).repeat_interleave(samples_per_class)
    images = [quantize_uint8(cvae.sample(chunk, sampler=sampler).float()) for chunk in labels.split(batch_size)]
    return torch.cat(images), labels


def grade(
    originals: torch.Tensor,
    reconstructions: torch.Tensor,
    labels: torch.Tensor,
    generated: torch.Tensor,
    generated_labels: torch.Tensor,
    latent_dim: int,
    conditional: bool,
) -> dict[str, float]:
    """The report's metrics; the Score uses the conditional form only for a conditional model."""
    ssim = ssim_per_image(originals, reconstructions).mean().item()
    mse = mse_per_image(originals, reconstructions).mean().item()
    num_classes = int(labels.max()) + 1
    fid = simplified_fid(generated, generated_labels, originals, labels, num_classes).mean().item()
    score, score_uncapped = report_score(ssim, mse, latent_dim, fid if conditional else None)
    return {"ssim": ssim, "mse": mse, "fid": fid, "score": score, "score_uncapped": score_uncapped}


def save_grader_images(
    directory: Path, reconstructions: torch.Tensor, generated: torch.Tensor, generated_labels: torch.Tensor
) -> None:
    """The lab's layout: recon/recon_{i}.png for test image i, gen/<label>/<i>.png."""
    (directory / "recon").mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(reconstructions.cpu()):
        write_png(image, str(directory / "recon" / f"recon_{index}.png"))
    for label in generated_labels.unique().tolist():
        folder = directory / "gen" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(generated[generated_labels == label].cpu()):
            write_png(image, str(folder / f"{index}.png"))
