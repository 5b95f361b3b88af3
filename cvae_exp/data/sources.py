"""Dataset sources: each is `load_*(root) -> ImageSplits` of uint8 tensors.

Add a dataset by writing a loader here and a YAML file in configs/data/. Loaders are
cached per process: the pre-run check, every job of a sweep and the run share one load
(callers index into the tensors, never write to them).
"""

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cvae_exp.errors import UserInputError


@dataclass
class ImageSplits:
    """Images as uint8 (N, C, H, W) and labels as int64 (N,), for the official train and test sets."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


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


@functools.cache
def load_torchvision(root: Path, dataset: str) -> ImageSplits:
    """A torchvision dataset with `.data`/`.targets` tensors (MNIST, FashionMNIST, KMNIST),
    downloaded into `root` when missing. Read as whole tensors: no PIL, no per-sample code."""
    from torchvision import datasets

    dataset_class = getattr(datasets, dataset)
    root = Path(root)
    new_dirs = [path for path in (root, root / dataset, root / dataset / "raw") if not path.exists()]
    try:
        train = dataset_class(str(root), train=True, download=True)
        test = dataset_class(str(root), train=False, download=True)
    except (OSError, RuntimeError) as error:
        for path in reversed(new_dirs):  # leave nothing behind a failed download
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise UserInputError(
            f"{dataset} is not under data.root={str(root)!r} and could not be downloaded "
            f"({error}). Either copy the four original files (train-images-idx3-ubyte.gz, "
            f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) "
            f"into {Path(root) / dataset / 'raw'}/ (the directory must be writable), point "
            f"data.root at a directory that holds {dataset}/raw/, or train offline on the "
            f"bundled dataset with data=digits."
        ) from error
    return ImageSplits(
        train.data[:, None].contiguous(), train.targets.long(), test.data[:, None].contiguous(), test.targets.long()
    )
