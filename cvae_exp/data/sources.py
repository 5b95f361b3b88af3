"""Dataset sources: each is `load_*(root) -> ImageSplits` of uint8 tensors.

Add a dataset by writing a loader here and a YAML file in configs/data/. Loaders are
cached per process: the pre-run check, every job of a sweep and the run share one load
(callers index into the tensors, never write to them).
"""

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cvae_exp.errors import UserInputError
from cvae_exp.files import undone_on_failure


@dataclass
class ImageSplits:
    """Images as uint8 (N, C, H, W) and labels as int64 (N,) (or attribute vectors (N, D)), for
    the official train and test sets, and the official validation set where a dataset has one
    (CelebA): the DataModule then validates on it instead of holding out data.val_size images."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None


@functools.cache
def load_digits(root: Path, test_size: int = 297, split_seed: int = 0) -> ImageSplits:
    """scikit-learn's bundled handwritten digits (1797 images, 8x8, values 0..16),
    upsampled bilinearly to 28x28 so every 28x28 model config applies. Needs no
    network and no `root`; the test split is fixed by `split_seed`."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] * (255.0 / 16.0)
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
    images = images.round().clamp(0, 255).to(torch.uint8)
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
    test, train = order[:test_size], order[test_size:]
    return ImageSplits(images[train], labels[train], images[test], labels[test])


# Properties of each digit 0..9, the attribute vectors of load_digit_attributes: odd, drawn with
# a closed loop (0, 4, 6, 8, 9), at least 5
DIGIT_ATTRIBUTES = torch.tensor(
    [[0, 1, 0], [1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]]
)


def load_digit_attributes(root: Path) -> ImageSplits:
    """The bundled digits with a multi-hot vector of three attributes per image instead of
    its class (DIGIT_ATTRIBUTES): a dataset for task=attributes that needs no download."""
    digits = load_digits(root)
    return ImageSplits(
        digits.train_images,
        DIGIT_ATTRIBUTES[digits.train_labels],
        digits.test_images,
        DIGIT_ATTRIBUTES[digits.test_labels],
    )


@functools.cache
def load_torchvision(root: Path, dataset: str) -> ImageSplits:
    """A torchvision dataset that holds its images whole, in `.data` with `.targets`, and takes
    `train=` (MNIST, FashionMNIST, KMNIST as (N, H, W) tensors; CIFAR10, CIFAR100 as (N, H, W, C)
    arrays), downloaded into `root` when missing. Read as whole tensors: no PIL, no per-sample code."""
    import inspect

    from torchvision import datasets

    dataset_class = getattr(datasets, dataset, None)
    if dataset_class is None or "train" not in inspect.signature(dataset_class).parameters:
        raise UserInputError(
            f"data.source.dataset={dataset!r} is not a torchvision dataset with a train= split that this loader "
            "reads whole (MNIST, FashionMNIST, KMNIST, CIFAR10, CIFAR100); for a folder of images, write a source "
            "function (docs/extending.md)."
        )
    root = Path(root)
    try:
        with undone_on_failure(_download_folder(root, dataset)):  # a failed download leaves no folder behind
            train = dataset_class(str(root), train=True, download=True)
            test = dataset_class(str(root), train=False, download=True)
    except (OSError, RuntimeError) as error:
        files = _original_files(dataset_class)
        raise UserInputError(
            f"{dataset} is not under data.root={str(root)!r} and could not be downloaded "
            f"({' '.join(str(error).split())}). Either copy its original files ({files}) into "
            f"{_download_folder(root, dataset)}/ "
            f"(the directory must be writable), point data.root at a directory that holds them as torchvision "
            f"lays them out, or train offline on the bundled dataset with data=digits."
        ) from error
    return ImageSplits(*_whole(train), *_whole(test))


def _whole(split) -> tuple[torch.Tensor, torch.Tensor]:
    """A torchvision split's images as contiguous uint8 (N, C, H, W) and its labels as int64."""
    images = torch.as_tensor(np.asarray(split.data))
    images = images[:, None] if images.dim() == 3 else images.permute(0, 3, 1, 2)  # grayscale, or HWC arrays
    return images.contiguous(), torch.as_tensor(np.asarray(split.targets)).long()


def _original_files(dataset_class) -> str:
    """The files a torchvision dataset downloads (its `resources`, or its archive's name)."""
    resources = getattr(dataset_class, "resources", None)
    if resources:
        return ", ".join(Path(url).name for url, *_ in resources)
    return getattr(dataset_class, "filename", None) or "see torchvision's documentation of the dataset"


def _download_folder(root: Path, dataset: str) -> Path:
    return root / dataset / "raw" if dataset in ("MNIST", "FashionMNIST", "KMNIST", "EMNIST", "QMNIST") else root
