"""Inception FID: the Frechet distance between test images and samples in Inception-v3's 2048 pool
features, the FID of the literature, as torchmetrics' FrechetInceptionDistance computes it over
torch-fidelity's port of the TensorFlow network (which resizes the images to 299x299 itself).

torch-fidelity would download the weights on first use; a compute node or a machine offline
cannot, so eval.inception_weights names a local copy, checked before training. A file that
holds a whole nn.Module (torch.save) is used as the feature network instead: a domain's own,
or a small one that tests the path without the 95 MB of weights.
"""

from pathlib import Path

import torch
from torch import nn
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torchmetrics.image.fid import FrechetInceptionDistance

from cvae_exp.errors import UserInputError

WEIGHTS_URL = URL_INCEPTION_V3  # what torch-fidelity downloads
WEIGHTS_FILE = URL_INCEPTION_V3.rsplit("/", 1)[1]
BATCH_SIZE = 64  # images per forward pass: Inception's activations at 299x299 take about 2 GB for 64
INCEPTION_FEATURES = 2048  # the pool features of the FID literature


def where_to_get_weights() -> str:
    """The sentence every refusal of eval.inception_weights ends with."""
    return (
        f"eval.inception_weights is a local copy of Inception-v3's FID weights, the file {WEIGHTS_FILE} that "
        f"torch-fidelity downloads from {WEIGHTS_URL} (a machine where torch-fidelity has run with network keeps "
        "it in ~/.cache/torch/hub/checkpoints/), or a torch.save'd nn.Module that maps uint8 images (N, 3, H, W) "
        "to (N, num_features); null (the default) computes no Inception FID."
    )


def fid_metric(path: str, image_shape) -> FrechetInceptionDistance:
    """A fresh FrechetInceptionDistance over the features of the file at `path`, for images of
    `image_shape` (C, H, W), tried on two black images; UserInputError where it cannot serve."""
    refusal = f"Invalid config value eval.inception_weights={path!r}"
    channels, *size = image_shape
    if channels not in (1, 3):
        raise UserInputError(
            f"{refusal}: Inception FID needs grayscale or RGB images, and these have {channels} channels "
            f"(data.image_shape={list(image_shape)}); use eval.inception_weights=null for them."
        )
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserInputError(f"{refusal}: there is no such file. {where_to_get_weights()}")
    try:
        saved = torch.load(file, map_location="cpu", weights_only=False)
        if isinstance(saved, nn.Module):
            metric = FrechetInceptionDistance(feature=saved.eval(), input_img_size=(3, *size))
        else:  # a state dict, which torch-fidelity loads into its Inception-v3
            metric = FrechetInceptionDistance(feature=INCEPTION_FEATURES, feature_extractor_weights_path=str(file))
        with torch.no_grad():
            metric.update(torch.zeros(2, 3, *size, dtype=torch.uint8), real=True)  # features of the right shape
        metric.reset()
    except Exception as error:  # not a torch file, another network's weights, a module that fails on these images
        reason = " ".join(str(error).split())[:300]
        raise UserInputError(
            f"{refusal}: the file cannot be loaded as Inception-v3's weights or as a feature network for images "
            f"of {list(image_shape)} ({type(error).__name__}: {reason}). {where_to_get_weights()}"
        ) from None
    return metric


@torch.no_grad()
def inception_fid(
    metric: FrechetInceptionDistance, real: torch.Tensor, generated: torch.Tensor, device: torch.device
) -> float:
    """The FID between uint8 images `real` and `generated` (N, C, H, W), grayscale repeated to
    three channels, in batches of BATCH_SIZE on `device`."""
    metric = metric.to(device)
    for images, is_real in ((real, True), (generated, False)):
        for batch in images.split(BATCH_SIZE):
            metric.update(batch.to(device).expand(-1, 3, -1, -1), real=is_real)
    return float(metric.compute())
